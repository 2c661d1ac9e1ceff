"""Touching buildings apart: one polygon per building where their masks touch.

Models trained with ``separate_touching`` (training config ``data.classes[].separate_touching``)
learn a low-probability line between attached buildings, but a threshold of 0.5 often leaves
the line above it, so two houses come out as one polygon. Here each connected region of a
class's mask is split when it holds two or more **seeds** -- its interior pixels of high
probability (at least ``seed_level`` out of 255, eroded by one pixel so that a seed never
reaches across a one-pixel neck, and at least ``min_seed_px`` pixels) -- by a watershed over
the probability grown from those seeds inside the region (:func:`skimage.segmentation.watershed`,
4-connected, with watershed lines). The lines become background, so each building is its own
4-connected region and the polygonizer gives it its own polygon; a region with fewer than two
seeds is left exactly as it was.

**Why it is seam-exact.** Everything is computed per connected region, on that region's
bounding box padded with one pixel of background, from the region's own pixels and
probabilities only (quantized to uint8 the same way everywhere): the result for a region does
not depend on where the array it came from starts or what else it holds. A worker splits the
regions of its block's core that do not reach an internal side of the core (their pixels and
probabilities are all exact there). Regions that do reach one are left whole and their
probabilities travel to the client (:class:`EdgeCrop`); after the seam merge the client
splits each merged polygon that touches a seam from the crops of its pieces
(:func:`separate_merged`), with the same function. So the scene equals splitting the whole
scene's mask at once (:func:`separate_mask`), whatever the block grid; regions longer than
``max_side_px`` on a side are never split (they bound what travels to the client).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio.features import rasterize, shapes
from rasterio.transform import Affine
from scipy import ndimage
from skimage.segmentation import watershed

from geounet.settings import SeparateSettings
from geounet.vectorize.pieces import Polygons
from geounet.vectorize.polygonize import _features_to_polygons, _top_left

__all__ = [
    "EdgeCrop",
    "SeparationParams",
    "quantize",
    "separate_block",
    "separate_component",
    "separate_mask",
    "separate_merged",
    "seam_lines",
]

CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity


@dataclass(frozen=True)
class SeparationParams:
    """The separation settings of one class in pixels of the model grid."""

    seed_level: int  # a seed pixel's probability x 255 is at least this (1..255)
    min_seed_px: int  # seeds of fewer pixels are ignored
    max_side_px: int  # regions longer than this on a side (rows or columns) are left whole

    @classmethod
    def from_settings(cls, s: SeparateSettings, pixel_m: float, threshold: float) -> SeparationParams:
        """Pixel units for a grid of ``pixel_m`` metres; seeds are never below the class threshold."""
        level = max(int(round(s.seed_threshold * 255)), int(math.ceil(threshold * 255)), 1)
        return cls(
            seed_level=min(level, 255),
            min_seed_px=max(1, int(math.ceil(s.min_seed_m2 / (pixel_m * pixel_m)))),
            max_side_px=max(1, int(s.max_size_m / pixel_m)),
        )


@dataclass(eq=False)
class EdgeCrop:
    """Probabilities of one region of a block's core that reaches an internal side.

    ``prob`` covers the region's bounding box at ``(row_off, col_off)`` (model-grid pixels):
    the class probability on the region's pixels and -1 elsewhere.
    """

    row_off: int
    col_off: int
    prob: np.ndarray  # (h, w) float32

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(col0, row0, col1, row1)``, end-exclusive."""
        h, w = self.prob.shape
        return self.col_off, self.row_off, self.col_off + w, self.row_off + h


