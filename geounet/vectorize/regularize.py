"""Regular building outlines: pixel staircases become edges along each building's dominant
directions, with right angles (45 degrees where the outline clearly has them) and small steps
removed.

The geometry is ``buildingregulariser``'s (MIT): per polygon it simplifies the ring
(Douglas-Peucker), finds the dominant direction from a length-weighted histogram of edge
directions, snaps every edge to 0/90 (or 45) degrees from it, merges parallel neighbours
closer than a threshold and intersects the snapped edges into corners. What it does not do,
and this module does:

* a fast path for rectangles: each outline's fitted rectangle (:func:`fitted_rectangles`,
  vectorized over all outlines) replaces it where their IoU is at least ``rectangle_iou``
  (0.9); only the other outlines go to the library;

* an acceptance gate: a regularized outline replaces the input only if it is one valid,
  non-empty Polygon with IoU >= ``min_iou`` and an area within ``area_tolerance`` of the
  input's; otherwise the input is kept (the library only falls back below IoU 0.1);
* a metric plane: the library measures in CRS units, so outlines are moved into metres first
  (:func:`metric_plane`) and the accepted ones moved back;
* the dominant direction to a fraction of a degree: the library rounds it to a whole degree
  (up to 1 degree off: a 34 x 20 m rectangle at 23.96 degrees came out at 23, its corners
  0.55 m away). Each polygon is turned about its centroid so that its own direction
  (:func:`dominant_direction`) lies on a whole degree (:data:`WORK_DEG`), regularized there,
  and turned back;
* a second pass of the library over those of its results that kept many corners (it removes
  the jogs that noise leaves),
  and no pass at all over outlines too narrow for the simplification;
* corners within 1 mm of a pixel-outline corner take its exact coordinates;
* parallelism that is safe in a threaded client: the library's own ``multiprocessing.Pool``
  forks the calling process, which is unsafe in the client (Dask's and the writers' threads
  hold locks); large scenes go to a pool of *spawned* processes instead.

Every polygon is regularized alone, so results do not depend on the block grid, the order of
the polygons or how they are split among processes.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from buildingregulariser import regularize_geodataframe
from pyproj import Transformer
from pyproj.crs import ProjectedCRS
from pyproj.crs.coordinate_operation import TransverseMercatorConversion
from scipy.spatial import cKDTree

from geounet.errors import ConfigError
from geounet.settings import RegularizeSettings
from geounet.vectorize.postprocess import _as_crs, _degrees_per_unit, _unit_factor, ground_factor

__all__ = [
    "MetricPlane",
    "Regularized",
    "dominant_direction",
    "fitted_rectangles",
    "metric_plane",
    "regularize",
    "regularize_in_crs",
]

log = logging.getLogger(__name__)

# Measured (benchmarks/RESULTS.md, "Regular building outlines"): the library takes 3-12 ms a
# polygon (more vertices, longer), in Python, holding the GIL; a spawned process needs 1-4 s
# to start (it imports geopandas). Below this many polygons the calling thread does the work.
PARALLEL_FROM = 2000
_CHUNK = 500  # polygons per task of the process pool
# Polygons per pass of the vectorized steps (fitted rectangles, rectilinear outlines, vertex
# snapping): their temporaries grow with the vertices they hold at once (the rectangle fit's
# clipping about 150 bytes per vertex: 250 MB for the 23,000 pixel outlines of a 12000^2 px
# synthetic scene in one pass); each polygon is computed alone, so the passes give the same result.
VECTOR_CHUNK = 2048
# The direction each polygon is turned to before the library finds it again: a whole degree
# inside one of the library's 5-degree coarse bins, plus a nudge. The library bins edge
# directions by whole degrees and rounds the best bin's centre (b + 0.5) down unless the next
# bin up holds more: edges at 42 + 1e-6 degrees fall in bin 42 and come back as 42, where edges
# at exactly 42 fell in bin 41 by rounding noise and came back as 41 (1 degree off). Noisy
# edges spread over bins 41 and 42 come back as 42 as well. Checked in tests/test_regularize.py.
WORK_DEG = 42.0
NUDGE_DEG = 1e-6  # turns walls by 0.6 um over 35 m; the rounding noise of their directions is < 1e-9 degrees
# Default simplification, pixels: one pixel left stairs on walls at 30-60 degrees (up to 66
# corners on a rectangle) and kept the mask's noise; two gave 4-6; three kept the most F1 of
# 0.5, 1 and 1.5 m at 0.5 m pixels (0.892 against 0.887 for two; benchmarks/RESULTS.md
# "Regular building outlines").
SIMPLIFY_PX = 3.0
# Outlines beyond these are kept as they are: a 250 m wall-to-wall warehouse at 0.3 m has
# about 3,300 pixel-outline corners; a mask blob with thousands of corners and holes (a field of
# roofs merged into one region) took minutes to simplify with topology kept.
MAX_VERTICES = 5000
MAX_HOLES = 10
# A regularized corner within this distance of a pixel-outline corner takes its exact
# coordinates, metres: below what regularization can place, and it keeps outlines that were
# already regular (a rectangle on a north-up grid) identical to the pixel ones.
SNAP_M = 1e-3
# Default of ``regularize.rectangle_iou``: an outline within this IoU of its fitted rectangle
# (:func:`fitted_rectangles`) becomes that rectangle without the library: most buildings are
# rectangles, and the library's 3-12 ms a polygon doubled the time of a scene dense with them
# (benchmarks/RESULTS.md, "Regular building outlines"); the vectorized fit takes about 0.1 ms.
RECT_IOU = 0.9
RECT_FILL = 0.7  # outlines filling less of their minimum rotated rectangle get no fitted rectangle
# Edges of a simplified outline more than this off the building's axes make it no rectilinear
# outline (orthogonal_outlines): a diagonal wall, left to the library and its 45 degrees.
ORTHO_DEG = 30.0
# Outlines the library returns with more corners than this get a second pass (an L has 6, a T 8).
SECOND_PASS_FROM = 8
NARROW = 2.0  # outlines whose minimum rotated rectangle is narrower than this many tolerances stay as they are
SUPPORT_DEG = 15.0  # edges within this many degrees of a direction support it (dominant_direction)

# The library warns for each degenerate ring it returns unchanged (the gate below decides what to
# keep) and about its own use of pandas (a deprecated keyword): nothing a user can act on.
_quiet = partial(warnings.filterwarnings, "ignore", module=r"buildingregulariser(\.|$)")
_quiet()


class Regularized(NamedTuple):
    """Output of :func:`regularize`, one row per input polygon, in input order."""

    geoms: np.ndarray  #: the regularized outline where accepted, else the input geometry
    regularized: np.ndarray  #: bool, whether the row holds a regularized outline


class MetricPlane(NamedTuple):
    """A local plane in metres around a scene: coordinate functions for ``shapely.transform``."""

    forward: Callable[[np.ndarray], np.ndarray]  #: (n, 2) scene CRS coordinates -> metres
    back: Callable[[np.ndarray], np.ndarray]  #: (n, 2) metres -> scene CRS coordinates


def metric_plane(crs: Any, center_xy: tuple[float, float]) -> MetricPlane:
    """A plane in metres, centred on ``center_xy`` (scene CRS), where angles are the scene's.

    Projected CRS: the CRS's own plane, shifted to the centre (so the library's line
    intersections see small numbers) and scaled to ground metres there (the unit's length, and
    :func:`~geounet.vectorize.postprocess.ground_factor` where the plane is not true to the
    ground, e.g. Web Mercator): a similarity, so the angles and
    shapes regularized are those of the CRS's plane (true ground angles for the conformal
    projections imagery comes in: UTM, transverse Mercator, Lambert conformal, Web Mercator).
    Geographic CRS: a transverse Mercator projection centred on the scene, on the CRS's own
    datum (conformal: right angles on the ground stay right angles; scale error < 1e-6 within
    10 km of the centre).
    """
    crs = _as_crs(crs)
    cx, cy = float(center_xy[0]), float(center_xy[1])
    if not crs.is_geographic:
        # CRS units -> ground metres at the centre (Web Mercator: times cos(latitude))
        k = _unit_factor(crs) * ground_factor(crs, (cx, cy))
        shift = np.array([cx, cy])
        return MetricPlane(lambda xy: (xy - shift) * k, lambda xy: xy / k + shift)
    deg = _degrees_per_unit(crs)
    local = ProjectedCRS(
        TransverseMercatorConversion(latitude_natural_origin=cy * deg, longitude_natural_origin=cx * deg),
        geodetic_crs=crs.geodetic_crs,
    )
    to_local = Transformer.from_crs(crs, local, always_xy=True)
    to_crs = Transformer.from_crs(local, crs, always_xy=True)

    def forward(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(to_local.transform(xy[:, 0], xy[:, 1]))

    def back(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(to_crs.transform(xy[:, 0], xy[:, 1]))

    return MetricPlane(forward, back)


def _edges(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction modulo 90 (degrees), length and owner of every edge of every exterior ring."""
    xy, owner = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    vectors = np.diff(xy, axis=0)
    same = owner[1:] == owner[:-1]  # the step from one ring's last vertex to the next ring is no edge
    vectors, owner = vectors[same], owner[1:][same]
    theta = np.degrees(np.arctan2(vectors[:, 1], vectors[:, 0])) % 90.0
    return theta, np.hypot(vectors[:, 0], vectors[:, 1]), owner


