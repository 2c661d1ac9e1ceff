"""Noise that is a pure function of global pixel coordinates and a key.

Every value here depends only on ``(column, row, key)`` -- never on which window asks for
it or in which order -- so a scene written in 256-pixel windows has the same bytes as one
written in 2048-pixel windows. Two building blocks:

* :func:`white` -- one independent value per pixel, from an integer hash;
* :func:`value_noise` -- smooth noise: hashed values on a lattice of ``cell`` pixels,
  interpolated with a smoothstep fade. A window touches only the lattice points around it,
  so the cost is a few passes over the window whatever the cell size.

Only integer hashing and float32 ``+ - *`` run per pixel (no transcendental functions, whose
vectorised implementations may round differently in the SIMD body and the tail of a loop).
"""

from __future__ import annotations

import numpy as np

_U32 = np.uint32
_GOLDEN = _U32(0x9E3779B1)
_ROW_SALT = _U32(0x85EBCA77)
_INV_2_24 = np.float32(1.0 / (1 << 24))


def _fmix(h: np.ndarray) -> np.ndarray:
    """Avalanche a uint32 array in place (the 32-bit finaliser of MurmurHash3)."""
    h ^= h >> _U32(16)
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h


def derive_key(seed: int, stream: int) -> int:
    """A 32-bit key for one noise stream of one scene (stable across platforms)."""
    h = np.array([(seed * 0x2545F491 + stream * 0x27D4EB2F) & 0xFFFFFFFF], dtype=_U32)
    h = _fmix(_fmix(h) ^ _U32(stream & 0xFFFFFFFF))
    return int(h[0])


def _axis_hash(index: np.ndarray, key: int, salt: np.uint32) -> np.ndarray:
    h = (index.astype(np.int64) & 0xFFFFFFFF).astype(_U32)
    h *= _GOLDEN
    h ^= salt
    h += _U32(key)
    return _fmix(h)


def hash2(cols: np.ndarray, rows: np.ndarray, key: int) -> np.ndarray:
    """uint32 hash of every (row, col) pair: shape ``(len(rows), len(cols))``."""
    hx = _axis_hash(cols, key, _U32(0))
    hy = _axis_hash(rows, key ^ 0x5BD1E995, _ROW_SALT)
    return _fmix(hy[:, None] ^ hx[None, :])


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hashes -> float32 in [0, 1) (top 24 bits, exact in float32)."""
    return (h >> _U32(8)).astype(np.float32) * _INV_2_24


def white(cols: np.ndarray, rows: np.ndarray, key: int) -> np.ndarray:
    """Independent uniform [0, 1) value per pixel; ``cols``/``rows`` are global integer indices."""
    return _unit(hash2(cols, rows, key))


def _fade(t: np.ndarray) -> np.ndarray:
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def value_noise(x: np.ndarray, y: np.ndarray, cell: float, key: int) -> np.ndarray:
    """Smooth noise in [0, 1], shape ``(len(y), len(x))``.

    ``x`` and ``y`` are global pixel-centre coordinates (``col + 0.5``, ``row + 0.5``);
    ``cell`` is the lattice spacing in pixels (features are about that large).
    Cost: five float32 passes over the window plus a lattice of ``(h/cell + 2) * (w/cell + 2)``.
    """
    u = np.asarray(x, dtype=np.float64) / cell
    v = np.asarray(y, dtype=np.float64) / cell
    i0 = np.floor(u).astype(np.int64)
    j0 = np.floor(v).astype(np.int64)
    fx = _fade(u - i0)
    fy = _fade(v - j0)[:, None]
    imin, jmin = int(i0.min()), int(j0.min())
    lattice = _unit(hash2(np.arange(imin, int(i0.max()) + 2), np.arange(jmin, int(j0.max()) + 2), key))
    ia = i0 - imin
    left = lattice[:, ia]
    rows = left + (lattice[:, ia + 1] - left) * fx  # (lattice rows, w)
    ja = j0 - jmin
    top = rows[ja]
    out = rows[ja + 1]
    out -= top
    out *= fy
    out += top
    return out


def fbm(x: np.ndarray, y: np.ndarray, cells: tuple[float, ...], weights: tuple[float, ...], key: int) -> np.ndarray:
    """Weighted sum of :func:`value_noise` octaves, normalised to [0, 1]."""
    if not cells or len(cells) != len(weights):
        raise ValueError(f"fbm needs one weight per cell size, got cells {cells} and weights {weights}")
    total = float(sum(weights))
    out = value_noise(x, y, cells[0], derive_key(key, 1))
    out *= np.float32(weights[0] / total)
    for k in range(1, len(cells)):
        octave = value_noise(x, y, cells[k], derive_key(key, k + 1))
        octave *= np.float32(weights[k] / total)
        out += octave
    return out