def quantize(prob: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] -> uint8 ``round(p * 255)``: the one quantization every path uses."""
    q = np.clip(prob, 0.0, 1.0, dtype=np.float32) * np.float32(255.0)
    return np.rint(q).astype(np.uint8)


def _seeds(mask: np.ndarray, q: np.ndarray, params: SeparationParams) -> tuple[np.ndarray, int]:
    """Seed labels (0 = none) and their count: high-probability pixels of ``mask``, eroded by one
    pixel (outside the array counts as background), at least ``min_seed_px`` pixels each."""
    high = ndimage.binary_erosion(mask & (q >= params.seed_level), CROSS, border_value=0)
    labels, n = ndimage.label(high, CROSS)
    if n == 0:
        return labels, 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= params.min_seed_px
    keep[0] = False
    if keep[1:].all():
        return labels, n
    new = np.zeros(n + 1, dtype=labels.dtype)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return new[labels], int(keep.sum())


def separate_component(mask: np.ndarray, q: np.ndarray, params: SeparationParams) -> np.ndarray | None:
    """Split one connected region; None when it holds fewer than two seeds (left whole).

    Args:
        mask: ``(h, w)`` bool, the region's pixels on its bounding box (nothing else set).
        q: ``(h, w)`` uint8 quantized probability (:func:`quantize`).

    Returns:
        The region's pixels minus the watershed lines between its buildings, ``(h, w)`` bool.
    """
    m = np.pad(mask, 1)
    qq = np.pad(q, 1)
    seeds, n = _seeds(m, qq, params)
    if n < 2:
        return None
    labels = watershed(255 - qq, seeds, mask=m, connectivity=1, watershed_line=True)
    return (labels > 0)[1:-1, 1:-1]


def _regions(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    labels, _ = ndimage.label(mask, CROSS)
    return labels, ndimage.find_objects(labels)


def _fits(sl: tuple[slice, slice], params: SeparationParams) -> bool:
    return sl[0].stop - sl[0].start <= params.max_side_px and sl[1].stop - sl[1].start <= params.max_side_px


def separate_block(
    mask: np.ndarray,
    prob: np.ndarray,
    params: SeparationParams,
    *,
    internal: dict[str, bool] | None = None,
    row_off: int = 0,
    col_off: int = 0,
) -> tuple[np.ndarray, list[EdgeCrop], int]:
    """Split the touching buildings of one block's core (or of a whole scene).

    Regions reaching an ``internal`` side (``top``/``bottom``/``left``/``right`` -> True) are
    left whole and returned as :class:`EdgeCrop` (positions in the scene: ``row_off``,
    ``col_off`` are the core's), unless longer than ``max_side_px`` on a side.

    Returns:
        The mask with the separation lines set to background (a copy when anything changed),
        the crops of the regions left for the client and how many regions were split.
    """
    mask = np.asarray(mask, dtype=bool)
    crops: list[EdgeCrop] = []
    if not mask.any():
        return mask, crops, 0
    q = quantize(prob)
    labels, objects = _regions(mask)
    n = len(objects)
    # cheap filter: only regions with two or more seed pixels' components can split
    seeds, n_seeds = _seeds(mask, q, params)
    seeds_per_region = np.zeros(n + 1, dtype=np.int64)
    if n_seeds:
        at = np.flatnonzero(seeds)
        region_of_seed = np.zeros(n_seeds + 1, dtype=np.int64)
        region_of_seed[seeds.ravel()[at]] = labels.ravel()[at]  # a seed lies in one region
        np.add.at(seeds_per_region, region_of_seed[1:], 1)
    edge = np.zeros(n + 1, dtype=bool)
    h, w = mask.shape
    sides = internal or {}
    if sides.get("top"):
        edge[labels[0]] = True
    if sides.get("bottom"):
        edge[labels[h - 1]] = True
    if sides.get("left"):
        edge[labels[:, 0]] = True
    if sides.get("right"):
        edge[labels[:, w - 1]] = True
    out = mask
    n_split = 0
    for i, sl in enumerate(objects, start=1):
        if sl is None or not _fits(sl, params):
            continue
        if edge[i]:
            crop = np.where(labels[sl] == i, prob[sl], np.float32(-1)).astype(np.float32)
            crops.append(EdgeCrop(row_off + sl[0].start, col_off + sl[1].start, crop))
            continue
        if seeds_per_region[i] < 2:
            continue
        region = labels[sl] == i
        split = separate_component(region, q[sl], params)
        if split is None:
            continue
        if out is mask:
            out = mask.copy()
        out[sl][region & ~split] = False
        n_split += 1
    return out, crops, n_split


def separate_mask(mask: np.ndarray, prob: np.ndarray, params: SeparationParams) -> np.ndarray:
    """The whole-scene reference: every region of ``mask`` split at once (no internal sides)."""
    return separate_block(mask, prob, params)[0]


def seam_lines(cores: list[tuple[int, int, int, int]], width: int, height: int) -> np.ndarray:
    """The internal sides of block cores ``(col_off, row_off, w, h)`` as line segments in
    pixel coordinates (sides on the scene border are not seams)."""
    lines = []
    for c, r, w, h in cores:
        if r > 0:
            lines.append(((c, r), (c + w, r)))
        if c > 0:
            lines.append(((c, r), (c, r + h)))
    return shapely.linestrings(np.array(lines, dtype=np.float64)) if lines else np.empty(0, dtype=object)


def separate_merged(
    merged: Polygons, crops: list[EdgeCrop], seams: np.ndarray, params: SeparationParams
) -> tuple[Polygons, int]:
    """Split the merged polygons that touch a seam, from the crops of their pieces.

    A merged polygon touches a seam exactly when its pieces reached an internal side of their
    blocks, so those were left whole on the workers and every one of its pixels lies in a
    crop. Returns the polygons (split ones replaced by their parts, order by first pixel in
    raster order as :func:`geounet.vectorize.seams.merge_seams` gives) and how many were split.
    """
    if len(merged) == 0 or len(seams) == 0 or not crops:
        return merged, 0
    tree = shapely.STRtree(seams)
    touching = np.unique(tree.query(merged.geoms, predicate="intersects")[0])
    if len(touching) == 0:
        return merged, 0
    boxes = np.array([c.box for c in crops], dtype=np.float64)
    crop_tree = shapely.STRtree(shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]))
    bounds = shapely.bounds(merged.geoms[touching]).astype(np.int64)
    drop: list[int] = []
    new_geoms: list[np.ndarray] = []
    new_count: list[np.ndarray] = []
    new_sum: list[np.ndarray] = []
    for i, (x0, y0, x1, y1) in zip(touching, bounds):
        h, w = int(y1 - y0), int(x1 - x0)
        if h > params.max_side_px or w > params.max_side_px:
            continue
        canvas = np.full((h, w), -1, dtype=np.float32)
        for j in crop_tree.query(shapely.box(x0, y0, x1, y1), predicate="intersects"):
            c = crops[j]
            cx0, cy0, cx1, cy1 = c.box
            ix0, iy0, ix1, iy1 = max(cx0, x0), max(cy0, y0), min(cx1, x1), min(cy1, y1)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            src = c.prob[iy0 - cy0 : iy1 - cy0, ix0 - cx0 : ix1 - cx0]
            dst = canvas[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
            np.copyto(dst, src, where=src >= 0)
        transform = Affine.translation(int(x0), int(y0))
        region = rasterize([merged.geoms[i]], out_shape=(h, w), transform=transform, dtype=np.uint8).astype(bool)
        if (canvas[region] < 0).any():
            raise RuntimeError(f"a merged polygon at pixel ({x0}, {y0}) is not covered by its blocks' crops")
        prob = np.where(region, canvas, np.float32(0))
        split = separate_component(region, quantize(prob), params)
        if split is None:
            continue
        geoms, count, psum = _polygons(split, prob, transform)
        drop.append(int(i))
        new_geoms.append(geoms)
        new_count.append(count)
        new_sum.append(psum)
    if not drop:
        return merged, 0
    keep = np.ones(len(merged), dtype=bool)
    keep[drop] = False
    geoms = np.concatenate([merged.geoms[keep], *new_geoms])
    count = np.concatenate([merged.pixel_count[keep], *new_count])
    psum = np.concatenate([merged.prob_sum[keep], *new_sum])
    top, left = _top_left(geoms)
    order = np.lexsort((left, top))
    return Polygons(geoms[order], count[order], psum[order]), len(drop)


def _polygons(mask: np.ndarray, prob: np.ndarray, transform: Affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 4-connected regions of ``mask`` as polygons with pixel counts and probability sums."""
    labels, n = ndimage.label(mask, CROSS)
    features = list(shapes(labels.astype(np.int32), mask=mask, connectivity=4, transform=transform))
    geoms = _features_to_polygons(features)
    ids = np.array([int(v) for _, v in features], dtype=np.int64)
    count = np.bincount(labels.ravel(), minlength=n + 1)[ids]
    psum = ndimage.sum_labels(prob.astype(np.float64), labels, index=ids)
    return geoms, count.astype(np.int64), np.asarray(psum, dtype=np.float64)