def _support(theta: np.ndarray, length: np.ndarray, owner: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """Per polygon, the length of its edges within SUPPORT_DEG of its direction ``at`` (modulo 90)."""
    near = np.abs((theta - at[owner] + 45.0) % 90.0 - 45.0) <= SUPPORT_DEG
    return np.bincount(owner[near], weights=length[near], minlength=n)


def _envelope(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direction of the long side (degrees modulo 90) and length of the short side of each
    geometry's minimum rotated rectangle; NaN and 0 where there is none."""
    n = len(geoms)
    direction, short = np.full(n, np.nan), np.zeros(n)
    box = shapely.oriented_envelope(geoms)
    polygon = np.flatnonzero((shapely.get_type_id(box) == 3) & (shapely.get_num_coordinates(box) == 5))
    if len(polygon) == 0:
        return direction, short
    xy = shapely.get_coordinates(shapely.get_exterior_ring(box[polygon])).reshape(len(polygon), 5, 2)
    a, b = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 1]
    len_a, len_b = np.hypot(a[:, 0], a[:, 1]), np.hypot(b[:, 0], b[:, 1])
    long_side = np.where((len_a >= len_b)[:, None], a, b)
    direction[polygon] = np.degrees(np.arctan2(long_side[:, 1], long_side[:, 0])) % 90.0
    short[polygon] = np.minimum(len_a, len_b)
    return direction, short


def fitted_rectangles(geoms: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each polygon's rectangle and the IoU between the two, vectorized over the polygons.

    The rectangle has the direction of the polygon's minimum rotated rectangle (see
    :func:`dominant_direction`) and is shrunk by the same margin on all four sides until its
    area equals the polygon's: the minimum rectangle encloses the outermost pixel corners of a
    staircase, the fitted one runs through the middle of the stairs. None and IoU 0 where
    there is no rectangle (no area, or a degenerate one).
    """
    arr = np.asarray(geoms, dtype=object).reshape(-1)
    n = len(arr)
    rects = np.full(n, None, dtype=object)
    iou = np.zeros(n)
    box = shapely.oriented_envelope(arr)
    ok = np.flatnonzero((shapely.get_type_id(box) == 3) & (shapely.get_num_coordinates(box) == 5))
    if len(ok) == 0:
        return rects, iou
    xy = shapely.get_coordinates(shapely.get_exterior_ring(box[ok])).reshape(len(ok), 5, 2)[:, :4]
    u, v = xy[:, 1] - xy[:, 0], xy[:, 3] - xy[:, 0]
    len_u, len_v = np.hypot(u[:, 0], u[:, 1]), np.hypot(v[:, 0], v[:, 1])
    area = shapely.area(arr[ok])
    # an outline filling less than RECT_FILL of its minimum rectangle (an L, a T) is far from
    # any rectangle of its area: no fit, which spares the intersection below
    full = area >= RECT_FILL * len_u * len_v
    ok, xy, u, v, len_u, len_v, area = ok[full], xy[full], u[full], v[full], len_u[full], len_v[full], area[full]
    # (len_u - 2d)(len_v - 2d) = area, the smaller root
    d = ((len_u + len_v) - np.sqrt((len_u - len_v) ** 2 + 4.0 * area)) / 4.0
    good = (len_u > 0) & (len_v > 0) & (area > 0) & (2 * d < np.minimum(len_u, len_v))
    ok, xy, u, v, len_u, len_v, d = ok[good], xy[good], u[good], v[good], len_u[good], len_v[good], d[good]
    area = area[good]
    centre = xy.mean(axis=1)
    hu = u * ((len_u - 2 * d) / len_u / 2)[:, None]
    hv = v * ((len_v - 2 * d) / len_v / 2)[:, None]
    corners = np.stack(
        [centre - hu - hv, centre + hu - hv, centre + hu + hv, centre - hu + hv, centre - hu - hv], axis=1
    )
    fitted = shapely.orient_polygons(shapely.polygons(corners))
    rects[ok] = fitted
    quads = corners[:, :4].copy()
    e1, e2 = quads[:, 1] - quads[:, 0], quads[:, 2] - quads[:, 1]
    ccw = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0
    quads[~ccw] = quads[~ccw, ::-1]
    inter = _convex_clip_area(arr[ok], quads)  # area: the rectangle's too
    with np.errstate(divide="ignore", invalid="ignore"):
        iou[ok] = np.nan_to_num(inter / (2.0 * area - inter))
    return rects, iou


def _ring_next(ring: np.ndarray) -> np.ndarray:
    """Index of the next vertex of each vertex's ring (cyclic), for vertices grouped by ``ring``."""
    idx = np.arange(len(ring))
    start = np.ones(len(ring), dtype=bool)
    start[1:] = ring[1:] != ring[:-1]
    first = np.maximum.accumulate(np.where(start, idx, 0))
    end = np.ones(len(ring), dtype=bool)
    end[:-1] = ring[1:] != ring[:-1]
    return np.where(end, first, idx + 1)


def _convex_clip_area(polys: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Area of ``polys[i]`` inside the convex quadrilateral ``quads[i]`` ((n, 4, 2), counter-
    clockwise), vectorized: every ring of every polygon is clipped by the quad's four half-planes
    (Sutherland-Hodgman; a non-convex ring may keep zero-width bridges, which add no area) and
    the signed shoelace areas of the clipped rings (exteriors counter-clockwise, holes
    clockwise) are summed per polygon. About 10x faster than GEOS overlays on pixel outlines."""
    n = len(polys)
    rings, ring_owner = shapely.get_rings(shapely.orient_polygons(polys), return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    # open rings: drop each ring's closing vertex
    last = np.ones(len(ring), dtype=bool)
    last[:-1] = ring[1:] != ring[:-1]
    xy, ring = xy[~last], ring[~last]
    for k in range(4):
        a = quads[ring_owner[ring], k]
        b = quads[ring_owner[ring], (k + 1) % 4]
        if len(xy) == 0:
            break
        nxt = _ring_next(ring)
        side = (b[:, 0] - a[:, 0]) * (xy[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (xy[:, 0] - a[:, 0])
        inside = side >= 0
        cross = inside != inside[nxt]
        with np.errstate(divide="ignore", invalid="ignore"):  # used only where the edge crosses
            t = side / (side - side[nxt])
            hit = xy + t[:, None] * (xy[nxt] - xy)
        count = inside.astype(np.int64) + cross
        pos = np.cumsum(count) - count
        out = np.empty((int(count.sum()), 2))
        out_ring = np.empty(len(out), dtype=np.int64)
        keep = np.flatnonzero(inside)
        out[pos[keep]] = xy[keep]
        out_ring[pos[keep]] = ring[keep]
        at = np.flatnonzero(cross)
        out[pos[at] + inside[at]] = hit[at]
        out_ring[pos[at] + inside[at]] = ring[at]
        xy, ring = out, out_ring
    area = np.zeros(n)
    if len(xy):
        nxt = _ring_next(ring)
        cross2 = xy[:, 0] * xy[nxt, 1] - xy[nxt, 0] * xy[:, 1]
        np.add.at(area, ring_owner[ring], cross2 / 2.0)
    return area


def dominant_direction(geoms: Any, *, simplify: float = 0.0) -> np.ndarray:
    """Each polygon's dominant direction, degrees in [0, 90) (a wall and its perpendicular
    count alike), for polygons in a plane (the units of ``simplify``).

    The direction of the long side of the polygon's minimum rotated rectangle: measured on
    the convex hull, it is not fooled by pixel stairs. Where the outline's own edges
    (simplified with ``simplify``) do not support it -- less than half the edge length within
    :data:`SUPPORT_DEG` of it that the best direction has, e.g. a cross whose rectangle runs
    diagonally -- the best direction of the edges is taken instead: the centre of the
    30-degree window holding the most edge length, refined to the mean direction of those
    edges. Measured on pixel staircases 10-60 px long at random angles (simplify = 1 px):
    mean error 0.2 degrees for rectangles and cut corners, 0.35 for L shapes, 2 for crosses;
    a histogram of the simplified edges' directions alone (as the library's) was 1.7 degrees
    off. NaN for a polygon without area. Cost: one pass over the vertices and a 90-bin
    histogram per polygon.
    """
    arr = np.asarray(geoms, dtype=object).reshape(-1)
    n = len(arr)
    # 1. the minimum rotated rectangle's long side
    out = _envelope(arr)[0]
    out[shapely.area(arr) <= 0] = np.nan

    # 2. checked against the outline's edges: the window of most edge length
    simple = shapely.simplify(arr, simplify, preserve_topology=True) if simplify > 0 else arr
    theta, length, edge_owner = _edges(simple)
    best = np.full(n, np.nan)
    step = 20_000  # polygons per histogram block (90 float64 each)
    half = int(SUPPORT_DEG)
    for lo in range(0, n, step):
        k = min(step, n - lo)
        sel = (edge_owner >= lo) & (edge_owner < lo + step)
        bins = np.minimum(theta[sel].astype(np.int64), 89)
        hist = np.bincount((edge_owner[sel] - lo) * 90 + bins, weights=length[sel], minlength=k * 90).reshape(k, 90)
        window = np.zeros_like(hist)
        for j in range(-half, half + 1):
            window += np.roll(hist, j, axis=1)
        best[lo : lo + k] = window.argmax(axis=1) + 0.5
    near = np.abs((theta - best[edge_owner] + 45.0) % 90.0 - 45.0) <= SUPPORT_DEG
    offset = (theta - best[edge_owner] + 45.0) % 90.0 - 45.0
    w = np.bincount(edge_owner[near], weights=length[near], minlength=n)
    shift = np.bincount(edge_owner[near], weights=(length * offset)[near], minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        best = np.where(w > 0, (best + shift / w) % 90.0, np.nan)
    weak = _support(theta, length, edge_owner, np.nan_to_num(out), n) < 0.5 * _support(
        theta, length, edge_owner, np.nan_to_num(best), n
    )
    use_edges = np.isfinite(out) & np.isfinite(best) & weak
    out[use_edges] = best[use_edges]
    return out


def _turn(geoms: np.ndarray, degrees: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each geometry turned counter-clockwise by its angle (degrees) about its centre (n, 2)."""
    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    a = np.radians(degrees)[owner]
    c = centres[owner]
    dx, dy = xy[:, 0] - c[:, 0], xy[:, 1] - c[:, 1]
    turned = np.column_stack([c[:, 0] + dx * np.cos(a) - dy * np.sin(a), c[:, 1] + dx * np.sin(a) + dy * np.cos(a)])
    return shapely.set_coordinates(geoms.copy(), turned)


