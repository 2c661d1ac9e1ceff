"""Pixels: confusion counts of two masks, whole arrays or window by window over a scene grid.

:func:`pixel_counts` / :func:`pixel_metrics` compare masks that are already arrays.
:func:`windowed_pixel_counts` burns truth and prediction polygons window by window over a
:class:`RasterGrid` (a scene's pixel grid, or one laid over the data), so pixel metrics
never need a full-scene raster. Ratios follow :mod:`geounet.evaluate.ratios`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.features
import rasterio.windows
import shapely
from affine import Affine
from pyproj import CRS

from geounet.errors import ConfigError, SceneReadError
from geounet.evaluate.geometry import GeometryInput, geometry_array, polygonal
from geounet.evaluate.ratios import Confusion, ratio

__all__ = ["PixelCounts", "RasterGrid", "burn", "pixel_counts", "pixel_metrics", "windowed_pixel_counts"]


@dataclass(frozen=True)
class PixelCounts(Confusion):
    """Confusion counts of one class over some pixels; add them to accumulate windows/scenes."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def iou(self) -> float:
        """TP / (TP + FP + FN) (Jaccard); NaN when the class is absent from both masks."""
        return ratio(self.tp, self.tp + self.fp + self.fn, self._empty)

    @property
    def dice(self) -> float:
        """2·TP / (2·TP + FP + FN) (= pixel F1)."""
        return self.f1

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: counts and ratios, NaN kept (the JSON writer turns it into ``null``)."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "iou": self.iou,
            "dice": self.dice,
            "precision": self.precision,
            "recall": self.recall,
        }


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
                return cls(
                    CRS.from_user_input(src.crs.to_wkt()),
                    src.transform,
                    src.width,
                    src.height,
                    str(p) if use_mask else None,
                )
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

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: CRS string, size in pixels and the six affine coefficients."""
        return {
            "crs": self.crs.to_string(),
            "width": self.width,
            "height": self.height,
            "transform": list(self.transform)[:6],
        }


def burn(geoms: np.ndarray, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    """Boolean mask of polygons on a grid of ``shape`` placed by ``transform`` (pixel centres inside).

    Cost: one GDAL rasterization; a ``shape``-sized uint8 array and its boolean copy.
    """
    if len(geoms) == 0:
        return np.zeros(shape, dtype=bool)
    out = rasterio.features.rasterize(
        ((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0, dtype="uint8"
    )
    return out.astype(bool)


def _burn_window(
    geoms: np.ndarray,
    tree: shapely.STRtree | None,
    window_box: shapely.Polygon,
    shape: tuple[int, int],
    transform: Affine,
) -> np.ndarray:
    """Boolean mask on one window of the geometries that the STRtree finds in ``window_box``."""
    if tree is None:
        return np.zeros(shape, dtype=bool)
    return burn(geoms[tree.query(window_box)], shape, transform)


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
                raise ConfigError(
                    f"{name} {what} are in {CRS.from_user_input(g_crs).to_string()} but the grid is in "
                    f"{grid.crs.to_string()}; reproject them to the grid's CRS first"
                )
        pa = polygonal(geometry_array(pred, f"{name} predictions"))
        ta = polygonal(geometry_array(truth, f"{name} truth"))
        pa = pa[~shapely.is_empty(pa)]
        ta = ta[~shapely.is_empty(ta)]
        prepared[name] = (pa, shapely.STRtree(pa) if len(pa) else None, ta, shapely.STRtree(ta) if len(ta) else None)
    totals = {name: PixelCounts() for name in layers}
    src = None
    mask_path = grid.mask_path
    try:
        if mask_path is not None:
            try:
                src = rasterio.open(mask_path)
            except rasterio.errors.RasterioIOError as exc:
                raise SceneReadError(mask_path, f"cannot be opened to read its valid-pixel mask: {exc}") from None
        for win in grid.windows(window_size):
            shape = (int(win.height), int(win.width))
            wt = grid.transform @ Affine.translation(win.col_off, win.row_off)
            box = shapely.Polygon([wt @ (0, 0), wt @ (shape[1], 0), wt @ (shape[1], shape[0]), wt @ (0, shape[0])])
            valid = None
            if src is not None:
                try:
                    valid = src.dataset_mask(window=win) > 0
                except rasterio.errors.RasterioIOError as exc:
                    raise SceneReadError(str(mask_path), f"reading the mask of window {win} failed: {exc}") from None
            for name, (pa, ptree, ta, ttree) in prepared.items():
                pm = _burn_window(pa, ptree, box, shape, wt)
                tm = _burn_window(ta, ttree, box, shape, wt)
                totals[name] = totals[name] + pixel_counts(pm, tm, valid)
    finally:
        if src is not None:
            src.close()
    return totals
