"""Polygonize the mask of one block's core on a worker (:func:`polygonize_block`).

The polygons are those ``rasterio.features.shapes(..., connectivity=4)`` gives for the
core, in scene pixel coordinates, each with its pixel count and probability sum; beside
them the block records the polygon id of every pixel along each internal side, which is
all the client needs to merge the pieces exactly across seams (:mod:`geounet.vectorize.seams`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geounet.vectorize.pieces import BlockPolygons, _empty_geoms, _overlaps, _runs


def _run_components(row: np.ndarray, c0: np.ndarray, c1: np.ndarray, width: int) -> tuple[int, np.ndarray]:
    """4-connected components of runs: runs on consecutive rows join where columns overlap."""
    n = len(row)
    if n == 0:
        return 0, np.zeros(0, dtype=np.int64)
    stride = width + 1
    start_key = row * stride + c0  # increasing: runs are in raster order
    end_key = row * stride + c1  # increasing too (runs in a row are disjoint)
    above = (row - 1) * stride
    # each run joins the runs of the row above whose columns overlap its own
    below, first = _overlaps(above + c0, above + c1, start_key, end_key)
    total = len(below)
    if total == 0:
        return n, np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(total, dtype=np.int8), (first, below)), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    return n_comp, comp.astype(np.int64)


def _features_to_polygons(features: Iterable[tuple[dict, Any]]) -> np.ndarray:
    """GeoJSON-like features from ``shapes`` -> shapely polygons, built in one vectorized call.

    ``from_ragged_array`` is several times faster than one ``shapely.geometry.shape`` per
    feature.
    """
    coords: list[tuple[float, float]] = []
    ring_lengths: list[int] = []
    rings_per_polygon: list[int] = []
    for geometry, _ in features:
        rings = geometry["coordinates"]
        rings_per_polygon.append(len(rings))
        for ring in rings:
            ring_lengths.append(len(ring))
            coords.extend(ring)
    if not rings_per_polygon:
        return _empty_geoms()
    xy = np.array(coords, dtype=np.float64)
    ring_offsets = np.zeros(len(ring_lengths) + 1, dtype=np.int64)
    np.cumsum(ring_lengths, out=ring_offsets[1:])
    geom_offsets = np.zeros(len(rings_per_polygon) + 1, dtype=np.int64)
    np.cumsum(rings_per_polygon, out=geom_offsets[1:])
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_offsets, geom_offsets))


def _top_left(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each polygon's first pixel in raster order.

    That pixel's top-left corner is the leftmost vertex on the polygon's top edge (no hole
    can reach the top row), so it is read from the vertices, not from pixels.
    """
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    xy, index = shapely.get_coordinates(geoms, return_index=True)
    ymin = shapely.bounds(geoms)[:, 1]
    on_top = xy[:, 1] == ymin[index]
    xmin = np.full(len(geoms), np.inf)
    np.minimum.at(xmin, index[on_top], xy[on_top, 0])
    return ymin.astype(np.int64), xmin.astype(np.int64)