def orthogonal_outlines(
    geoms: Any, directions: np.ndarray, *, simplify: float, max_off_deg: float = ORTHO_DEG
) -> np.ndarray:
    """Rectilinear outlines (every corner a right angle) along each polygon's direction,
    vectorized over all polygons; None where the outline is not rectilinear.

    Per polygon: turned so its direction is the x axis, simplified (Douglas-Peucker,
    ``simplify``), each edge of the exterior ring classed as running along x or y; an edge
    more than ``max_off_deg`` off its axis makes the outline not rectilinear (a diagonal wall:
    left to the library, which knows 45 degrees). Consecutive edges of one class form a wall,
    placed at the length-weighted mean of their midpoints across it; neighbouring walls meet
    at right angles; turned back. Polygons with holes, fewer than four walls or an invalid
    result get None. The caller's gate decides whether a result is close enough.
    """
    arr = np.asarray(geoms, dtype=object).reshape(-1)
    n = len(arr)
    out = np.full(n, None, dtype=object)
    ok = np.flatnonzero(
        (shapely.get_type_id(arr) == 3) & (shapely.get_num_interior_rings(arr) == 0) & np.isfinite(directions)
    )
    if len(ok) == 0:
        return out
    centres = shapely.get_coordinates(shapely.centroid(arr[ok]))
    flat = _turn(arr[ok], -directions[ok], centres)
    rings = shapely.get_exterior_ring(shapely.simplify(flat, simplify, preserve_topology=True))
    xy, owner = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(owner, minlength=len(ok))
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    last = start + counts - 1
    keep = np.ones(len(xy), dtype=bool)
    keep[last[counts > 0]] = False  # the closing vertex
    xy, owner = xy[keep], owner[keep]
    m = np.bincount(owner, minlength=len(ok))  # open ring lengths
    first = np.concatenate([[0], np.cumsum(m)[:-1]])
    local = np.arange(len(xy)) - first[owner]
    nxt = np.where(local + 1 < m[owner], np.arange(len(xy)) + 1, first[owner])
    edge = xy[nxt] - xy
    length = np.hypot(edge[:, 0], edge[:, 1])
    along_x = np.abs(edge[:, 0]) >= np.abs(edge[:, 1])
    off = np.degrees(
        np.arctan2(
            np.minimum(np.abs(edge[:, 0]), np.abs(edge[:, 1])), np.maximum(np.abs(edge[:, 0]), np.abs(edge[:, 1]))
        )
    )
    bad = np.zeros(len(ok), dtype=bool)
    np.logical_or.at(bad, owner, off > max_off_deg)
    bad |= m < 4
    # walls: cyclic runs of one class; each ring rolled to start where its class changes
    prev = np.where(local > 0, np.arange(len(xy)) - 1, first[owner] + m[owner] - 1)
    change = along_x != along_x[prev]
    has_change = np.zeros(len(ok), dtype=bool)
    np.logical_or.at(has_change, owner, change)
    bad |= ~has_change
    big = np.iinfo(np.int64).max
    first_change = np.full(len(ok), big)
    np.minimum.at(first_change, owner[change], local[change])
    first_change[first_change == big] = 0
    rolled = (local - first_change[owner]) % np.maximum(m[owner], 1)
    order = np.lexsort((rolled, owner))
    o_owner, o_x = owner[order], along_x[order]
    o_len, o_mid = length[order], (xy[order] + xy[nxt][order]) / 2.0
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (o_owner[1:] != o_owner[:-1]) | (o_x[1:] != o_x[:-1])
    wall = np.cumsum(starts) - 1
    n_walls = int(wall[-1]) + 1 if len(wall) else 0
    wall_owner = o_owner[starts]
    wall_x = o_x[starts]
    across = np.where(o_x, o_mid[:, 1], o_mid[:, 0])  # walls along x sit at a y, and vice versa
    weight = np.bincount(wall, weights=o_len, minlength=n_walls)
    with np.errstate(divide="ignore", invalid="ignore"):
        position = np.bincount(wall, weights=o_len * across, minlength=n_walls) / weight
    walls_per = np.bincount(wall_owner, minlength=len(ok))
    bad |= (walls_per < 4) | (walls_per % 2 == 1)
    bad[wall_owner[~np.isfinite(position)]] = True
    # corner between each wall and the next one of its ring
    w_first = np.concatenate([[0], np.cumsum(walls_per)[:-1]])
    w_local = np.arange(n_walls) - w_first[wall_owner]
    w_next = np.where(w_local + 1 < walls_per[wall_owner], np.arange(n_walls) + 1, w_first[wall_owner])
    cx = np.where(wall_x, position[w_next], position)
    cy = np.where(wall_x, position, position[w_next])
    good = np.flatnonzero(~bad)
    if len(good) == 0:
        return out
    sel = ~bad[wall_owner]
    corners = np.column_stack([cx[sel], cy[sel]])
    c_owner = wall_owner[sel]
    # closed rings: each ring's first corner repeated at its end
    per = np.bincount(c_owner, minlength=len(ok))[good]
    c_first = np.concatenate([[0], np.cumsum(per)[:-1]])
    closed = np.insert(corners, np.repeat(c_first + per, 1), corners[c_first], axis=0)
    ring_offsets = np.concatenate([[0], np.cumsum(per + 1)])
    polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, closed, (ring_offsets, np.arange(len(good) + 1)))
    polys = _turn(polys, directions[ok][good], centres[good])
    valid = shapely.is_valid(polys) & (shapely.area(polys) > 0)
    out[ok[good[valid]]] = shapely.orient_polygons(polys[valid])
    return out


