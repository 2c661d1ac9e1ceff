"""How good are predicted polygons? Building F1, pixel IoU and road topology.

The module is built in layers, each usable alone:

1. **Pure metrics** on geometries or arrays that are already in one metric CRS:
   :func:`building_f1` (the SpaceNet object metric), :func:`pixel_counts` /
   :func:`pixel_metrics` (confusion counts on masks), :func:`road_topology` (an
   APLS-like path-length similarity plus centerline completeness/correctness) and
   :func:`skeletonize` (Zhang–Suen thinning written with numpy).
2. **Windowed rasterization** (:class:`RasterGrid`, :func:`windowed_pixel_counts`): truth
   and prediction polygons are burned window by window over a scene's pixel grid, so pixel
   metrics never need a full-scene raster.
3. **I/O** (:func:`read_vectors`, :func:`pair_scenes`): vector files in any format and CRS
   that GDAL reads, with layer and class-field selection, reprojected to one metric CRS.
4. **Drivers** (:func:`evaluate_scene`, :func:`evaluate_many`, :func:`format_table`) used
   by ``geounet evaluate``.

Conventions shared by every ratio in this module (precision, recall, F1, IoU, Dice,
completeness, correctness): when *nothing* is present on either side (no true and no
predicted objects, pixels or road length) the ratio is undefined and reported as ``NaN``
(``null`` in JSON, ``-`` in tables). Otherwise a ratio whose denominator is zero is ``0``,
as in SpaceNet's reference scorer (e.g. no predictions but some truth: precision 0,
recall 0, F1 0). Aggregation over scenes sums the counts first and computes the ratios
once (micro-averaging, as SpaceNet does), so empty scenes add nothing and cannot pull an
average up or down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import rasterio.features
import rasterio.windows
import shapely
from affine import Affine
from pyproj import CRS
from scipy import sparse
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree
from shapely.geometry.base import BaseGeometry

from geounet.errors import ConfigError, OutputError, SceneReadError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CLASSES",
    "MatchResult",
    "PixelCounts",
    "RasterGrid",
    "ScenePair",
    "SceneVectors",
    "TopologyParams",
    "building_f1",
    "choose_metric_crs",
    "evaluate_many",
    "evaluate_scene",
    "format_table",
    "pair_scenes",
    "pixel_counts",
    "pixel_metrics",
    "read_vectors",
    "road_topology",
    "skeletonize",
    "windowed_pixel_counts",
    "write_json",
]

#: Values of the class field that select buildings and roads (compared case-insensitively,
#: so the defaults also match geounet's own ``class`` = ``building`` / ``road``).
DEFAULT_CLASSES: Mapping[str, str] = {"building": "Building", "road": "Road"}

#: Vector file extensions recognised when a folder is scanned for scenes.
#: (``.json`` is left out: geounet writes ``run.json`` and ``scene.json`` next to its outputs;
#: a ``.json`` vector file can still be named explicitly.)
VECTOR_SUFFIXES = (".geojson", ".gpkg", ".shp", ".fgb", ".gml", ".kml")
#: Raster extensions tried for ``<stem>.tif`` next to the truth files.
RASTER_SUFFIXES = (".tif", ".tiff")
#: File names of one scene in geounet's output layout (``OUT/<scene>/...``).
PRED_FILES = ("buildings.geojson", "roads.geojson")
PRED_FALLBACK = "polygons.gpkg"
#: Suffixes stripped from truth file stems to get the scene stem (``<stem>_truth.gpkg``).
STEM_SUFFIXES = ("_truth", "_labels", "_road_centerlines", "_centerlines", "_buildings", "_roads")

Role = Literal["buildings", "roads", "road_centerlines"]
GeometryInput = Union[gpd.GeoSeries, gpd.GeoDataFrame, Sequence[BaseGeometry | None], np.ndarray]

_EPS_IOU = 1e-9  # tolerance on the IoU threshold: reprojection rounding must not flip a match


# ---------------------------------------------------------------------------------------
# Ratios
# ---------------------------------------------------------------------------------------


def _ratio(num: float, den: float, nothing_present: bool) -> float:
    """``num / den`` with the module's conventions: NaN when nothing is present, else 0 for 0/0."""
    if nothing_present:
        return math.nan
    return float(num) / float(den) if den > 0 else 0.0


def _json_number(x: Any) -> Any:
    """NaN and infinities become ``None`` so that the result is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_number(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return _json_number(obj)


# ---------------------------------------------------------------------------------------
# 1. Buildings: one-to-one matching at IoU >= threshold (the SpaceNet metric)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching predicted to true polygons.

    Attributes:
        tp: predictions matched one-to-one to a true polygon at IoU >= threshold.
        fp: predictions left unmatched (including degenerate, zero-area predictions).
        fn: true polygons left unmatched.
        iou_sum: sum of the IoU of the matches (``mean_iou = iou_sum / tp``); kept as a sum
            so that results of several scenes can be combined exactly.
        iou_threshold: the threshold used.
        matches: ``(prediction index, truth index, IoU)`` per match, indices being positions
            in the inputs as given. Empty for combined results.
    """

    tp: int
    fp: int
    fn: int
    iou_sum: float = 0.0
    iou_threshold: float = 0.5
    matches: tuple[tuple[int, int, float], ...] = ()

    @property
    def _empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0 when nothing was predicted but truth exists; NaN when both are empty."""
        return _ratio(self.tp, self.tp + self.fp, self._empty)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0 when there is no truth but predictions exist; NaN when both are empty."""
        return _ratio(self.tp, self.tp + self.fn, self._empty)

    @property
    def f1(self) -> float:
        """2·TP / (2·TP + FP + FN), the harmonic mean of precision and recall."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self._empty)

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs; NaN without matches."""
        return self.iou_sum / self.tp if self.tp else math.nan

    @classmethod
    def combine(cls, results: Iterable[MatchResult]) -> MatchResult:
        """Sum the counts of several scenes (micro-average); the match lists are dropped."""
        rs = list(results)
        thresholds = {r.iou_threshold for r in rs}
        if len(thresholds) > 1:
            raise ConfigError(
                f"cannot combine building results made with different IoU thresholds {sorted(thresholds)}"
            )
        return cls(
            tp=sum(r.tp for r in rs),
            fp=sum(r.fp for r in rs),
            fn=sum(r.fn for r in rs),
            iou_sum=float(sum(r.iou_sum for r in rs)),
            iou_threshold=thresholds.pop() if thresholds else 0.5,
        )

    def to_dict(self) -> dict[str, Any]:
        """Counts and ratios (NaN kept; :func:`write_json` turns it into ``null``)."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "n_pred": self.tp + self.fp,
            "n_truth": self.tp + self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_iou": self.mean_iou,
            "iou_sum": self.iou_sum,
            "iou_threshold": self.iou_threshold,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MatchResult:
        return cls(tp=int(d["tp"]), fp=int(d["fp"]), fn=int(d["fn"]), iou_sum=float(d["iou_sum"]),
                   iou_threshold=float(d["iou_threshold"]))


def _geometry_array(geoms: GeometryInput, what: str) -> np.ndarray:
    """Coerce a GeoSeries, GeoDataFrame, list or array of shapely geometries to an object array."""
    if isinstance(geoms, gpd.GeoDataFrame):
        geoms = geoms.geometry
    if isinstance(geoms, gpd.GeoSeries):
        return np.asarray(geoms.values, dtype=object)
    arr = np.empty(len(geoms), dtype=object)
    for i, g in enumerate(geoms):
        if g is not None and not isinstance(g, BaseGeometry):
            raise ConfigError(f"{what}: item {i} is a {type(g).__name__}, not a shapely geometry")
        arr[i] = g
    return arr


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Valid polygonal geometries: invalid ones repaired with ``make_valid``, non-areal parts dropped.

    Null and non-polygonal inputs become empty polygons (so positions are preserved).
    A bow-tie becomes a MultiPolygon of its two lobes; a collapsed ring becomes empty.
    """
    out = np.array(geoms, dtype=object, copy=True)
    missing = shapely.is_missing(out)
    out[missing] = shapely.Polygon()
    bad = ~shapely.is_valid(out)
    if bad.any():
        out[bad] = shapely.make_valid(out[bad], method="structure", keep_collapsed=False)
    types = shapely.get_type_id(out)  # 3 Polygon, 6 MultiPolygon, 7 GeometryCollection
    for i in np.flatnonzero((types != 3) & (types != 6)):
        parts = shapely.get_parts(out[i]) if types[i] == 7 else np.array([out[i]], dtype=object)
        polys = [p for p in parts if shapely.get_type_id(p) in (3, 6) and not p.is_empty]
        out[i] = shapely.union_all(polys) if polys else shapely.Polygon()
    return out


def _check_same_crs(a: GeometryInput, b: GeometryInput, what: str) -> None:
    ca = getattr(a, "crs", None)
    cb = getattr(b, "crs", None)
    if ca is not None and cb is not None and CRS.from_user_input(ca) != CRS.from_user_input(cb):
        raise ConfigError(
            f"{what}: predictions are in {CRS.from_user_input(ca).to_string()} and truth in "
            f"{CRS.from_user_input(cb).to_string()}; reproject both to one metric CRS first "
            "(evaluate_scene does this for you)"
        )


