"""Where training and validation windows come from: spatial split and class-balanced sampling.

Everything here is pure planning on pixel rectangles (no I/O), so it can be checked on
numbers you can read.

* A **split** turns each scene into training and validation *areas* (:class:`Rect`). Areas of
  different roles are separated by a gap of at least the window size, and every training
  window lies entirely inside a training area, so no training window touches, or even
  borders, validation pixels. Three kinds: ``strip`` (the far end of each scene along its
  longer side), ``checkerboard`` (a seeded random share of square cells) and ``scenes``
  (whole scenes by role).
* **Training windows** are drawn uniformly over the training areas (an area's chance is its
  number of window positions). With class balancing, ``candidates`` times more windows
  are drawn and the epoch's windows are picked among them with weights that favour
  windows holding rare classes (:func:`balanced_weights`).
* **Validation tiles** cover the validation areas deterministically (:func:`tile_rects`), so
  that epochs are scored on the same pixels.

All randomness comes from ``numpy.random.default_rng([seed, epoch, stream])``: the same seed
gives the same windows, and a resumed run draws what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from geounet.errors import ConfigError

__all__ = [
    "Rect",
    "WindowRef",
    "strip_split",
    "checkerboard_split",
    "split_scene",
    "random_windows",
    "tile_rects",
    "balanced_weights",
    "WindowSampler",
]


@dataclass(frozen=True)
class Rect:
    """Pixel rectangle ``[row0, row1) x [col0, col1)`` of scene ``scene``."""

    scene: int
    row0: int
    col0: int
    row1: int
    col1: int
    loose: bool = False  # windows may be larger than the rectangle (small chips): they cover it, the rest invalid
    weight: float = 1.0  # sampling weight of each window position (per-source balancing)

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0

    def fits(self, size: int) -> bool:
        """True when a ``size`` x ``size`` window fits inside (always for a loose rectangle)."""
        return self.loose or (self.height >= size and self.width >= size)

    def positions(self, size: int) -> int:
        """Number of integer positions of a ``size`` window inside (0 if it does not fit); a
        window larger than a loose rectangle has one position per axis."""
        if not self.fits(size):
            return 0
        return max(self.height - size + 1, 1) * max(self.width - size + 1, 1)

    def place(self, size: int, rng: np.random.Generator) -> tuple[int, int]:
        """A uniformly random ``(row, col)`` of a ``size`` window inside (or, where the loose
        rectangle is smaller than the window, a window covering it)."""
        rows = (self.row0, self.row1 - size) if self.height >= size else (self.row1 - size, self.row0)
        cols = (self.col0, self.col1 - size) if self.width >= size else (self.col1 - size, self.col0)
        return int(rng.integers(rows[0], rows[1] + 1)), int(rng.integers(cols[0], cols[1] + 1))


@dataclass(frozen=True)
class WindowRef:
    """A window of one scene, in pixels."""

    scene: int
    row: int
    col: int
    height: int
    width: int
    zoom: float = 1.0  # ground size of a pixel relative to the run's pixel size (scale augmentation)

    @property
    def window(self) -> Window:
        return Window(self.col, self.row, self.width, self.height)

    def distance(self, other: WindowRef | Rect) -> int:
        """Chebyshev gap in pixels between two windows of the same scene (0 if they touch or overlap)."""
        r0, c0, r1, c1 = _bounds(other)
        dr = max(r0 - (self.row + self.height), self.row - r1, 0)
        dc = max(c0 - (self.col + self.width), self.col - c1, 0)
        return max(dr, dc)

    def intersects(self, other: WindowRef | Rect) -> bool:
        """True when the two share at least one pixel."""
        r0, c0, r1, c1 = _bounds(other)
        return self.row < r1 and r0 < self.row + self.height and self.col < c1 and c0 < self.col + self.width


def _bounds(x: WindowRef | Rect) -> tuple[int, int, int, int]:
    if isinstance(x, Rect):
        return x.row0, x.col0, x.row1, x.col1
    return x.row, x.col, x.row + x.height, x.col + x.width


# -- splits ----------------------------------------------------------------------------------


def strip_split(
    scene: int, height: int, width: int, *, val_fraction: float, gap: int, window: int, name: str = ""
) -> tuple[list[Rect], list[Rect]]:
    """Validation = the last ``val_fraction`` of the longer side; training = the start, ``gap`` away.

    Example: a 1000 x 400 (w x h) scene, 20 %, gap 64: validation columns 800-999, training
    columns 0-735.

    Raises:
        ConfigError: the training strip is narrower than one window.
    """
    along_cols = width >= height
    length = width if along_cols else height
    val_len = max(1, math.ceil(length * val_fraction))
    train_len = length - val_len - gap
    if train_len < window or min(height, width) < window:
        raise ConfigError(
            f"scene {name or scene} ({width} x {height} px) is too small for a strip split with "
            f"split.val_fraction {val_fraction}, split.gap {gap} px and sampling.window {window} px: "
            f"the training strip would be {max(train_len, 0)} px long; lower the fraction, gap or "
            "window, or give whole scenes roles (split.kind: scenes)"
        )
    if along_cols:
        return [Rect(scene, 0, 0, height, train_len)], [Rect(scene, 0, length - val_len, height, width)]
    return [Rect(scene, 0, 0, train_len, width)], [Rect(scene, length - val_len, 0, height, width)]


def checkerboard_split(
    scene: int,
    height: int,
    width: int,
    *,
    cell: int,
    val_fraction: float,
    gap: int,
    window: int,
    seed: int,
    name: str = "",
) -> tuple[list[Rect], list[Rect]]:
    """Square cells of ``cell`` px; a seeded random ``val_fraction`` of them (at least one) validate.

    Each cell side that borders a cell of the other role gives up ``ceil(gap / 2)`` px, so
    training and validation areas end at least ``gap`` apart. Training cells left smaller
    than a window are dropped.

    Raises:
        ConfigError: fewer than two cells, or no training cell fits a window.
    """
    rows = math.ceil(height / cell)
    cols = math.ceil(width / cell)
    n = rows * cols
    if n < 2:
        raise ConfigError(
            f"scene {name or scene} ({width} x {height} px) is a single checkerboard cell of "
            f"split.cell {cell} px; use a smaller cell or split.kind strip"
        )
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    rng = np.random.default_rng([seed, scene, 11])
    is_val = np.zeros(n, dtype=bool)
    is_val[rng.choice(n, size=n_val, replace=False)] = True
    grid = is_val.reshape(rows, cols)
    half = math.ceil(gap / 2)
    train: list[Rect] = []
    val: list[Rect] = []
    for i in range(rows):
        for j in range(cols):
            r0, r1 = i * cell, min((i + 1) * cell, height)
            c0, c1 = j * cell, min((j + 1) * cell, width)
            role = grid[i, j]
            # shrink sides bordering the other role (8-neighbourhood: corners count too)
            top = any(grid[i - 1, jj] != role for jj in range(max(j - 1, 0), min(j + 2, cols))) if i > 0 else False
            bottom = (
                any(grid[i + 1, jj] != role for jj in range(max(j - 1, 0), min(j + 2, cols))) if i < rows - 1 else False
            )
            left = any(grid[ii, j - 1] != role for ii in range(max(i - 1, 0), min(i + 2, rows))) if j > 0 else False
            right = (
                any(grid[ii, j + 1] != role for ii in range(max(i - 1, 0), min(i + 2, rows))) if j < cols - 1 else False
            )
            rect = Rect(scene, r0 + half * top, c0 + half * left, r1 - half * bottom, c1 - half * right)
            if rect.height <= 0 or rect.width <= 0:
                continue
            (val if role else train).append(rect)
    train = [r for r in train if r.fits(window)]
    if not train or not val:
        raise ConfigError(
            f"scene {name or scene} ({width} x {height} px): a checkerboard of split.cell {cell} px with "
            f"split.gap {gap} px leaves {'no training cell that fits a window' if not train else 'no validation cell'} "
            f"of {window} px; use larger cells or a smaller gap or window"
        )
    return train, val


def split_scene(
    scene: int,
    height: int,
    width: int,
    role: str,
    *,
    kind: str,
    val_fraction: float,
    cell: int,
    gap: int,
    window: int,
    seed: int,
    name: str = "",
) -> tuple[list[Rect], list[Rect]]:
    """Training and validation areas of one scene given its role and the split kind."""
    whole = Rect(scene, 0, 0, height, width)
    if role == "train" or (role == "auto" and kind == "scenes"):
        if not whole.fits(window):
            raise ConfigError(
                f"scene {name or scene} ({width} x {height} px) is smaller than sampling.window {window} px"
            )
        return [whole], []
    if role == "val":
        return [], [whole]
    if kind == "strip":
        return strip_split(scene, height, width, val_fraction=val_fraction, gap=gap, window=window, name=name)
    if kind == "checkerboard":
        return checkerboard_split(
            scene, height, width, cell=cell, val_fraction=val_fraction, gap=gap, window=window, seed=seed, name=name
        )
    raise ConfigError(f"split.kind {kind!r} is not one of strip, checkerboard, scenes")


# -- windows ---------------------------------------------------------------------------------


def random_windows(rects: Sequence[Rect], size: int, n: int, rng: np.random.Generator) -> list[WindowRef]:
    """``n`` windows of ``size`` px, uniform over every window position inside ``rects``."""
    weights = np.array([r.positions(size) * r.weight for r in rects], dtype=float)
    if not len(rects) or weights.sum() == 0:
        raise ConfigError(f"no training area fits a window of {size} px; lower sampling.window")
    which = rng.choice(len(rects), size=n, p=weights / weights.sum())
    out = []
    for k in which:
        r = rects[k]
        row, col = r.place(size, rng)
        out.append(WindowRef(r.scene, row, col, size, size))
    return out


def tile_rects(rects: Sequence[Rect], tile: int) -> list[WindowRef]:
    """Tiles of at most ``tile`` px covering each rectangle row by row, without overlap."""
    out = []
    for r in rects:
        for row in range(r.row0, r.row1, tile):
            for col in range(r.col0, r.col1, tile):
                out.append(WindowRef(r.scene, row, col, min(tile, r.row1 - row), min(tile, r.col1 - col)))
    return out


def spread(items: Sequence[WindowRef], k: int | None) -> list[WindowRef]:
    """At most ``k`` items, evenly spread over the sequence (all of them for None)."""
    if k is None or len(items) <= k:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def balanced_weights(presence: np.ndarray, balance: float) -> np.ndarray:
    """Sampling probabilities of candidate windows from their class presence.

    ``p_i = (1 - balance) / M + balance / K' * sum over classes c present in i of 1 / n_c``

    where ``M`` is the number of candidates, ``n_c`` the candidates holding class ``c`` and
    ``K'`` the classes present in at least one candidate. With ``balance`` 1 every class is
    equally likely to be behind a draw, however rare; with 0 the draw is uniform. Windows
    without any class keep only the uniform share.

    Example: 4 candidates, class A in candidates 0-2, class B only in 3, balance 1:
    ``p = [1/6, 1/6, 1/6, 1/2]``.
    """
    presence = np.asarray(presence, dtype=bool)
    m = presence.shape[0]
    if m == 0:
        return np.zeros(0)
    counts = presence.sum(axis=0)
    present = counts > 0
    p = np.full(m, (1.0 - balance) / m)
    if present.any():
        inv = np.where(present, 1.0 / np.maximum(counts, 1), 0.0)
        p += balance / int(present.sum()) * (presence * inv).sum(axis=1)
    else:
        p[:] = 1.0 / m
    return p / p.sum()


PresenceFn = Callable[[Sequence[WindowRef]], np.ndarray]


class WindowSampler:
    """Draws each epoch's training windows, deterministically for ``(seed, epoch)``.

    Args:
        rects: training areas.
        size: window side, pixels.
        per_epoch: windows per epoch.
        seed: run seed.
        balance: class balancing in [0, 1] (see :func:`balanced_weights`).
        candidates: candidates examined per drawn window when balancing.
        presence: ``windows -> (n, n_classes) bool`` telling which classes each window holds.
    """

    def __init__(
        self,
        rects: Sequence[Rect],
        size: int,
        per_epoch: int,
        seed: int,
        *,
        balance: float = 0.0,
        candidates: int = 8,
        presence: PresenceFn | None = None,
    ) -> None:
        self.rects = [r for r in rects if r.fits(size)]
        if not self.rects:
            raise ConfigError(f"no training area fits a window of {size} px; lower sampling.window")
        self.size = size
        self.per_epoch = per_epoch
        self.seed = seed
        self.balance = balance if presence is not None else 0.0
        self.candidates = candidates if self.balance > 0 else 1
        self.presence = presence

    def epoch(self, epoch: int) -> list[WindowRef]:
        """The windows of ``epoch`` (0-based), in training order."""
        rng = np.random.default_rng([self.seed, epoch, 3])
        m = self.per_epoch * self.candidates
        cand = random_windows(self.rects, self.size, m, rng)
        if self.balance <= 0 or self.presence is None:
            return cand[: self.per_epoch]
        p = balanced_weights(self.presence(cand), self.balance)
        pick = rng.choice(m, size=self.per_epoch, replace=True, p=p)
        return [cand[i] for i in pick]