def _gate(got: np.ndarray, inputs: np.ndarray, min_iou: float, area_tolerance: float) -> np.ndarray:
    """Which results are one valid, non-empty Polygon with IoU >= ``min_iou`` with their input and
    an area within ``area_tolerance`` of its."""
    valid = (shapely.get_type_id(got) == 3) & ~shapely.is_empty(got)
    valid[valid] = shapely.is_valid(got[valid])  # overlays of invalid results would raise
    ok, mine = got[valid], inputs[valid]
    inter = shapely.area(shapely.intersection(ok, mine))
    area_ok, area_mine = shapely.area(ok), shapely.area(mine)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_ok + area_mine - inter)
        ratio = area_ok / area_mine
    accept = np.zeros(len(got), dtype=bool)
    accept[valid] = (iou >= min_iou) & (np.abs(ratio - 1.0) <= area_tolerance)
    return accept


def _without_pinholes(geoms: np.ndarray, max_area: float) -> np.ndarray:
    """``geoms`` with the holes smaller than ``max_area`` filled (a mask's one-pixel noise)."""
    out = geoms.copy()
    for i in np.flatnonzero(shapely.get_num_interior_rings(geoms) > 0):
        p = geoms[i]
        holes = [r for r in p.interiors if shapely.Polygon(r).area >= max_area]
        if len(holes) < len(p.interiors):
            out[i] = shapely.Polygon(p.exterior, holes)
    return out