def building_f1(
    pred: GeometryInput,
    truth: GeometryInput,
    iou_threshold: float = 0.5,
    *,
    min_area: float = 0.0,
) -> MatchResult:
    """Match predicted to true footprints one-to-one at IoU >= ``iou_threshold`` (SpaceNet F1).

    Every candidate pair (found with an STRtree on the truth) gets its IoU = area(P ∩ T) /
    area(P ∪ T). Pairs at or above the threshold are accepted greedily in order of
    decreasing IoU (ties: lower prediction index, then lower truth index); each prediction
    and each true polygon is used at most once. Accepted pairs are true positives, the
    remaining predictions false positives and the remaining truths false negatives.
    Unlike SpaceNet's reference code, which visits predictions in file order, the global
    greedy order makes the result independent of the order of the inputs up to exact ties.

    Each input row is one object: a MultiPolygon is one footprint. Invalid geometries are
    repaired with ``shapely.make_valid`` (method ``structure``); non-areal parts are dropped.
    A prediction that has no area after repair can match nothing and counts as a false
    positive; true polygons without area, and polygons of either side smaller than
    ``min_area`` (SpaceNet used 20 px), are ignored. Null geometries are ignored.

    Empty inputs follow the module convention: both empty gives NaN precision/recall/F1
    (nothing to score); only truth empty gives precision 0, recall 0, F1 0 when there are
    predictions, and vice versa.

    Geometries must be in one CRS — a projected one for ``min_area`` to be in m². Cost: one
    intersection per candidate pair (pairs whose envelopes intersect), O(n log n) otherwise.

    Args:
        pred: predicted polygons (GeoSeries, GeoDataFrame, or sequence of shapely geometries).
        truth: true polygons, same kinds.
        iou_threshold: minimum IoU of a match, in (0, 1]. A tolerance of 1e-9 absorbs
            floating rounding (an exact 0.5 computed as 0.4999999999 still matches).
        min_area: area below which polygons are ignored, in CRS units squared.
    """
    if not (0.0 < iou_threshold <= 1.0):
        raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if min_area < 0:
        raise ConfigError(f"min_area must be >= 0, got {min_area}")
    _check_same_crs(pred, truth, "building_f1")
    p_raw = _geometry_array(pred, "predictions")
    t_raw = _geometry_array(truth, "truth")
    p_null = shapely.is_missing(p_raw)
    t_null = shapely.is_missing(t_raw)
    p = _polygonal(p_raw)
    t = _polygonal(t_raw)
    p_area = shapely.area(p)
    t_area = shapely.area(t)
    # Predictions: nulls and those below min_area are ignored; zero-area ones stay (as FP).
    p_keep = ~p_null & ~((p_area < min_area) & (p_area > 0))
    t_keep = ~t_null & (t_area > 0) & (t_area >= min_area)
    p_idx = np.flatnonzero(p_keep)
    t_idx = np.flatnonzero(t_keep)
    n_pred, n_truth = len(p_idx), len(t_idx)
    if n_pred == 0 or n_truth == 0:
        return MatchResult(tp=0, fp=n_pred, fn=n_truth, iou_threshold=iou_threshold)

    tree = shapely.STRtree(t[t_idx])
    qi, qt = tree.query(p[p_idx], predicate="intersects")
    pi, ti = p_idx[qi], t_idx[qt]
    inter = shapely.area(shapely.intersection(p[pi], t[ti]))
    union = p_area[pi] + t_area[ti] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    ok = iou >= iou_threshold - _EPS_IOU
    pi, ti, iou = pi[ok], ti[ok], iou[ok]
    order = np.lexsort((ti, pi, -iou))
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for k in order:
        a, b = int(pi[k]), int(ti[k])
        if a in used_p or b in used_t:
            continue
        used_p.add(a)
        used_t.add(b)
        matches.append((a, b, float(iou[k])))
    tp = len(matches)
    return MatchResult(
        tp=tp,
        fp=n_pred - tp,
        fn=n_truth - tp,
        iou_sum=float(sum(m[2] for m in matches)),
        iou_threshold=iou_threshold,
        matches=tuple(matches),
    )


# ---------------------------------------------------------------------------------------
# 2. Pixels: confusion counts, whole arrays or window by window
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelCounts:
    """Confusion counts of one class over some pixels; add them to accumulate windows/scenes."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def _empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    @property
    def iou(self) -> float:
        """TP / (TP + FP + FN) (Jaccard); NaN when the class is absent from both masks."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, self._empty)

    @property
    def dice(self) -> float:
        """2·TP / (2·TP + FP + FN) (= pixel F1)."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self._empty)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, self._empty)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn, self._empty)

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, "iou": self.iou,
                "dice": self.dice, "precision": self.precision, "recall": self.recall}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PixelCounts:
        return cls(int(d["tp"]), int(d["fp"]), int(d["fn"]), int(d["tn"]))


def pixel_counts(pred_mask: np.ndarray, true_mask: np.ndarray, valid: np.ndarray | None = None) -> PixelCounts:
    """Confusion counts of two boolean masks, over the pixels where ``valid`` is true.

    Cost: a few passes over the arrays, no copies larger than one boolean mask.
    """
    p = np.asarray(pred_mask)
    t = np.asarray(true_mask)
    if p.shape != t.shape:
        raise ConfigError(f"prediction mask has shape {p.shape} but truth mask has shape {t.shape}; they must match")
    p = p.astype(bool, copy=False)
    t = t.astype(bool, copy=False)
    if valid is None:
        n = p.size
    else:
        v = np.asarray(valid)
        if v.shape != p.shape:
            raise ConfigError(f"valid mask has shape {v.shape} but the masks have shape {p.shape}")
        v = v.astype(bool, copy=False)
        p = p & v
        t = t & v
        n = int(np.count_nonzero(v))
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return PixelCounts(tp=tp, fp=fp, fn=fn, tn=n - tp - fp - fn)


def pixel_metrics(
    pred_mask: np.ndarray,
    true_mask: np.ndarray,
    valid: np.ndarray | None = None,
    classes: Mapping[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-class IoU, Dice, precision, recall (and the counts) of two masks.

    Boolean masks are one class, reported as ``"foreground"``. Integer label masks are
    compared class by class (one-vs-rest); ``classes`` maps names to label values and
    defaults to every non-zero value present in either mask (named by its value).

    Example: ``pixel_metrics(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))`` gives
    ``{"1": {"tp": 1, "fp": 1, "fn": 1, "tn": 1, "iou": 1/3, "dice": 0.5, ...}}``.
    """
    p = np.asarray(pred_mask)
    t = np.asarray(true_mask)
    if p.shape != t.shape:
        raise ConfigError(f"prediction mask has shape {p.shape} but truth mask has shape {t.shape}; they must match")
    if p.dtype == bool and t.dtype == bool and classes is None:
        return {"foreground": pixel_counts(p, t, valid).to_dict()}
    if classes is None:
        values = np.union1d(np.unique(p), np.unique(t))
        classes = {str(int(v)): int(v) for v in values if v != 0}
    return {name: pixel_counts(p == value, t == value, valid).to_dict() for name, value in classes.items()}


@dataclass(frozen=True)
class RasterGrid:
    """A pixel grid: CRS, affine transform and size, optionally with a raster marking valid pixels.

    Attributes:
        crs: the grid's CRS (any: geometries are reprojected to it before being burned).
        transform: pixel -> CRS coordinates.
        width, height: size in pixels.
        mask_path: a raster on this grid whose dataset mask (nodata / alpha / mask band)
            marks the pixels to count; ``None`` counts every pixel.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int
    mask_path: str | None = None

    @classmethod
    def from_raster(cls, path: str | Path, *, use_mask: bool = True) -> RasterGrid:
        """The grid of a GeoTIFF; its nodata/mask marks valid pixels when ``use_mask``."""
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"raster {p} does not exist")
        try:
            with rasterio.open(p) as src:
                if src.crs is None:
                    raise SceneReadError(p, "has no CRS; pixel metrics need a georeferenced grid")
                return cls(CRS.from_user_input(src.crs.to_wkt()), src.transform, src.width, src.height,
                           str(p) if use_mask else None)
        except rasterio.errors.RasterioIOError as exc:
            raise SceneReadError(p, f"cannot be opened as a raster: {exc}") from None

    @classmethod
    def from_bounds(cls, bounds: tuple[float, float, float, float], pixel_size: float, crs: Any) -> RasterGrid:
        """A north-up grid covering ``bounds`` with square pixels, origin snapped to the pixel size."""
        if not pixel_size > 0:
            raise ConfigError(f"pixel size must be > 0, got {pixel_size}")
        minx, miny, maxx, maxy = bounds
        x0 = math.floor(minx / pixel_size) * pixel_size
        y1 = math.ceil(maxy / pixel_size) * pixel_size
        width = max(1, math.ceil((maxx - x0) / pixel_size))
        height = max(1, math.ceil((y1 - miny) / pixel_size))
        return cls(CRS.from_user_input(crs), Affine(pixel_size, 0, x0, 0, -pixel_size, y1), width, height)

    @property
    def footprint(self) -> shapely.Polygon:
        """The grid's outline as a polygon in its CRS (exact also for rotated transforms)."""
        t = self.transform
        corners = [t @ (0, 0), t @ (self.width, 0), t @ (self.width, self.height), t @ (0, self.height)]
        return shapely.Polygon(corners)

    def windows(self, size: int) -> Iterator[rasterio.windows.Window]:
        """Windows of at most ``size``×``size`` pixels tiling the grid row by row."""
        if size < 1:
            raise ConfigError(f"window size must be >= 1 pixel, got {size}")
        for row in range(0, self.height, size):
            for col in range(0, self.width, size):
                yield rasterio.windows.Window(col, row, min(size, self.width - col), min(size, self.height - row))