def polygonize_block(
    mask: np.ndarray,
    prob: np.ndarray | None = None,
    *,
    row_off: int,
    col_off: int,
    scene_height: int,
    scene_width: int,
) -> BlockPolygons:
    """Polygonize one class of one block's core (runs on a worker).

    Steps: ``rasterio.features.shapes`` on the mask (4-connectivity, translated to the
    core's place in the scene) gives one polygon per 4-connected region; the same regions
    are found from the mask's horizontal runs (joined across rows by overlap), which give
    the pixel counts, the probability sums and the strips along internal sides; a polygon
    is matched to its region by its first pixel in raster order.

    Cost: one polygonize pass and two cheap passes (run detection, gathering foreground
    probabilities) over the core; extra memory about two bytes per pixel plus a few arrays
    per run (no label image is built).

    Args:
        mask: ``(h, w)`` foreground of the core (bool, or anything where non-zero means
            foreground).
        prob: ``(h, w)`` probability of the class, or None (then ``prob_sum`` is NaN).
        row_off, col_off: the core's top-left pixel in the scene.
        scene_height, scene_width: scene size in pixels; sides of the core on the scene
            border are not internal edges.

    Raises:
        ValueError: the mask is not 2-D, ``prob`` has another shape, or the core does not
            lie inside the scene.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (rows, columns), got shape {mask.shape}")
    if mask.dtype != np.bool_:
        mask = mask != 0
    h, w = mask.shape
    if prob is not None:
        prob = np.asarray(prob)
        if prob.shape != mask.shape:
            raise ValueError(f"prob has shape {prob.shape}, expected the mask's shape {mask.shape}")
    row_off, col_off = int(row_off), int(col_off)
    scene_height, scene_width = int(scene_height), int(scene_width)
    if row_off < 0 or col_off < 0 or row_off + h > scene_height or col_off + w > scene_width:
        raise ValueError(
            f"block core rows {row_off}:{row_off + h}, columns {col_off}:{col_off + w} "
            f"does not fit in a scene of {scene_height} x {scene_width} pixels"
        )
    nonempty = h > 0 and w > 0
    internal = {
        "top": nonempty and row_off > 0,
        "bottom": nonempty and row_off + h < scene_height,
        "left": nonempty and col_off > 0,
        "right": nonempty and col_off + w < scene_width,
    }

    # 1. Regions from runs.
    row, c0, c1 = _runs(mask) if nonempty else (np.zeros(0, np.int64),) * 3
    n, comp = _run_components(row, c0, c1, w)
    run_pixels = c1 - c0

    # 2. Polygons, one per region, matched to regions by their first pixel.
    if n:
        features = shapes(
            mask.view(np.uint8),
            mask=mask,
            connectivity=4,
            transform=Affine.translation(col_off, row_off),
        )
        geoms = _features_to_polygons(features)
        if len(geoms) != n:
            raise RuntimeError(f"polygonize gave {len(geoms)} polygons for {n} connected regions")
        top, left = _top_left(geoms)
        run_key = row * (w + 1) + c0
        first_key = (top - row_off) * (w + 1) + (left - col_off)
        first_run = np.minimum(np.searchsorted(run_key, first_key), len(run_key) - 1)
        if not np.array_equal(run_key[first_run], first_key) or not np.array_equal(
            np.bincount(comp[first_run], minlength=n), np.ones(n, dtype=np.int64)
        ):
            raise RuntimeError("polygons from polygonize do not match the connected regions")
        polygon_of = np.empty(n, dtype=np.int64)
        polygon_of[comp[first_run]] = np.arange(n)
        run_polygon = polygon_of[comp]
        pixel_count = np.bincount(run_polygon, weights=run_pixels, minlength=n).astype(np.int64)
        if prob is None:
            prob_sum = np.full(n, np.nan)
        else:
            values = prob[mask]  # raster order, so each run is a contiguous slice
            run_start = np.concatenate([[0], np.cumsum(run_pixels)[:-1]])
            run_sum = np.add.reduceat(values, run_start, dtype=np.float64)
            prob_sum = np.bincount(run_polygon, weights=run_sum, minlength=n)
    else:
        geoms = _empty_geoms()
        run_polygon = np.zeros(0, dtype=np.int64)
        pixel_count = np.zeros(0, dtype=np.int64)
        prob_sum = np.zeros(0, dtype=np.float64)

    # 3. Strips along internal sides (polygon index + 1, 0 = background).
    label = (run_polygon + 1).astype(np.int32)
    edges: dict[str, np.ndarray] = {}
    for side in ("top", "bottom"):
        if internal[side]:
            r = 0 if side == "top" else h - 1
            strip = np.zeros(w, dtype=np.int32)
            in_row = row == r
            strip[np.flatnonzero(mask[r])] = np.repeat(label[in_row], run_pixels[in_row])
            edges[side] = strip
    for side in ("left", "right"):
        if internal[side]:
            at_side = (c0 == 0) if side == "left" else (c1 == w)
            strip = np.zeros(h, dtype=np.int32)
            strip[row[at_side]] = label[at_side]
            edges[side] = strip
    touches_edge = np.zeros(n + 1, dtype=bool)
    for strip in edges.values():
        touches_edge[strip] = True

    return BlockPolygons(
        row_off=row_off,
        col_off=col_off,
        height=h,
        width=w,
        scene_height=scene_height,
        scene_width=scene_width,
        geoms=geoms,
        pixel_count=pixel_count,
        prob_sum=np.asarray(prob_sum, dtype=np.float64),
        edges=edges,
        touches_edge=touches_edge[1:],
    )