def _shortest_edge(geoms: np.ndarray) -> np.ndarray:
    """Length of each polygon's shortest exterior edge (inf for none)."""
    xy, owner = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    out = np.full(len(geoms), np.inf)
    if len(xy) < 2:
        return out
    same = owner[1:] == owner[:-1]
    length = np.hypot(*(xy[1:] - xy[:-1]).T)[same]
    np.minimum.at(out, owner[1:][same], length)
    return out


def _check(name: str, value: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = float(value)
    inside = (low < value if open_low else low <= value) and value <= high
    if not (math.isfinite(value) and inside):
        bound = "(" if open_low else "["
        raise ConfigError(f"regularize {name} must lie in {bound}{low}, {high}], got {value!r}")
    return value


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _library(frame: gpd.GeoDataFrame, options: dict[str, Any]) -> gpd.GeoDataFrame:
    """``regularize_geodataframe`` in this process; rows it fails on are dropped (they keep
    their pixel outline): it is third-party Python over arbitrary outlines, and one polygon it
    cannot handle must not fail a scene."""
    if frame.empty:
        return frame
    try:
        return regularize_geodataframe(frame, num_cores=1, **options)
    except Exception:  # retried row by row below
        pass
    parts = []
    for i in range(len(frame)):
        try:
            parts.append(regularize_geodataframe(frame.iloc[i : i + 1], num_cores=1, **options))
        except Exception as exc:
            log.debug("buildingregulariser failed on polygon %s: %s", frame["_row"].iloc[i], exc)
    return pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]


