"""Mask operations of road centerlines: small-hole filling, Guo & Hall thinning on an active
set, and distances to the background at chosen pixels. Each is local (its result at a pixel
depends on pixels within a bounded distance), which is what makes window-by-window tracing in
:mod:`geounet.vectorize.centerlines` exact.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

__all__ = ["edt_at", "fill_small_holes", "thin"]


# Guo & Hall's neighbours x1..x8 as bits 0..7: x1 east, then counter-clockwise (row, col).
_GH_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _guo_hall_tables() -> tuple[np.ndarray, np.ndarray]:
    """Which 8-neighbourhood codes delete the centre pixel in the first / second
    sub-iteration of Guo & Hall's algorithm A1 (1989), from its conditions:
    G1 (one 8-connected neighbour component: ``X_H = 1``), G2 (``2 <= min(n1, n2) <= 3``) and
    G3 / G3' (``(x2 | x3 | ~x8) & x1 = 0`` / ``(x6 | x7 | ~x4) & x5 = 0``)."""
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        x = [0] + [(code >> i) & 1 for i in range(8)] + [code & 1]  # x[1..8], x[9] = x[1]
        crossings = sum(1 for i in range(1, 5) if not x[2 * i - 1] and (x[2 * i] or x[2 * i + 1]))
        n1 = sum(1 for k in range(1, 5) if x[2 * k - 1] or x[2 * k])
        n2 = sum(1 for k in range(1, 5) if x[2 * k] or x[2 * k + 1])
        g12 = crossings == 1 and 2 <= min(n1, n2) <= 3
        first[code] = g12 and not ((x[2] or x[3] or not x[8]) and x[1])
        second[code] = g12 and not ((x[6] or x[7] or not x[4]) and x[5])
    return first, second


_GH_FIRST, _GH_SECOND = _guo_hall_tables()


def thin(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide, 8-connected lines of a 2-D boolean mask, topology kept.

    Guo & Hall's parallel thinning (1989, two sub-iterations per iteration): the result of
    ``skimage.morphology.thin``, pixel for pixel (tests/test_centerlines.py compares them), but
    computed on an *active set*: a sub-iteration examines only the pixels whose neighbourhood
    changed since the same sub-iteration last looked at them (at first, the mask's boundary),
    where scikit-image correlates the whole array in every sub-iteration. On a 4096² px road
    scene: 15.5 s with scikit-image, a few seconds here (benchmarks/RESULTS.md).
    Zhang & Suen's rule (``skimage.morphology.skeletonize``) is not used because it is not
    local: on a road running at 45° from top left to bottom right, both of its
    sub-iterations treat the road's two sides alike, which side the last two-pixel-thick line
    loses is decided at the road's ends, and that decision travels along the whole road (a
    crop moved the skeleton 78 px from the cut on a 7 px road). Guo & Hall's rule stayed
    within the road's width of a cut at every angle and width tried.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"thinning needs a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    img = np.zeros((h + 2, w + 2), np.uint8)  # a background frame: no neighbour is out of bounds
    img[1:-1, 1:-1] = m
    flat = img.ravel()
    offsets = np.array([dr * (w + 2) + dc for dr, dc in _GH_OFFSETS], dtype=np.int64)

    def codes(at: np.ndarray) -> np.ndarray:
        out = np.zeros(at.size, np.uint8)
        for k, off in enumerate(offsets):
            out |= flat[at + off] << k
        return out

    stamp = np.empty(flat.size, np.int64)  # dedupes index lists in O(n), without sorting

    def distinct(at: np.ndarray) -> np.ndarray:
        order = np.arange(at.size)
        stamp[at] = order
        return at[stamp[at] == order]

    fg = np.flatnonzero(flat)
    boundary = fg[codes(fg) != 255]  # an interior pixel (code 255) is never deleted
    todo = [boundary, boundary]  # the pixels the next two sub-iterations examine
    step = idle = 0
    while idle < 2:  # two sub-iterations in a row without a deletion: nothing can change
        cand = todo[step % 2]
        cand = cand[flat[cand] == 1]
        table = _GH_FIRST if step % 2 == 0 else _GH_SECOND
        kill = cand[table[codes(cand)]]
        flat[kill] = 0  # parallel: every code was read before any deletion
        idle = idle + 1 if kill.size == 0 else 0
        near = (kill[:, None] + offsets[None, :]).ravel()
        near = distinct(near[flat[near] == 1])
        todo[step % 2] = near  # examined again two sub-iterations on (plus what changes next)
        todo[(step + 1) % 2] = distinct(np.concatenate([todo[(step + 1) % 2], near]))
        step += 1
    return img[1:-1, 1:-1].astype(bool)


def edt_at(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(mask)[rows, cols]``, computed at those pixels
    only: the distance from each pixel's centre to the nearest background pixel's centre.

    The nearest background pixel of a foreground pixel always touches the foreground (a step
    from it towards the pixel would otherwise be a nearer background pixel), so a k-d tree of
    the background pixels that 4-touch the foreground answers the same query; on a 4096² px
    road scene this took a tenth of the full transform's 3 s. Needs some background pixel.
    """
    fg = np.asarray(mask, dtype=bool)
    touch = np.zeros_like(fg)
    touch[1:] |= fg[:-1]
    touch[:-1] |= fg[1:]
    touch[:, 1:] |= fg[:, :-1]
    touch[:, :-1] |= fg[:, 1:]
    edge = np.argwhere(touch & ~fg)
    if len(rows) == 0:
        return np.zeros(0)
    dist, _ = cKDTree(edge).query(np.column_stack([rows, cols]))
    return np.asarray(dist, dtype=np.float64)


def fill_small_holes(mask: np.ndarray, max_area_px: int, max_extent_px: int) -> np.ndarray:
    """The mask with its small holes filled; a hole is a 4-connected background component.

    A hole is filled when its area is ``<= max_area_px``, its bounding box is
    ``<= max_extent_px`` on both sides and it does not touch the array's border, so the
    decision depends on the hole alone (its size is known only when it is whole).
    ``max_area_px`` or ``max_extent_px`` 0: nothing is filled. Cost: one labelling pass.
    """
    m = np.asarray(mask, dtype=bool)
    if max_area_px <= 0 or max_extent_px <= 0:
        return m.copy()
    holes, n = ndi.label(~m)
    if n == 0:
        return m.copy()
    area = np.bincount(holes.ravel(), minlength=n + 1)[1:]
    box = np.array([(s[0].start, s[0].stop, s[1].start, s[1].stop) for s in ndi.find_objects(holes)])
    inside = (box[:, 0] > 0) & (box[:, 1] < m.shape[0]) & (box[:, 2] > 0) & (box[:, 3] < m.shape[1])
    small = (area <= max_area_px) & (box[:, 1] - box[:, 0] <= max_extent_px) & (box[:, 3] - box[:, 2] <= max_extent_px)
    fill = np.concatenate([[False], inside & small])
    return m | fill[holes]
