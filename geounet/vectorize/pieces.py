"""The pieces polygons travel in between workers and the client, and the run primitives
both sides use.

A worker's :class:`BlockPolygons` holds its core's polygons in scene pixel coordinates
(packed compactly for pickling) and, per internal side, the polygon id of every pixel along
that side; the client's seam merge (:mod:`geounet.vectorize.seams`) returns
:class:`Polygons`. Runs (maximal stretches of one value along a row or strip) are the unit
both sides work in: the merge compares runs, never pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

SIDES = ("top", "bottom", "left", "right")


def _empty_geoms() -> np.ndarray:
    return np.empty(0, dtype=object)


def _pack_geoms(geoms: np.ndarray) -> tuple[Any, ...]:
    """Polygons -> compact arrays for pickling (integer pixel vertices fit in int32)."""
    if len(geoms) == 0:
        return ("empty",)
    _, coords, (ring_offsets, geom_offsets) = shapely.to_ragged_array(geoms)
    if np.array_equal(coords, np.rint(coords)) and np.abs(coords).max() < 2**31:
        coords = coords.astype(np.int32)
    return ("ragged", coords, ring_offsets.astype(np.int64), geom_offsets.astype(np.int64))


def _unpack_geoms(packed: tuple[Any, ...]) -> np.ndarray:
    if packed[0] == "empty":
        return _empty_geoms()
    _, coords, ring_offsets, geom_offsets = packed
    return shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords.astype(np.float64), (ring_offsets, geom_offsets)
    )


@dataclass(eq=False)
class BlockPolygons:
    """The polygons of one class in one block's core, in scene pixel coordinates.

    Small and picklable: it travels from a Dask worker to the client. Geometries are
    pickled as one int32 vertex array plus offsets, not as one object per polygon.

    Attributes:
        row_off, col_off: position of the core's top-left pixel in the scene.
        height, width: size of the core in pixels.
        scene_height, scene_width: size of the scene in pixels.
        geoms: ``(n,)`` object array of :class:`shapely.Polygon`.
        pixel_count: ``(n,)`` int64, pixels per polygon.
        prob_sum: ``(n,)`` float64, sum of the probability over each polygon's pixels
            (NaN where no probability was given).
        edges: for each *internal* side of the core (a side not on the scene border), the
            polygon of each pixel along it as ``index + 1`` into ``geoms`` (``0`` =
            background), int32, ordered left to right (top/bottom) or top to bottom
            (left/right).
        touches_edge: ``(n,)`` bool, whether the polygon has a pixel on an internal side.
    """

    row_off: int
    col_off: int
    height: int
    width: int
    scene_height: int
    scene_width: int
    geoms: np.ndarray = field(repr=False)
    pixel_count: np.ndarray = field(repr=False)
    prob_sum: np.ndarray = field(repr=False)
    edges: dict[str, np.ndarray] = field(repr=False)
    touches_edge: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.geoms)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["geoms"] = _pack_geoms(self.geoms)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["geoms"] = _unpack_geoms(state["geoms"])
        self.__dict__.update(state)


@dataclass(eq=False)
class Polygons:
    """Polygons of one class over a whole scene, in scene pixel coordinates.

    Ordered by each polygon's first pixel in raster order (top row first, then leftmost),
    which does not depend on the block grid.

    Attributes:
        geoms: ``(n,)`` object array of :class:`shapely.Polygon`.
        pixel_count: ``(n,)`` int64.
        prob_sum: ``(n,)`` float64.
    """

    geoms: np.ndarray = field(repr=False)
    pixel_count: np.ndarray = field(repr=False)
    prob_sum: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.geoms)

    def __repr__(self) -> str:
        return f"Polygons(n={len(self)}, pixels={int(self.pixel_count.sum())})"


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of foreground, in raster order: ``(row, first column, end column)``."""
    height, width = mask.shape
    m8 = mask.view(np.uint8)
    # change[r, c] != 0 where column c starts or ends a run (c in 0..width), in a buffer
    # padded to whole 8-byte words.
    size = height * (width + 1)
    buf = np.zeros(-(-size // 8) * 8, dtype=np.uint8)
    change = buf[:size].reshape(height, width + 1)
    change[:, 0] = m8[:, 0]
    np.subtract(m8[:, 1:], m8[:, :-1], out=change[:, 1:width])
    change[:, width] = m8[:, width - 1]
    # Changes are sparse: find the non-zero 8-byte words first, then the bytes inside them
    # (about twice as fast as flatnonzero over every byte).
    words = np.flatnonzero(buf.view(np.uint64))
    word, byte = np.nonzero(buf.reshape(-1, 8)[words])
    # Within a row, changes alternate start / end, and every row starts with a start.
    bounds = words[word] * 8 + byte
    starts, ends = bounds[0::2], bounds[1::2]
    row = starts // (width + 1)
    return row, starts - row * (width + 1), ends - row * (width + 1)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``range(starts[i], starts[i] + counts[i])`` for every i, concatenated (int64)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    return np.repeat(np.asarray(starts, dtype=np.int64) - np.cumsum(counts) + counts, counts) + np.arange(total)


def _overlaps(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` where interval ``[a0[i], a1[i])`` overlaps ``[b0[j], b1[j])``.

    The b intervals must be disjoint and sorted by start (so their ends are sorted too): the
    ones overlapping an a interval then form the contiguous range of those ending after
    ``a0[i]`` and starting before ``a1[i]``. Cost: two binary searches per a interval.
    """
    lo = np.searchsorted(b1, a0, side="right")
    hi = np.searchsorted(b0, a1, side="left")
    count = np.maximum(hi - lo, 0)
    return np.repeat(np.arange(len(a0)), count), _ranges(lo, count)