def _twice(frame: gpd.GeoDataFrame, **options: Any) -> gpd.GeoDataFrame:
    """The library's regularization, then again on those of its results that kept more than
    :data:`SECOND_PASS_FROM` corners: noise that outlasted the first simplification leaves short
    jogs between walls, which the second pass, seeing straight walls, merges (noisy staircase
    rectangles: 4-12 corners after one pass, 4-5 after two; most rectangles no longer get here,
    see :func:`fitted_rectangles`). Input at WORK_DEG + NUDGE_DEG; the result's walls at WORK_DEG."""
    first = _library(frame, options)
    again = shapely.get_num_coordinates(np.asarray(first.geometry.values, dtype=object)) > SECOND_PASS_FROM + 1
    if not again.any():
        return first
    redo = first[again].copy()
    redo["geometry"] = redo.geometry.rotate(NUDGE_DEG, origin="centroid")  # walls at WORK_DEG + NUDGE_DEG
    return pd.concat([first[~again], _library(redo, options)], ignore_index=True)


def _run_library(frame: gpd.GeoDataFrame, options: dict[str, Any], processes: int | None) -> gpd.GeoDataFrame:
    """:func:`_twice` on ``frame``, in this thread or in spawned processes."""
    run: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame] = partial(_twice, **options)
    n = len(frame)
    if processes is None:
        processes = 1 if n < PARALLEL_FROM else min(_cpus(), math.ceil(n / _CHUNK))
    if processes <= 1:
        return run(frame)
    chunks = [frame.iloc[i : i + _CHUNK] for i in range(0, n, _CHUNK)]
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(processes, mp_context=context, initializer=_quiet) as ex:
            return pd.concat(list(ex.map(run, chunks)), ignore_index=True)
    except BrokenProcessPool as exc:
        # e.g. a calling script without ``if __name__ == "__main__":``, which spawned
        # processes import again (Dask's process workers need that guard too)
        log.warning("regularizing %d polygons in this thread: the process pool failed (%s)", n, exc)
        return run(frame)


def _chunked(fn: Callable[..., Any], *arrays: np.ndarray, **options: Any) -> Any:
    """``fn(*arrays, **options)`` over slices of :data:`VECTOR_CHUNK` rows of the arrays, results
    joined: for functions computed per row, with temporaries bounded by a slice."""
    size = VECTOR_CHUNK
    n = len(arrays[0])
    if n <= size:
        return fn(*arrays, **options)
    parts = [fn(*(a[i : i + size] for a in arrays), **options) for i in range(0, n, size)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column) for column in zip(*parts))
    return np.concatenate(parts)