def _burn(geoms: np.ndarray, tree: shapely.STRtree | None, window_box: shapely.Polygon,
          shape: tuple[int, int], transform: Affine) -> np.ndarray:
    """Boolean mask of the geometries (pixel centres inside) on one window."""
    if tree is None:
        return np.zeros(shape, dtype=bool)
    hit = tree.query(window_box)
    if len(hit) == 0:
        return np.zeros(shape, dtype=bool)
    out = rasterio.features.rasterize(((g, 1) for g in geoms[hit]), out_shape=shape, transform=transform,
                                      fill=0, dtype="uint8")
    return out.astype(bool)


def windowed_pixel_counts(
    layers: Mapping[str, tuple[GeometryInput, GeometryInput]],
    grid: RasterGrid,
    *,
    window_size: int = 1024,
) -> dict[str, PixelCounts]:
    """Pixel confusion counts per class, burning ``(pred, truth)`` polygons window by window.

    Geometries must be polygonal and in ``grid.crs``. A pixel belongs to a polygon when its
    centre is inside (GDAL's default rasterization). The result is identical to burning the
    whole grid at once, because each window uses its own affine transform on the same grid.

    Cost: peak memory ≈ a few ``window_size``² boolean arrays per class; one STRtree query
    and one rasterization per window and layer; one read of the mask raster per window.
    """
    prepared: dict[str, tuple[np.ndarray, shapely.STRtree | None, np.ndarray, shapely.STRtree | None]] = {}
    for name, (pred, truth) in layers.items():
        for what, g in (("predictions", pred), ("truth", truth)):
            g_crs = getattr(g, "crs", None)
            if g_crs is not None and CRS.from_user_input(g_crs) != grid.crs:
                raise ConfigError(f"{name} {what} are in {CRS.from_user_input(g_crs).to_string()} but the grid is in "
                                  f"{grid.crs.to_string()}; reproject them to the grid's CRS first")
        pa = _polygonal(_geometry_array(pred, f"{name} predictions"))
        ta = _polygonal(_geometry_array(truth, f"{name} truth"))
        pa = pa[~shapely.is_empty(pa)]
        ta = ta[~shapely.is_empty(ta)]
        prepared[name] = (pa, shapely.STRtree(pa) if len(pa) else None, ta, shapely.STRtree(ta) if len(ta) else None)
    totals = {name: PixelCounts() for name in layers}
    src = None
    try:
        if grid.mask_path is not None:
            try:
                src = rasterio.open(grid.mask_path)
            except rasterio.errors.RasterioIOError as exc:
                raise SceneReadError(grid.mask_path, f"cannot be opened to read its valid-pixel mask: {exc}") from None
        for win in grid.windows(window_size):
            shape = (int(win.height), int(win.width))
            wt = grid.transform @ Affine.translation(win.col_off, win.row_off)
            box = shapely.Polygon([wt @ (0, 0), wt @ (shape[1], 0), wt @ (shape[1], shape[0]), wt @ (0, shape[0])])
            valid = None
            if src is not None:
                try:
                    valid = src.dataset_mask(window=win) > 0
                except rasterio.errors.RasterioIOError as exc:
                    raise SceneReadError(grid.mask_path, f"reading the mask of window {win} failed: {exc}") from None
            for name, (pa, ptree, ta, ttree) in prepared.items():
                pm = _burn(pa, ptree, box, shape, wt)
                tm = _burn(ta, ttree, box, shape, wt)
                totals[name] = totals[name] + pixel_counts(pm, tm, valid)
    finally:
        if src is not None:
            src.close()
    return totals


# ---------------------------------------------------------------------------------------
# 3. Roads: skeleton graph, APLS-like path similarity, centerline completeness
# ---------------------------------------------------------------------------------------


def _neighbours(img: np.ndarray) -> list[np.ndarray]:
    """The 8 neighbours of the interior of a padded image, clockwise from north (P2..P9)."""
    return [
        img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],
        img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2],
    ]