def regularize(
    geoms: Any,
    *,
    simplify_m: float,
    min_step_m: float = 1.0,
    allow_45: bool = True,
    diagonal_reduction_deg: float = 15.0,
    allow_circles: bool = False,
    min_iou: float = 0.8,
    area_tolerance: float = 0.2,
    rectangle_iou: float = RECT_IOU,
    orthogonal: bool = True,
    processes: int | None = None,
) -> Regularized:
    """Regularize polygons given in a plane in metres (a metric projected CRS, or
    :func:`metric_plane`), each alone, and keep each result only where the gate accepts it.

    Outlines within ``rectangle_iou`` of their fitted rectangle become it (no library call).
    Outlines narrower than ``NARROW * simplify_m`` (their minimum rotated rectangle's short
    side) are left as they are: the simplification would collapse them. The library runs
    twice (:func:`_twice`). Cost: 3-7 ms a polygon of a few hundred pixels (Python). From
    :data:`PARALLEL_FROM` polygons on, chunks of 500 go to spawned processes (at most one per
    CPU; each starts in 1-4 s and holds about 150 MB).

    Args:
        geoms: polygons (array, list or GeoSeries of shapely geometries) in metres.
        simplify_m: Douglas-Peucker tolerance before the edges are snapped, metres (two or three pixels
            remove the stairs of a pixel outline and most of a mask's noise).
        min_step_m: parallel walls closer than this become one wall, metres.
        allow_45: edges may also snap to 45 degrees from the dominant direction.
        diagonal_reduction_deg: how much clearer than the 22.5-degree midpoint an edge must be
            diagonal to snap to 45 degrees, degrees in [0, 22.5].
        allow_circles: outlines within IoU 0.9 of a circle become circles.
        min_iou: the gate's minimum IoU between result and input, in (0, 1].
        area_tolerance: the gate's largest ``|area(result) / area(input) - 1|``, >= 0.
        rectangle_iou: outlines within this IoU of their fitted rectangle
            (:func:`fitted_rectangles`) become it without the library, in (0, 1].
        orthogonal: other outlines become rectilinear (:func:`orthogonal_outlines`) where the
            gate accepts it and no wall is shorter than ``min_step_m``, without the library.
        processes: worker processes; None: 1 below :data:`PARALLEL_FROM` polygons, else up to
            one per CPU.

    Returns:
        :class:`Regularized`: per input, the accepted outline or the input itself, and whether
        it was accepted. Inputs that are not valid non-empty Polygons are returned unchanged.

    Raises:
        ConfigError: an option out of its range.
    """
    simplify_m = _check("simplify_m", simplify_m, 0.0, 1e6, open_low=True)
    min_step_m = _check("min_step_m", min_step_m, 0.0, 1e6)
    diagonal_reduction_deg = _check("diagonal_reduction_deg", diagonal_reduction_deg, 0.0, 22.5)
    min_iou = _check("min_iou", min_iou, 0.0, 1.0, open_low=True)
    area_tolerance = _check("area_tolerance", area_tolerance, 0.0, 1e6)
    rectangle_iou = _check("rectangle_iou", rectangle_iou, 0.0, 1.0, open_low=True)
    geoms = np.asarray(geoms, dtype=object).reshape(-1)
    n = len(geoms)
    done = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero((shapely.get_type_id(geoms) == 3) & ~shapely.is_empty(geoms) & shapely.is_valid(geoms))
    # outlines with very many corners or holes are no single building (a mask's large blobs):
    # kept as they are, also because simplifying them costs minutes (topology-preserving)
    plain = (shapely.get_num_coordinates(geoms[candidates]) <= MAX_VERTICES) & (
        shapely.get_num_interior_rings(geoms[candidates]) <= MAX_HOLES
    )
    candidates = candidates[plain]
    # outlines narrower than NARROW tolerances would collapse in the simplification: kept as they are
    candidates = candidates[_envelope(geoms[candidates])[1] >= NARROW * simplify_m]
    if len(candidates) == 0:
        return Regularized(geoms.copy(), done)
    final = geoms.copy()

    # 0. rectangles: the fitted rectangle where it is close enough (the gate's area test holds
    # by construction: the fit keeps the area); pinholes (a mask's noise) do not count
    plain = _without_pinholes(geoms[candidates], simplify_m * simplify_m)
    rects, rect_iou = _chunked(fitted_rectangles, plain)
    square = (rect_iou >= max(rectangle_iou, min_iou) - 1e-9) & (shapely.get_num_interior_rings(plain) == 0)
    final[candidates[square]] = rects[square]
    done[candidates[square]] = True
    candidates, plain = candidates[~square], plain[~square]
    if len(candidates) == 0:
        return Regularized(final, done)

    # 0b. rectilinear outlines (L, T, U shapes...) along the building's direction, where the
    # gate takes them and no wall is shorter than min_step_m
    own_direction = _chunked(dominant_direction, geoms[candidates], simplify=simplify_m)
    if orthogonal:
        ortho = _chunked(orthogonal_outlines, plain, own_direction, simplify=simplify_m)
        has = np.flatnonzero(ortho != None)  # noqa: E711 - elementwise on an object array
        take = np.zeros(len(candidates), dtype=bool)
        take[has] = _gate(ortho[has], geoms[candidates[has]], min_iou, area_tolerance) & (
            _shortest_edge(ortho[has]) >= min_step_m
        )
        final[candidates[take]] = ortho[take]
        done[candidates[take]] = True
        candidates, own_direction = candidates[~take], own_direction[~take]
        if len(candidates) == 0:
            return Regularized(final, done)

    # 1. each polygon turned so that its dominant direction is WORK_DEG (+ NUDGE_DEG)
    inputs = geoms[candidates]
    direction = np.nan_to_num(own_direction, nan=WORK_DEG)
    turn = WORK_DEG + NUDGE_DEG - direction
    centres = shapely.get_coordinates(shapely.centroid(inputs))

    # 2. the library, one row per polygon; "_row" follows each through its explode and cleanup
    frame = gpd.GeoDataFrame({"_row": candidates}, geometry=list(_turn(inputs, turn, centres)))
    options = dict(
        simplify=True,
        simplify_tolerance=simplify_m,
        parallel_threshold=min_step_m,
        allow_45_degree=allow_45,
        diagonal_threshold_reduction=diagonal_reduction_deg,
        allow_circles=allow_circles,
    )
    out = _run_library(frame, options, processes)

    # 3. one result per input (the library may split an outline into pieces, or drop it), turned back
    rows = out["_row"].to_numpy(dtype=np.int64)
    single = np.bincount(rows, minlength=n)[rows] == 1
    back = np.zeros(n)
    back[candidates] = direction - WORK_DEG
    mid = np.zeros((n, 2))
    mid[candidates] = centres
    rows = rows[single]
    result = np.full(n, None, dtype=object)
    result[rows] = _turn(np.asarray(out.geometry.values, dtype=object)[single], back[rows], mid[rows])

    # 4. the gate: one valid Polygon, close to the input in shape and area
    accept = _gate(result[candidates], inputs, min_iou, area_tolerance)
    done[candidates[accept]] = True
    final[candidates[accept]] = result[candidates[accept]]
    return Regularized(final, done)


def regularize_in_crs(
    world_geoms: Any,
    crs: Any,
    *,
    center_xy: tuple[float, float],
    settings: RegularizeSettings,
    pixel_m: float,
    processes: int | None = None,
) -> Regularized:
    """:func:`regularize` polygons given in a scene's CRS: in the :func:`metric_plane` around
    ``center_xy``, back to the CRS for the accepted ones (the others are returned as given,
    not round-tripped).

    Args:
        world_geoms: polygons in the scene CRS.
        crs: the scene's CRS (pyproj, rasterio, EPSG code or WKT).
        center_xy: where the metric plane is centred, scene CRS (the scene's centre).
        settings: the options; ``simplify_m`` None takes :data:`SIMPLIFY_PX` times ``pixel_m``.
        pixel_m: the scene's ground pixel size, metres.
        processes: as for :func:`regularize`.
    """
    world = np.asarray(world_geoms, dtype=object).reshape(-1)
    plane = metric_plane(crs, center_xy)
    metric = shapely.transform(world, plane.forward)
    r = regularize(
        metric,
        simplify_m=settings.simplify_m if settings.simplify_m is not None else SIMPLIFY_PX * pixel_m,
        min_step_m=settings.min_step_m,
        allow_45=settings.allow_45,
        diagonal_reduction_deg=settings.diagonal_reduction_deg,
        allow_circles=settings.allow_circles,
        min_iou=settings.min_iou,
        area_tolerance=settings.area_tolerance,
        rectangle_iou=settings.rectangle_iou,
        orthogonal=settings.orthogonal,
        processes=processes,
    )
    out = world.copy()
    done = r.regularized
    back = shapely.transform(r.geoms[done], plane.back)
    crs = _as_crs(crs)
    metres_per_unit = _unit_factor(crs) * (6_371_000.0 if crs.is_geographic else 1.0)
    snapped = _chunked(_snap_vertices, back, world[done], tolerance=SNAP_M / metres_per_unit)
    out[done] = np.where(shapely.is_valid(snapped), snapped, back)
    return Regularized(out, done)


def _snap_vertices(geoms: np.ndarray, reference: np.ndarray, tolerance: float) -> np.ndarray:
    """Each vertex of ``geoms[i]`` within ``tolerance`` of a vertex of ``reference[i]`` takes
    that vertex's coordinates (no vertex is added or removed, unlike ``shapely.snap``)."""
    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    ref_xy, ref_owner = shapely.get_coordinates(reference, return_index=True)
    if len(xy) == 0 or len(ref_xy) == 0:
        return geoms
    # one k-d tree over all reference vertices, the owner as a third coordinate far apart
    spread = 10.0 * (tolerance + float(np.ptp(np.r_[xy.ravel(), ref_xy.ravel()])) + 1.0)
    tree = cKDTree(np.column_stack([ref_xy, ref_owner * spread]))
    dist, idx = tree.query(np.column_stack([xy, owner * spread]), distance_upper_bound=tolerance)
    near = np.isfinite(dist)
    if not near.any():
        return geoms
    xy = xy.copy()
    xy[near] = ref_xy[idx[near]]
    return shapely.set_coordinates(geoms.copy(), xy)