def skeletonize(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide skeleton of a boolean mask (Zhang & Suen 1984 thinning).

    Each iteration removes, in two sub-steps, the boundary pixels whose removal keeps the
    shape 8-connected (2–6 neighbours, exactly one 0→1 transition around the pixel, and the
    sub-step's north/east or south/west conditions). Connectivity and topology are preserved;
    the result may keep small staircase triangles and short spurs at irregular boundaries.
    Cost: ≈ 20 array operations per iteration over the bounding box of the mask; the number
    of iterations is half the widest part in pixels.
    """
    m = np.asarray(mask).astype(bool)
    out = np.zeros_like(m)
    rows, cols = np.nonzero(m)
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    img = np.pad(m[r0:r1, c0:c1], 1)
    core = img[1:-1, 1:-1]
    while True:
        changed = False
        for step in (0, 1):
            p2, p3, p4, p5, p6, p7, p8, p9 = _neighbours(img)
            ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
            b = sum(x.astype(np.uint8) for x in ring[:8])
            a = sum((~ring[k] & ring[k + 1]).astype(np.uint8) for k in range(8))
            if step == 0:
                c = ~(p2 & p4 & p6) & ~(p4 & p6 & p8)
            else:
                c = ~(p2 & p4 & p8) & ~(p2 & p6 & p8)
            delete = core & (b >= 2) & (b <= 6) & (a == 1) & c
            if delete.any():
                core[delete] = False
                changed = True
        if not changed:
            break
    out[r0:r1, c0:c1] = core
    return out


@dataclass(frozen=True)
class _SkeletonGraph:
    """Skeleton pixels as graph nodes; 8-neighbours joined by edges of 1 or √2 pixels."""

    rc: np.ndarray  # (N, 2) row, col of each node
    graph: sparse.csr_matrix

    @property
    def n(self) -> int:
        return len(self.rc)


def _skeleton_graph(skel: np.ndarray) -> _SkeletonGraph:
    rows, cols = np.nonzero(skel)
    n = len(rows)
    index = np.full(skel.shape, -1, dtype=np.int64)
    index[rows, cols] = np.arange(n)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    w: list[np.ndarray] = []
    h, wd = skel.shape
    for dr, dc, length in ((0, 1, 1.0), (1, 0, 1.0), (1, 1, math.sqrt(2)), (1, -1, math.sqrt(2))):
        r2, c2 = rows + dr, cols + dc
        inside = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < wd)
        a = np.flatnonzero(inside)
        b = index[r2[inside], c2[inside]]
        ok = b >= 0
        src.append(a[ok])
        dst.append(b[ok])
        w.append(np.full(int(ok.sum()), length))
    s = np.concatenate(src) if src else np.empty(0, np.int64)
    d = np.concatenate(dst) if dst else np.empty(0, np.int64)
    ww = np.concatenate(w) if w else np.empty(0)
    g = sparse.coo_matrix((ww, (s, d)), shape=(n, n)).tocsr()
    return _SkeletonGraph(np.column_stack([rows, cols]), g)


def _control_points(sk: _SkeletonGraph, spacing_px: float, max_points: int) -> np.ndarray:
    """Node indices: per square cell of ``spacing_px``, the skeleton pixel nearest the cell centre.

    Deterministic; at most ``max_points`` (an evenly spread subset of the cells, in
    row-major cell order, when there are more).
    """
    if sk.n == 0:
        return np.empty(0, dtype=np.int64)
    s = max(spacing_px, 1.0)
    cell = np.floor(sk.rc / s).astype(np.int64)
    centre = (cell + 0.5) * s - 0.5
    dist = np.hypot(*(sk.rc - centre).T)
    key = cell[:, 0] * (int(cell[:, 1].max()) + 1) + cell[:, 1]
    order = np.lexsort((np.arange(sk.n), dist, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    pts = order[first]
    if len(pts) > max_points:
        pts = pts[np.unique(np.linspace(0, len(pts) - 1, max_points).round().astype(np.int64))]
    return pts


def _path_lengths(sk: _SkeletonGraph, nodes: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Shortest-path lengths (pixels) between ``nodes`` on the skeleton; inf when disconnected.

    Cost: one Dijkstra per node, ``chunk`` × N floats in memory at a time.
    """
    k = len(nodes)
    out = np.full((k, k), np.inf)
    for i in range(0, k, chunk):
        d = dijkstra(sk.graph, directed=False, indices=nodes[i : i + chunk])
        out[i : i + chunk] = d[:, nodes]
    return out


def _apls_direction(src: _SkeletonGraph, src_pts: np.ndarray, dst: _SkeletonGraph,
                    dst_tree: cKDTree | None, snap_px: float) -> tuple[float, int]:
    """APLS-style score of ``dst`` seen from ``src``: mean over connected pairs of 1 - min(1, |ΔL|/L)."""
    if len(src_pts) < 2:
        return math.nan, 0
    ls = _path_lengths(src, src_pts)
    iu = np.triu_indices(len(src_pts), k=1)
    l_src = ls[iu]
    pair_ok = np.isfinite(l_src) & (l_src > 0)
    if not pair_ok.any():
        return math.nan, 0
    if dst_tree is None:
        return 0.0, int(pair_ok.sum())
    dist, snapped = dst_tree.query(src.rc[src_pts].astype(float), distance_upper_bound=snap_px + 1e-9)
    found = np.isfinite(dist)
    ld = np.full((len(src_pts), len(src_pts)), np.inf)
    if found.any():
        uniq, inv = np.unique(snapped[found], return_inverse=True)
        lu = _path_lengths(dst, uniq)
        fi = np.flatnonzero(found)
        ld[np.ix_(fi, fi)] = lu[np.ix_(inv, inv)]
    l_dst = ld[iu]
    with np.errstate(invalid="ignore"):
        rel = np.abs(l_src - l_dst) / np.where(l_src > 0, l_src, 1.0)
        penalty = np.where(np.isfinite(l_dst), np.minimum(1.0, rel), 1.0)
    return float(1.0 - penalty[pair_ok].mean()), int(pair_ok.sum())


@dataclass(frozen=True)
class TopologyParams:
    """Settings of :func:`road_topology` (all lengths in metres of the metric CRS).

    Attributes:
        pixel_m: pixel size of the raster on which road surfaces are skeletonized.
        spacing_m: side of the grid cells that place control points along the network.
        snap_m: how far a control point may be moved onto the other network, and the
            buffer of centerline completeness/correctness; ``None``: half the road width.
        max_points: at most this many control points per network (Dijkstra runs per point).
        max_pixels: refuse rasters larger than this (raise ``pixel_m`` instead).
    """

    pixel_m: float = 1.0
    spacing_m: float = 20.0
    snap_m: float | None = None
    max_points: int = 200
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not self.pixel_m > 0:
            raise ConfigError(f"topology pixel size must be > 0 m, got {self.pixel_m}")
        if not self.spacing_m > 0:
            raise ConfigError(f"topology control-point spacing must be > 0 m, got {self.spacing_m}")
        if self.snap_m is not None and not self.snap_m > 0:
            raise ConfigError(f"topology snap distance must be > 0 m, got {self.snap_m}")
        if self.max_points < 2:
            raise ConfigError(f"topology max_points must be >= 2, got {self.max_points}")


def _road_surfaces(geoms: GeometryInput, road_width_m: float) -> np.ndarray:
    """Polygons as they are; lines buffered by half the road width (round caps and joins)."""
    arr = _geometry_array(geoms, "roads")
    arr = arr[~shapely.is_missing(arr)]
    if len(arr) == 0:
        return arr
    types = shapely.get_type_id(arr)
    linear = np.isin(types, (1, 2, 5))
    out = arr.copy()
    if linear.any():
        out[linear] = shapely.buffer(arr[linear], road_width_m / 2.0)
    return _polygonal(out)


def road_topology(
    pred_roads: GeometryInput,
    true_roads: GeometryInput,
    *,
    road_width_m: float = 6.0,
    params: TopologyParams | None = None,
) -> dict[str, Any]:
    """Topology-aware road scores: an APLS-like path-length similarity and centerline completeness.

    What it measures. Both networks (polygons, or centerlines buffered by ``road_width_m``)
    are burned on one grid of ``params.pixel_m`` and thinned to one-pixel skeletons
    (:func:`skeletonize`); each skeleton becomes a graph whose nodes are pixels and whose
    edges join 8-neighbours (length 1 or √2 pixels). Control points are placed along each
    network, one per ``spacing_m`` cell (the skeleton pixel nearest the cell centre).

    * ``apls`` (simplified APLS, after Van Etten et al. 2018, SpaceNet 3): for every pair of
      control points of the truth that is connected in the truth, with path length L, the
      two points are snapped to the nearest prediction pixel within ``snap_m``; the pair
      scores ``1 - min(1, |L - L'| / L)`` where L' is the prediction's path length between
      the snapped points (0 when a point does not snap or the snapped points are not
      connected). ``apls_truth_to_pred`` is the mean over pairs (it punishes missing roads
      and cuts); ``apls_pred_to_truth`` is the same with the roles swapped (it punishes
      spurious roads and false shortcuts); ``apls`` is their harmonic mean. When only one
      direction has pairs, ``apls`` is that direction. 1 for identical networks; a road cut
      in two drops it because pairs across the gap have no path.
    * ``completeness`` / ``correctness`` (Wiedemann 1998): the share of truth skeleton
      pixels within ``snap_m`` of the predicted skeleton, and vice versa; ``centerline_f1``
      is their harmonic mean. Lengths are counted in skeleton pixels × ``pixel_m``.

    What it ignores: junction positions are not control points (the regular sampling covers
    them only approximately), the raster skeleton can add short spurs at ragged edges,
    roads wider than the grid can resolve are thinned to their medial axis, road
    categories/speeds are ignored, and paths are lengths on the skeleton (pixel geometry,
    error ≤ ≈8 % for diagonal staircases on both sides alike).

    Cost: one raster of the union bounding box of both networks at ``pixel_m`` (bool), the
    thinning iterations over it, and one Dijkstra per control point (≤ ``max_points`` per
    side) over the skeleton pixels. Geometries must be in one projected CRS in metres.

    Returns:
        ``apls``, ``apls_truth_to_pred``, ``apls_pred_to_truth``, the number of pairs used
        each way, ``completeness``, ``correctness``, ``centerline_f1``, ``truth_length_m``,
        ``pred_length_m``, ``matched_truth_length_m``, ``matched_pred_length_m``.
        Both networks empty: every score NaN.
    """
    if not road_width_m > 0:
        raise ConfigError(f"road width must be > 0 m, got {road_width_m}")
    prm = params or TopologyParams()
    _check_same_crs(pred_roads, true_roads, "road_topology")
    pa = _road_surfaces(pred_roads, road_width_m)
    ta = _road_surfaces(true_roads, road_width_m)
    pa = pa[~shapely.is_empty(pa)]
    ta = ta[~shapely.is_empty(ta)]
    px = prm.pixel_m
    snap_px = (prm.snap_m if prm.snap_m is not None else road_width_m / 2.0) / px
    spacing_px = prm.spacing_m / px

    both = np.concatenate([pa, ta])
    if len(both):
        minx, miny, maxx, maxy = shapely.total_bounds(both)
        margin = 2 * px
        # The CRS of this grid is never used: geometries are already in the caller's metric CRS.
        crs = getattr(true_roads, "crs", None) or getattr(pred_roads, "crs", None) or "EPSG:3857"
        grid = RasterGrid.from_bounds((minx - margin, miny - margin, maxx + margin, maxy + margin), px, crs)
        if grid.width * grid.height > prm.max_pixels:
            raise ConfigError(
                f"road topology raster would be {grid.width}×{grid.height} px at {px} m; "
                f"this exceeds {prm.max_pixels} px — use a larger topology pixel size"
            )
        shape = (grid.height, grid.width)

        def burn(g: np.ndarray) -> np.ndarray:
            if len(g) == 0:
                return np.zeros(shape, dtype=bool)
            return rasterio.features.rasterize(((x, 1) for x in g), out_shape=shape, transform=grid.transform,
                                               fill=0, dtype="uint8").astype(bool)

        t_sk = _skeleton_graph(skeletonize(burn(ta)))
        p_sk = _skeleton_graph(skeletonize(burn(pa)))
    else:
        t_sk = p_sk = _skeleton_graph(np.zeros((1, 1), dtype=bool))

    t_tree = cKDTree(t_sk.rc.astype(float)) if t_sk.n else None
    p_tree = cKDTree(p_sk.rc.astype(float)) if p_sk.n else None
    t_pts = _control_points(t_sk, spacing_px, prm.max_points)
    p_pts = _control_points(p_sk, spacing_px, prm.max_points)
    a_tp, n_tp = _apls_direction(t_sk, t_pts, p_sk, p_tree, snap_px)
    a_pt, n_pt = _apls_direction(p_sk, p_pts, t_sk, t_tree, snap_px)
    if math.isnan(a_tp) and math.isnan(a_pt):
        apls = math.nan if (t_sk.n == 0 and p_sk.n == 0) or (t_sk.n and p_sk.n) else 0.0
    elif math.isnan(a_tp):
        apls = a_pt
    elif math.isnan(a_pt):
        apls = a_tp
    else:
        apls = 0.0 if a_tp + a_pt == 0 else 2 * a_tp * a_pt / (a_tp + a_pt)

    def within(a: _SkeletonGraph, tree: cKDTree | None) -> int:
        if a.n == 0 or tree is None:
            return 0
        d, _ = tree.query(a.rc.astype(float), distance_upper_bound=snap_px + 1e-9)
        return int(np.isfinite(d).sum())

    t_hit = within(t_sk, p_tree)
    p_hit = within(p_sk, t_tree)
    nothing = t_sk.n == 0 and p_sk.n == 0
    completeness = _ratio(t_hit, t_sk.n, nothing)
    correctness = _ratio(p_hit, p_sk.n, nothing)
    cl_f1 = _ratio(2 * completeness * correctness, completeness + correctness, nothing)
    return {
        "apls": apls,
        "apls_truth_to_pred": a_tp,
        "apls_pred_to_truth": a_pt,
        "pairs_truth": n_tp,
        "pairs_pred": n_pt,
        "completeness": completeness,
        "correctness": correctness,
        "centerline_f1": cl_f1,
        "truth_length_m": t_sk.n * px,
        "pred_length_m": p_sk.n * px,
        "matched_truth_length_m": t_hit * px,
        "matched_pred_length_m": p_hit * px,
        "road_width_m": road_width_m,
        "pixel_m": px,
        "snap_m": snap_px * px,
        "spacing_m": prm.spacing_m,
    }


# ---------------------------------------------------------------------------------------
# 4. Reading vector data in any format and CRS
# ---------------------------------------------------------------------------------------


@dataclass
class SceneVectors:
    """The labelled layers of one scene; ``None`` means "this class is not labelled here".

    An empty GeoSeries means "labelled, and there is none" (every prediction is then a
    false positive), while ``None`` keeps the class out of the scores.
    """

    buildings: gpd.GeoSeries | None = None
    roads: gpd.GeoSeries | None = None  # road surfaces (polygons)
    road_centerlines: gpd.GeoSeries | None = None  # lines
    sources: list[str] = field(default_factory=list)

    def layers(self) -> dict[str, gpd.GeoSeries]:
        return {k: v for k, v in (("buildings", self.buildings), ("roads", self.roads),
                                  ("road_centerlines", self.road_centerlines)) if v is not None}

    def merged(self, other: SceneVectors, crs: CRS) -> SceneVectors:
        """Both scenes' layers reprojected to ``crs`` and concatenated role by role."""
        out = SceneVectors(sources=self.sources + other.sources)
        for role in ("buildings", "roads", "road_centerlines"):
            parts = [s for s in (getattr(self, role), getattr(other, role)) if s is not None]
            if parts:
                what = f"{role} of {', '.join(self.sources + other.sources) or 'the data'}"
                setattr(out, role, _concat([_to_crs(s, crs, what) for s in parts], crs))
        return out

    def to_crs(self, crs: CRS) -> SceneVectors:
        out = SceneVectors(sources=list(self.sources))
        for role, s in self.layers().items():
            setattr(out, role, _to_crs(s, crs, f"{role} of {', '.join(self.sources) or 'the data'}"))
        return out

    def has_roads(self) -> bool:
        return self.roads is not None or self.road_centerlines is not None


def _concat(parts: list[gpd.GeoSeries], crs: CRS) -> gpd.GeoSeries:
    vals = [np.asarray(p.values, dtype=object) for p in parts]
    return gpd.GeoSeries(np.concatenate(vals) if vals else [], crs=crs)


def _to_crs(s: gpd.GeoSeries, crs: CRS, what: str) -> gpd.GeoSeries:
    if s.crs is None:
        if len(s) == 0:
            return gpd.GeoSeries([], crs=crs)
        raise ConfigError(f"{what} have no CRS; write the file with a CRS (GeoJSON is WGS84 by definition)")
    return s if CRS.from_user_input(s.crs) == crs else s.to_crs(crs)


def _role_from_name(name: str) -> Role | None:
    """``..._buildings`` -> buildings, ``..._roads`` -> roads, ``..._road_centerlines`` -> centerlines."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    if not tokens:
        return None
    last = tokens[-1]
    if last in ("centerlines", "centrelines", "centerline", "centreline"):
        return "road_centerlines"
    if last in ("roads", "road"):
        return "roads"
    if last in ("buildings", "building"):
        return "buildings"
    return None


def _split_by_geometry(s: gpd.GeoSeries, role: Role | None, source: str) -> SceneVectors:
    """Assign the polygons and lines of one selection to buildings / road surfaces / centerlines.

    ``role`` comes from a layer or file name (or a class value); ``None`` means "decide by
    geometry": polygons are buildings, lines road centerlines. A selection without any
    feature still marks its role as labelled (an empty layer), except that an unnamed empty
    layer counts as buildings.
    """
    types = s.geom_type.fillna("")
    is_poly = types.isin(["Polygon", "MultiPolygon"])
    is_line = types.isin(["LineString", "MultiLineString", "LinearRing"])
    other = int((~is_poly & ~is_line & (types != "")).sum())
    if other:
        log.warning("%s: %d features are neither polygons nor lines and are ignored", source, other)
    poly, line = s[is_poly.to_numpy()], s[is_line.to_numpy()]
    out = SceneVectors(sources=[source])
    if role == "buildings":
        out.buildings = poly
        if len(line):
            log.warning("%s: %d line features in a building selection are ignored", source, len(line))
    elif role == "roads":
        out.roads = poly if len(poly) or not len(line) else None
        out.road_centerlines = line if len(line) else None
    elif role == "road_centerlines":
        out.road_centerlines = line
        out.roads = poly if len(poly) else None
    else:
        out.buildings = poly if len(poly) or not len(line) else None
        out.road_centerlines = line if len(line) else None
    return out


def _read_layer(path: Path, layer: str | None) -> gpd.GeoDataFrame:
    try:
        return gpd.read_file(path, layer=layer, engine="pyogrio")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise SceneReadError(path, f"layer {layer!r} cannot be read: {exc}") from None
    except Exception as exc:  # GDAL raises many types for corrupt files
        raise SceneReadError(path, f"cannot be read as a vector file: {exc}") from None


def _select_classes(df: gpd.GeoDataFrame, field_name: str, classes: Mapping[str, str], source: str,
                    explicit: bool) -> SceneVectors:
    """Rows whose ``field_name`` equals a class value (case-insensitive) become that class.

    A class whose value occurs nowhere in the layer is "not labelled" (``None``) rather than
    "labelled and empty", so that a building-only file does not turn predicted roads into
    false positives.
    """
    if field_name not in df.columns:
        fields = ", ".join(str(c) for c in df.columns if c != df.geometry.name)
        raise ConfigError(f"{source}: no field {field_name!r}; its fields are {fields}")
    values = df[field_name].astype("string").str.strip().str.lower()
    out = SceneVectors(sources=[source])
    matched = 0
    for key, value in classes.items():
        hit = (values == str(value).strip().lower()).fillna(False).to_numpy(dtype=bool)
        matched += int(hit.sum())
        if not hit.any():
            log.info("%s: no feature has %s = %r; %s is not scored", source, field_name, value, key)
            continue
        part = _split_by_geometry(df.geometry[hit], "buildings" if key == "building" else "roads", source)
        if key == "building":
            out.buildings = part.buildings
        else:
            out.roads, out.road_centerlines = part.roads, part.road_centerlines
    if explicit and matched == 0 and len(df):
        present = sorted(map(str, df[field_name].dropna().unique()))[:20]
        wanted = ", ".join(f"{k}={v!r}" for k, v in classes.items())
        raise ConfigError(f"{source}: no feature has {field_name} in ({wanted}); values present: {', '.join(present)}")
    return out


def _normalise_classes(classes: Mapping[str, str] | None) -> dict[str, str]:
    c = dict(DEFAULT_CLASSES if classes is None else classes)
    unknown = set(c) - {"building", "road"}
    if unknown:
        raise ConfigError(f"classes keys must be 'building' and/or 'road', got {sorted(unknown)}")
    return c


def read_vectors(
    path: str | Path,
    *,
    layer: str | None = None,
    class_field: str | None = None,
    classes: Mapping[str, str] | None = None,
    require_field: bool = True,
) -> SceneVectors:
    """Read buildings, road surfaces and road centerlines of one scene from a file or folder.

    Which features are what, in order:

    1. A **folder** is one scene in geounet's output layout: ``buildings.geojson`` and
       ``roads.geojson`` (or ``polygons.gpkg`` when neither exists); a missing file means
       that class was not predicted (empty).
    2. With ``class_field``: rows of ``layer`` (or the only layer) whose field equals
       ``classes["building"]`` / ``classes["road"]`` (case-insensitive) are buildings / roads
       (road polygons are surfaces, road lines centerlines), e.g. ``Niveau_2`` = ``Building``.
    3. Without ``layer``, layers *named* ``buildings``, ``roads``, ``road_centerlines`` (or
       ending so, e.g. ``scene_roads``) are read by name — the layout of ``<stem>_truth.gpkg``.
    4. Otherwise ``layer`` (or the only layer) is one role given by its name or the file
       name (``<stem>_buildings.geojson``, ``<stem>_roads.geojson``); if neither names one, a
       text column ``class`` holding ``building``/``road`` splits the rows (geounet's own
       files), else polygons are buildings and lines road centerlines (e.g. a
       single-layer building GeoPackage with a misnamed layer, SpaceNet road centerlines).

    With ``require_field=False`` a ``class_field`` that the layer lacks is ignored (rule 2 is
    skipped) instead of being an error; evaluation reads prediction files this way, so one
    ``class_field`` serves a truth file and a prediction file of the same schema.

    Raises:
        ConfigError: the path does not exist, the layer or field is unknown, or a file with
            several unrecognised layers needs ``layer``.
        SceneReadError: the file exists but GDAL cannot read it.
    """
    p = Path(path)
    cls_map = _normalise_classes(classes)
    if not p.exists():
        raise ConfigError(f"{p} does not exist")
    if p.is_dir():
        found = [p / n for n in PRED_FILES if (p / n).exists()]
        if not found:
            if (p / PRED_FALLBACK).exists():
                return read_vectors(p / PRED_FALLBACK, classes=cls_map)
            raise ConfigError(
                f"{p} holds none of {', '.join(PRED_FILES)} or {PRED_FALLBACK}; expected one scene of "
                "geounet's output (OUT/<scene>/buildings.geojson, roads.geojson)"
            )
        parts = [read_vectors(f, classes=cls_map) for f in found]
        out = _merge_all(parts)
        # A geounet scene folder predicts both classes: a missing file means "none predicted".
        if out.buildings is None:
            out.buildings = gpd.GeoSeries([], crs="EPSG:4326")
        if out.roads is None and out.road_centerlines is None:
            out.roads = gpd.GeoSeries([], crs="EPSG:4326")
        return out

    try:
        info = pyogrio.list_layers(p)
    except Exception as exc:
        raise SceneReadError(p, f"cannot be read as a vector file: {exc}") from None
    names = [str(n) for n in info[:, 0]] if len(info) else []
    if not names:
        raise SceneReadError(p, "holds no vector layer")
    if layer is not None and layer not in names:
        raise ConfigError(f"{p} has no layer {layer!r}; its layers are {', '.join(names)}")

    if class_field is not None and not require_field:
        lyr = layer or (names[0] if len(names) == 1 else None)
        fields = pyogrio.read_info(p, layer=lyr)["fields"] if lyr is not None else []
        if class_field not in list(fields):
            class_field = None
    if class_field is not None:
        if layer is None and len(names) > 1:
            raise ConfigError(f"{p} has layers {', '.join(names)}; choose the one holding {class_field!r} with layer=")
        lyr = layer or names[0]
        df = _read_layer(p, lyr)
        return _select_classes(df, class_field, cls_map, f"{p}:{lyr}", explicit=True)

    if layer is None:
        named = {n: _role_from_name(n) for n in names}
        recognised = {n: r for n, r in named.items() if r is not None}
        if len(names) > 1 and recognised:
            return _merge_all([_split_by_geometry(_read_layer(p, n).geometry, r, f"{p}:{n}")
                               for n, r in recognised.items()])
        if len(names) > 1:
            raise ConfigError(
                f"{p} has layers {', '.join(names)} and none is named buildings/roads/road_centerlines; "
                "choose one with layer= (--truth-layer)"
            )
    lyr = layer or names[0]
    source = f"{p}:{lyr}" if len(names) > 1 or layer else str(p)
    return _classify_frame(_read_layer(p, lyr), _role_from_name(lyr) or _role_from_name(p.stem), source)


def _classify_frame(df: gpd.GeoDataFrame, role: Role | None, source: str) -> SceneVectors:
    """Rule 4 of :func:`read_vectors`: a named role, else geounet's ``class`` column, else geometry."""
    if role is None and "class" in df.columns:
        values = df["class"]
        if values.dtype == object or str(values.dtype).startswith("string"):
            lowered = {str(v).strip().lower() for v in values.dropna().unique()}
            if lowered & {"building", "road"}:
                return _select_classes(df, "class", {"building": "building", "road": "road"}, source, explicit=False)
    return _split_by_geometry(df.geometry, role, source)


def _read_any(src: str | Path | SceneVectors | gpd.GeoDataFrame | gpd.GeoSeries, what: str, **kw: Any) -> SceneVectors:
    if isinstance(src, SceneVectors):
        return src
    if isinstance(src, (gpd.GeoDataFrame, gpd.GeoSeries)):
        if src.crs is None and len(src):
            raise ConfigError(f"{what} in memory have no CRS; set one with .set_crs()")
        source = f"{what} (in memory)"
        if isinstance(src, gpd.GeoSeries):
            return _split_by_geometry(src, None, source)
        field_name = kw.get("class_field")
        if field_name is not None and (field_name in src.columns or kw.get("require_field", True)):
            return _select_classes(src, field_name, _normalise_classes(kw.get("classes")), source, explicit=True)
        return _classify_frame(src, None, source)
    return read_vectors(src, **kw)


def _read_many(srcs: Any, what: str, **kw: Any) -> SceneVectors:
    items = list(srcs) if isinstance(srcs, (list, tuple)) else [srcs]
    if not items:
        return SceneVectors(sources=[])
    return _merge_all([_read_any(s, what, **kw) for s in items])


def _merge_all(parts: Sequence[SceneVectors]) -> SceneVectors:
    """Merge the layers of several files of one scene (reprojected to the first file's CRS)."""
    if not parts:
        return SceneVectors(sources=[])
    crs = _first_crs(parts) or CRS.from_epsg(4326)
    out = SceneVectors(sources=[])
    for part in parts:
        out = out.merged(part, crs)
    return out


def _first_crs(scenes: Sequence[SceneVectors]) -> CRS | None:
    for sc in scenes:
        for s in sc.layers().values():
            if s.crs is not None and len(s):
                return CRS.from_user_input(s.crs)
    return None


def _is_metric(crs: CRS | None) -> bool:
    if crs is None or not crs.is_projected:
        return False
    units = {ax.unit_name.lower() for ax in crs.axis_info}
    return bool(units) and units <= {"metre", "meter", "m"}


def choose_metric_crs(*scenes: SceneVectors, raster_crs: CRS | None = None) -> CRS:
    """The CRS in which areas and IoU are computed: metres on a projected CRS.

    Order: the raster's CRS if it is projected in metres; else the first projected-in-metres
    CRS among the scenes' layers (truth first); else the UTM zone of the data (e.g. WGS84
    GeoJSON, or a CRS in US survey feet). Areas and lengths are then in m² and m.
    """
    if _is_metric(raster_crs):
        return raster_crs  # type: ignore[return-value]
    for sc in scenes:
        for s in sc.layers().values():
            if s.crs is not None and len(s) and _is_metric(CRS.from_user_input(s.crs)):
                return CRS.from_user_input(s.crs)
    for sc in scenes:
        for s in sc.layers().values():
            if s.crs is not None and len(s) and not s.is_empty.all():
                utm = s[~s.is_empty].estimate_utm_crs()
                return CRS.from_user_input(utm)
    if raster_crs is not None:
        return raster_crs if _is_metric(raster_crs) else CRS.from_epsg(3857)
    return CRS.from_epsg(3857)  # nothing to locate: any metric CRS will do for empty inputs


# ---------------------------------------------------------------------------------------
# 5. One scene, many scenes, a table
# ---------------------------------------------------------------------------------------

VectorSource = Union[str, Path, SceneVectors, gpd.GeoDataFrame, gpd.GeoSeries]


def _clip(s: gpd.GeoSeries | None, area: shapely.Geometry) -> gpd.GeoSeries | None:
    """The parts of ``s`` inside ``area`` (polygons stay polygonal); features outside are dropped."""
    if s is None or len(s) == 0:
        return s
    vals = np.asarray(s.values, dtype=object)
    vals = vals[~shapely.is_missing(vals)]
    areal = np.isin(shapely.get_type_id(vals), (3, 6))
    vals[areal] = _polygonal(vals[areal])
    hit = shapely.intersects(vals, area)
    vals, areal = vals[hit], areal[hit]
    clipped = shapely.intersection(vals, area)
    clipped[areal] = _polygonal(clipped[areal])
    return gpd.GeoSeries(clipped[~shapely.is_empty(clipped)], crs=s.crs)


def _surfaces_series(sc: SceneVectors, road_width_m: float, crs: CRS) -> gpd.GeoSeries | None:
    """Road surfaces: road polygons when there are any, else centerlines buffered to ``road_width_m``.

    ``None`` when the scene does not label roads at all.
    """
    if not sc.has_roads():
        return None
    if sc.roads is not None and len(sc.roads):
        src = sc.roads
    elif sc.road_centerlines is not None and len(sc.road_centerlines):
        src = sc.road_centerlines
    else:
        return gpd.GeoSeries([], crs=crs)
    return gpd.GeoSeries(_road_surfaces(src, road_width_m), crs=crs)


def evaluate_scene(
    pred: VectorSource | Sequence[VectorSource],
    truth: VectorSource | Sequence[VectorSource],
    *,
    raster: str | Path | RasterGrid | None = None,
    truth_layer: str | None = None,
    class_field: str | None = None,
    classes: Mapping[str, str] | None = None,
    pred_layer: str | None = None,
    road_width_m: float = 6.0,
    iou_threshold: float = 0.5,
    min_area_m2: float = 0.0,
    pixel_size_m: float | None = 0.5,
    window_size: int = 1024,
    topology: TopologyParams | None = TopologyParams(),
    scene: str | None = None,
) -> dict[str, Any]:
    """Evaluate one scene's predicted polygons against its truth; returns a JSON-ready dict.

    Steps: read both sides (:func:`read_vectors`; several files per side are merged) →
    pick a metric CRS (:func:`choose_metric_crs`) and reproject → clip both sides to the
    raster's footprint when a raster is given (predictions cannot exist outside it) →
    building F1 (:func:`building_f1`) → pixel counts for buildings and road surfaces on the
    raster's grid, or on a grid of ``pixel_size_m`` over the data when there is no raster
    (:func:`windowed_pixel_counts`; nodata pixels of the raster are not counted) → road
    topology (:func:`road_topology`).

    A class that the truth does not label (no layer, no matching class value) is not
    scored (``None``); a labelled class with no features is scored (predictions are FPs).
    Truth roads given as centerlines are buffered to ``road_width_m`` for pixel IoU and
    topology; road polygons are used as they are.

    Args:
        pred: geounet scene folder (``buildings.geojson``, ``roads.geojson``), vector
            file(s), :class:`SceneVectors` or GeoDataFrame.
        truth: vector file(s) or in-memory data, read with ``truth_layer``/``class_field``.
        raster: GeoTIFF (or :class:`RasterGrid`) defining the pixel grid and valid pixels.
        truth_layer: layer of the truth file; class_field/classes: class selection (e.g.
            ``class_field="Niveau_2"``, ``classes={"building": "Building", "road": "Road"}``),
            applied to prediction files too when they have that field.
        pred_layer: layer of a prediction file, if it has several.
        road_width_m: width of centerline roads, metres.
        iou_threshold: minimum IoU of a building match.
        min_area_m2: buildings smaller than this (after clipping) are ignored on both sides
            of the building F1 (pixel metrics count every pixel).
        pixel_size_m: grid pixel size without raster, metres; ``None`` skips pixel metrics then.
        window_size: pixels per side of the rasterization windows.
        topology: road topology settings; ``None`` skips it.
        scene: name reported in the result (default: the truth file's stem).
    """
    if not road_width_m > 0:
        raise ConfigError(f"road width must be > 0 m, got {road_width_m}")
    if min_area_m2 < 0:
        raise ConfigError(f"min_area_m2 must be >= 0, got {min_area_m2}")
    cls_map = _normalise_classes(classes)
    pv = _read_many(pred, "predictions", layer=pred_layer, class_field=class_field, classes=cls_map,
                    require_field=False)
    tv = _read_many(truth, "truth", layer=truth_layer, class_field=class_field, classes=cls_map)

    grid: RasterGrid | None
    if raster is None or isinstance(raster, RasterGrid):
        grid = raster
    else:
        grid = RasterGrid.from_raster(raster)
    crs = choose_metric_crs(tv, pv, raster_crs=grid.crs if grid else None)
    pv, tv = pv.to_crs(crs), tv.to_crs(crs)

    if grid is not None:
        # Densified so that the outline stays right after reprojection (e.g. a WGS84 raster).
        outline = shapely.segmentize(grid.footprint, grid.footprint.length / 256)
        fp = gpd.GeoSeries([outline], crs=grid.crs).to_crs(crs).iloc[0]
        for sc in (pv, tv):
            for role in ("buildings", "roads", "road_centerlines"):
                setattr(sc, role, _clip(getattr(sc, role), fp))

    result: dict[str, Any] = {
        "scene": scene or (_scene_stem(Path(tv.sources[0].rsplit(":", 1)[0])) if tv.sources else "scene"),
        "pred": pv.sources,
        "truth": tv.sources,
        "raster": str(raster) if isinstance(raster, (str, Path)) else None,
        "crs": crs.to_string(),
    }

    # Buildings
    if tv.buildings is not None:
        pb = pv.buildings if pv.buildings is not None else gpd.GeoSeries([], crs=crs)
        br = building_f1(pb, tv.buildings, iou_threshold, min_area=min_area_m2)
        result["buildings"] = br.to_dict()
    else:
        result["buildings"] = None

    # Road surfaces (metric CRS)
    t_roads = _surfaces_series(tv, road_width_m, crs)
    p_roads = _surfaces_series(pv, road_width_m, crs)
    if t_roads is not None and p_roads is None:
        p_roads = gpd.GeoSeries([], crs=crs)

    # Pixels
    pixel_grid = grid
    if pixel_grid is None and pixel_size_m is not None:
        layers_all = [s for s in (pv.buildings, tv.buildings, p_roads, t_roads) if s is not None and len(s)]
        if layers_all:
            bounds = shapely.total_bounds(np.concatenate([np.asarray(s.values, dtype=object) for s in layers_all]))
            pixel_grid = RasterGrid.from_bounds(tuple(bounds), pixel_size_m, crs)
    if pixel_grid is not None:
        layers: dict[str, tuple[Any, Any]] = {}
        if tv.buildings is not None:
            pb = pv.buildings if pv.buildings is not None else gpd.GeoSeries([], crs=crs)
            layers["building"] = (_to_crs(pb, pixel_grid.crs, "buildings"),
                                  _to_crs(tv.buildings, pixel_grid.crs, "buildings"))
        if t_roads is not None and p_roads is not None:
            layers["road"] = (_to_crs(p_roads, pixel_grid.crs, "roads"), _to_crs(t_roads, pixel_grid.crs, "roads"))
        counts = windowed_pixel_counts(layers, pixel_grid, window_size=window_size)
        result["pixels"] = {name: c.to_dict() for name, c in counts.items()}
        result["pixel_grid"] = {"crs": pixel_grid.crs.to_string(), "width": pixel_grid.width,
                                "height": pixel_grid.height, "transform": list(pixel_grid.transform)[:6]}
    else:
        result["pixels"] = None

    # Road topology
    if topology is not None and t_roads is not None and p_roads is not None:
        result["roads"] = road_topology(p_roads, t_roads, road_width_m=road_width_m, params=topology)
    else:
        result["roads"] = None
    return result


@dataclass(frozen=True)
class ScenePair:
    """Files of one scene to evaluate: predictions, truth and (optionally) its raster."""

    name: str
    pred: tuple[Path, ...]
    truth: tuple[Path, ...]
    raster: Path | None = None


def _scene_stem(path: Path) -> str:
    stem = path.stem if path.is_file() or path.suffix else path.name
    for suf in STEM_SUFFIXES:
        if stem.lower().endswith(suf):
            return stem[: -len(suf)]
    return stem


def _group_files(folder: Path) -> dict[str, list[Path]]:
    """Vector files grouped by scene stem. Where a ``<stem>_truth.gpkg`` exists it holds every
    class, so the per-class copies beside it (``<stem>_buildings.geojson``...) are not read
    again: reading both would count every true object twice."""
    groups: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in VECTOR_SUFFIXES:
            groups.setdefault(_scene_stem(f), []).append(f)
    for stem, files in groups.items():
        containers = [f for f in files if f.stem.endswith("_truth") and f.suffix.lower() == ".gpkg"]
        if containers:
            groups[stem] = containers
    return groups


def _is_scene_dir(p: Path) -> bool:
    return p.is_dir() and any((p / n).exists() for n in (*PRED_FILES, PRED_FALLBACK))


def _find_raster(stem: str, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        for suf in RASTER_SUFFIXES:
            cand = folder / f"{stem}{suf}"
            if cand.exists():
                return cand
    return None


def pair_scenes(
    pred: str | Path, truth: str | Path, raster: str | Path | None = None
) -> tuple[list[ScenePair], list[str]]:
    """Pair predictions with truth, by scene stem; returns the pairs and unmatched prediction stems.

    Layouts understood:

    * ``truth`` a file: one scene; ``pred`` a file or one geounet scene folder
      (``PRED/buildings.geojson``, ``roads.geojson``) or a run folder holding exactly one
      scene, or ``PRED/<stem>/`` matching the truth's stem.
    * ``truth`` a folder: files grouped by stem, where ``<stem>_truth.gpkg`` (layers
      ``buildings``, ``roads``, ``road_centerlines``), ``<stem>_buildings.geojson``,
      ``<stem>_roads.geojson``, ``<stem>_road_centerlines.geojson`` and ``<stem>.gpkg`` all
      belong to scene ``<stem>``. ``pred`` is then a geounet run folder
      ``PRED/<stem>/buildings.geojson, roads.geojson`` (or a folder of files grouped by stem
      like the truth).
    * ``raster``: a GeoTIFF (one scene only), a folder holding ``<stem>.tif``, or ``None``:
      ``<stem>.tif`` next to the truth file if present, else no raster.

    A truth scene without predictions is evaluated against empty predictions (every true
    object is missed), as SpaceNet scores a missing submission. Predictions without truth
    cannot be scored and are returned as unmatched.
    """
    pp, tp = Path(pred), Path(truth)
    rp = Path(raster) if raster is not None else None
    for label, p in (("predictions", pp), ("truth", tp), ("raster", rp)):
        if p is not None and not p.exists():
            raise ConfigError(f"{label} path {p} does not exist")
    if tp.is_file():
        stem = _scene_stem(tp)
        if pp.is_file() or _is_scene_dir(pp):
            pfiles: tuple[Path, ...] = (pp,)
        elif (pp / stem).is_dir():
            pfiles = (pp / stem,)
        else:
            subs = [d for d in sorted(pp.iterdir()) if _is_scene_dir(d)]
            groups = _group_files(pp)
            if len(subs) == 1 and not groups:
                pfiles = (subs[0],)
            elif stem in groups:
                pfiles = tuple(groups[stem])
            else:
                raise ConfigError(f"cannot find predictions of scene {stem!r} in {pp}: expected {pp}/{stem}/"
                                  f"{PRED_FILES[0]} or a single scene folder")
        ras = rp if rp is not None and rp.is_file() else _find_raster(stem, [rp] if rp is not None else [tp.parent])
        return [ScenePair(stem, pfiles, (tp,), ras)], []

    truth_groups = _group_files(tp)
    if not truth_groups:
        raise ConfigError(f"truth folder {tp} holds no vector files ({', '.join(VECTOR_SUFFIXES)})")
    if pp.is_file():
        raise ConfigError(f"truth {tp} is a folder of scenes, so predictions must be a folder too, not the file {pp}")
    if rp is not None and rp.is_file() and len(truth_groups) > 1:
        raise ConfigError(f"raster {rp} is one file but truth folder {tp} holds {len(truth_groups)} scenes; "
                          "pass a folder of <scene>.tif instead")
    pred_scenes: dict[str, tuple[Path, ...]] = {d.name: (d,) for d in sorted(pp.iterdir()) if _is_scene_dir(d)}
    for stem, files in _group_files(pp).items():
        pred_scenes.setdefault(stem, tuple(files))
    if _is_scene_dir(pp) and len(truth_groups) == 1:
        pred_scenes.setdefault(next(iter(truth_groups)), (pp,))
    pairs: list[ScenePair] = []
    for stem, tfiles in truth_groups.items():
        if rp is not None and rp.is_file():
            ras: Path | None = rp
        else:
            ras = _find_raster(stem, [rp] if rp is not None else [tp])
        pairs.append(ScenePair(stem, pred_scenes.get(stem, ()), tuple(tfiles), ras))
    if not any(p.pred for p in pairs):
        raise ConfigError(
            f"no prediction in {pp} matches a truth scene of {tp}: truth stems {sorted(truth_groups)[:5]}, "
            f"prediction scenes {sorted(pred_scenes)[:5]}; expected {pp}/<stem>/{PRED_FILES[0]}"
        )
    unmatched = sorted(set(pred_scenes) - set(truth_groups))
    return pairs, unmatched


def evaluate_many(
    pairs: Sequence[ScenePair],
    *,
    unmatched_predictions: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """Evaluate each scene with :func:`evaluate_scene` and micro-average over all of them.

    Totals: building TP/FP/FN and pixel TP/FP/FN/TN are summed over scenes and the ratios
    computed once from the sums; road completeness/correctness from summed lengths; APLS is
    the mean of the scenes where it is defined (a path metric does not add across scenes).
    A scene that cannot be read is recorded with its error and left out of the totals.
    ``options`` are passed to :func:`evaluate_scene`.
    """
    scenes: list[dict[str, Any]] = []
    for pair in pairs:
        try:
            preds: Any = list(pair.pred) if pair.pred else SceneVectors(
                buildings=gpd.GeoSeries([], crs="EPSG:4326"), roads=gpd.GeoSeries([], crs="EPSG:4326"))
            r = evaluate_scene(preds, list(pair.truth), raster=pair.raster, scene=pair.name, **options)
            if not pair.pred:
                r["missing_prediction"] = True
            scenes.append(r)
        except (SceneReadError, OSError) as exc:
            log.error("scene %s: %s", pair.name, exc)
            scenes.append({"scene": pair.name, "error": str(exc)})
    ok = [s for s in scenes if "error" not in s]
    total: dict[str, Any] = {"scene": "TOTAL", "n_scenes": len(ok)}
    b = [MatchResult.from_dict(s["buildings"]) for s in ok if s.get("buildings")]
    total["buildings"] = MatchResult.combine(b).to_dict() if b else None
    px: dict[str, PixelCounts] = {}
    for s in ok:
        for name, d in (s.get("pixels") or {}).items():
            px[name] = px.get(name, PixelCounts()) + PixelCounts.from_dict(d)
    total["pixels"] = {k: v.to_dict() for k, v in px.items()} if px else None
    roads = [s["roads"] for s in ok if s.get("roads")]
    if roads:
        apls = [r["apls"] for r in roads if r["apls"] is not None and not math.isnan(r["apls"])]
        tl = sum(r["truth_length_m"] for r in roads)
        pl = sum(r["pred_length_m"] for r in roads)
        tm = sum(r["matched_truth_length_m"] for r in roads)
        pm = sum(r["matched_pred_length_m"] for r in roads)
        nothing = tl == 0 and pl == 0
        comp, corr = _ratio(tm, tl, nothing), _ratio(pm, pl, nothing)
        total["roads"] = {
            "apls": float(np.mean(apls)) if apls else math.nan,
            "apls_scenes": len(apls),
            "completeness": comp,
            "correctness": corr,
            "centerline_f1": _ratio(2 * comp * corr, comp + corr, nothing),
            "truth_length_m": tl, "pred_length_m": pl,
            "matched_truth_length_m": tm, "matched_pred_length_m": pm,
        }
    else:
        total["roads"] = None
    return {"scenes": scenes, "total": total, "unmatched_predictions": list(unmatched_predictions),
            "failed": [s["scene"] for s in scenes if "error" in s]}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


_COLUMNS = ("scene", "TP", "FP", "FN", "prec", "recall", "F1", "mIoU", "px IoU bldg", "px IoU road",
            "APLS", "compl", "corr")


def _row(r: Mapping[str, Any]) -> list[str]:
    if "error" in r:
        return [str(r["scene"]), "error: " + str(r["error"])[:60]] + [""] * (len(_COLUMNS) - 2)
    b = r.get("buildings") or {}
    px = r.get("pixels") or {}
    rd = r.get("roads") or {}
    return [
        str(r.get("scene", "")) + (" (no pred)" if r.get("missing_prediction") else ""),
        _fmt(b.get("tp")), _fmt(b.get("fp")), _fmt(b.get("fn")),
        _fmt(b.get("precision")), _fmt(b.get("recall")), _fmt(b.get("f1")), _fmt(b.get("mean_iou")),
        _fmt((px.get("building") or {}).get("iou")), _fmt((px.get("road") or {}).get("iou")),
        _fmt(rd.get("apls")), _fmt(rd.get("completeness")), _fmt(rd.get("correctness")),
    ]


def format_table(result: Mapping[str, Any]) -> str:
    """An aligned text table: one row per scene (and a TOTAL row for :func:`evaluate_many`).

    Columns: building TP/FP/FN, precision, recall, F1, mean IoU of matches; pixel IoU of
    buildings and roads; road APLS, completeness, correctness. ``-`` marks a value that is
    undefined or not scored.
    """
    rows = [list(_COLUMNS)]
    if "scenes" in result:
        rows += [_row(s) for s in result["scenes"]]
        if len(result["scenes"]) != 1 or result.get("failed"):
            rows.append(_row(result["total"]))
    else:
        rows.append(_row(result))
    widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(len(_COLUMNS))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = []
    if result.get("unmatched_predictions"):
        notes.append("predictions without truth (not scored): " + ", ".join(result["unmatched_predictions"]))
    return "\n".join(lines + notes)


def write_json(result: Mapping[str, Any], path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``result`` as strict JSON (NaN -> null) atomically (temporary file + ``os.replace``).

    Raises:
        ConfigError: the file exists and ``overwrite`` is false.
        OutputError: the folder cannot take the file (missing, read-only, disk full).
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} exists; pass --overwrite (overwrite=True) to replace it")
    text = json.dumps(_jsonable(result), indent=2, allow_nan=False)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from None
    return p
