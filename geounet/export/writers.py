"""Writers for a scene's outputs; every file appears atomically or not at all.

Each writer writes to a temporary name in the destination folder
(``.partial-<pid>-<name>``) and moves it into place with :func:`os.replace`, so an
interrupted run never leaves a complete-looking file. ``scene.json`` is written last by
the pipeline and is the proof that a scene is complete.

Outputs (one registry, :data:`VECTOR_WRITERS`, for the polygon formats):

* ``<class>.geojson`` -- RFC 7946: WGS84 lon/lat, counter-clockwise exteriors, cut at the
  antimeridian (pyproj + GEOS, or GDAL's ``RFC7946=YES`` for layers crossing ±180°);
* ``polygons.gpkg`` -- the same polygons in the scene's CRS, one layer per class;
* ``probability.tif`` -- Cloud-Optimized GeoTIFF, one uint8 band per class (p x 255);
* ``quicklook.png`` -- downsampled scene with each class's outlines in its colour.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.windows import Window

from geounet.atomic import atomic_output, partial_name
from geounet.errors import OutputError
from geounet.heap import trim_heap
from geounet.export.quicklook import ThumbnailCanvas, outline_mask

# What GDAL raises through rasterio when a raster cannot be written (disk full, read-only):
# CPLE_* errors (e.g. a failed flush at close) are not RasterioError subclasses.
RASTER_WRITE_ERRORS = (rasterio.errors.RasterioError, CPLE_BaseError, OSError)
# Outlines on a downsampled quicklook are simplified to this tolerance, in quicklook pixels.
QUICKLOOK_TOLERANCE_PX = 0.25
# DEFLATE level of probability.tif. A 4096^2 px, 2-band probability COG on this project's
# machine: level 1 without predictor 0.31 s wall / 0.52 CPU-s, 11.7 MB; GDAL's default
# (level 6) with the horizontal predictor 0.83 s / 1.54 CPU-s, 11.4 MB.
COG_DEFLATE_LEVEL = 1
# zlib level of quicklook.png: level 1 encodes a 1024^2 px picture in 0.09 s instead of 0.27 s
# (level 6) for a file 2 % larger.
PNG_LEVEL = 1
# Outline colours for the quicklook, by class index (RGB).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48), (255, 214, 0), (0, 200, 255), (170, 80, 255), (60, 255, 90), (255, 130, 0),
)


# --------------------------------------------------------------------------- vectors
def _io_error(path: Path, exc: Exception) -> OutputError:
    return OutputError(f"cannot write {path}: {exc}")


# Decimal places of GeoJSON coordinates (degrees): 1e-7 deg is about 1 cm, finer than any
# pixel this tool polygonizes, and what GDAL's RFC 7946 mode writes by default.
GEOJSON_DECIMALS = 7
# Features serialized per step: a step holds at most this many features ...
GEOJSON_CHUNK = 2_000
# ... and about this many vertices (one larger polygon is a step of its own). Reprojected,
# oriented and rounded copies and the text exist for one step at a time, so a 12000^2 px
# scene's road network (1.5 M vertices) is not held three times over.
GEOJSON_CHUNK_VERTICES = 250_000


class _NeedsCut(Exception):
    """A polygon crosses the antimeridian: the layer goes through GDAL's RFC 7946 writer."""


def write_geojson(gdf: gpd.GeoDataFrame, final: Path) -> None:
    """RFC 7946 GeoJSON: WGS84 lon/lat, counter-clockwise exteriors, cut at the antimeridian,
    ``bbox`` on the collection and on every feature.

    Layers that do not cross the antimeridian (nearly all) are reprojected with pyproj and
    written step by step by :func:`_write_geojson_fast` (GEOS serializes the geometries); a
    layer with any polygon crossing ±180° goes through GDAL's ``RFC7946=YES`` writer, which
    cuts it. Both give the same features (tests/test_export.py); the fast one took 0.12 s
    instead of 0.46 s for 3,186 building outlines (231 k vertices) on this project's machine.
    """
    with atomic_output(final) as tmp:
        try:
            try:
                _write_geojson_fast(gdf, tmp, name=final.stem)
            except _NeedsCut:
                tmp.unlink(missing_ok=True)
                pyogrio.write_dataframe(  # layer= names the collection (else the temporary file's name)
                    gdf, tmp, layer=final.stem, driver="GeoJSON", geometry_type="Unknown",
                    layer_options={"RFC7946": "YES", "WRITE_BBOX": "YES",
                                   "COORDINATE_PRECISION": str(GEOJSON_DECIMALS)},
                )
            trim_heap()  # the text and copies of a large layer are garbage now
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
            raise _io_error(final, exc) from exc


def _crosses_antimeridian(lonlat: np.ndarray) -> bool:
    """True when a polygon spans more than 180° of longitude or leaves [-180, 180] (it
    crosses the antimeridian and must be cut)."""
    if len(lonlat) == 0:
        return False
    b = shapely.bounds(lonlat)
    b = b[~np.isnan(b).any(axis=1)]
    return bool(((b[:, 2] - b[:, 0]) > 180).any() or (b[:, [0, 2]] < -180).any() or (b[:, [0, 2]] > 180).any())


def _steps(geoms: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` feature ranges of at most :data:`GEOJSON_CHUNK` features and about
    :data:`GEOJSON_CHUNK_VERTICES` vertices."""
    if len(geoms) == 0:
        return []
    ends = np.cumsum(shapely.get_num_coordinates(geoms))
    out, start = [], 0
    while start < len(geoms):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + GEOJSON_CHUNK_VERTICES, side="right"))
        stop = min(max(stop, start + 1), start + GEOJSON_CHUNK, len(geoms))
        out.append((start, stop))
        start = stop
    return out


def _write_geojson_fast(gdf: gpd.GeoDataFrame, path: Path, *, name: str) -> None:
    """FeatureCollection of ``gdf`` in lon/lat, written step by step (:func:`_steps`).

    The collection's ``bbox`` follows its features (known only once all are written; JSON
    members have no order). Raises :class:`_NeedsCut` before writing a step holding a
    polygon that crosses the antimeridian.
    """
    from pyproj import CRS, Transformer

    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    values = [gdf[c].tolist() for c in columns]
    geoms_all = np.asarray(gdf.geometry.array, dtype=object)
    to_wgs = None
    if gdf.crs is None or CRS.from_user_input(gdf.crs).to_epsg() != 4326:
        tr = Transformer.from_crs(gdf.crs, 4326, always_xy=True)  # as GeoDataFrame.to_crs

        def to_wgs(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))

    total = np.array([np.inf, np.inf, -np.inf, -np.inf])
    header = json.dumps({"type": "FeatureCollection", "name": name})[:-1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + ', "features": [\n')
        for start, stop in _steps(geoms_all):
            geoms = geoms_all[start:stop]
            if to_wgs is not None:
                geoms = shapely.transform(geoms, to_wgs)
            if _crosses_antimeridian(geoms):
                raise _NeedsCut
            geoms = shapely.orient_polygons(geoms, exterior_cw=False)  # RFC 7946: CCW
            geoms = shapely.transform(geoms, lambda xy: np.round(xy, GEOJSON_DECIMALS))
            bounds = shapely.bounds(geoms)
            texts = shapely.to_geojson(geoms)
            for j, i in enumerate(range(start, stop)):
                props = json.dumps({c: _json_value(v[i]) for c, v in zip(columns, values)})
                f.write(",\n" if i else "")
                if texts[j] is None or shapely.is_empty(geoms[j]):
                    f.write(f'{{"type": "Feature", "properties": {props}, "geometry": null}}')
                    continue
                f.write(f'{{"type": "Feature", "properties": {props}, "bbox": {json.dumps(bounds[j].tolist())}, '
                        '"geometry": ')
                f.write(texts[j])
                f.write("}")
            ok = ~np.isnan(bounds).any(axis=1)
            if ok.any():
                total = np.r_[np.minimum(total[:2], bounds[ok, :2].min(axis=0)),
                              np.maximum(total[2:], bounds[ok, 2:].max(axis=0))]
            del geoms, texts, bounds
        f.write("\n]")
        if np.isfinite(total).all():
            f.write(f', "bbox": {json.dumps(total.tolist())}')
        f.write("\n}\n")
        f.flush()
        os.fsync(f.fileno())


def _json_value(v: Any) -> Any:
    """Plain JSON value of a table cell (NaN and missing values become null)."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def write_gpkg(layers: dict[str, gpd.GeoDataFrame], final: Path) -> None:
    """One GeoPackage layer per class, in the scene's CRS."""
    with atomic_output(final) as tmp:
        try:
            for name, gdf in layers.items():
                pyogrio.write_dataframe(
                    gdf, tmp, layer=name, driver="GPKG", geometry_type="Polygon",
                    append=tmp.exists(), promote_to_multi=False,
                )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
            raise _io_error(final, exc) from exc


VectorWriter = Callable[[dict[str, gpd.GeoDataFrame], Path], list[Path]]


def _geojson_writer(layers: dict[str, gpd.GeoDataFrame], folder: Path) -> list[Path]:
    out = []
    for name, gdf in layers.items():
        path = folder / f"{plural(name)}.geojson"
        write_geojson(gdf, path)
        out.append(path)
    return out


def _gpkg_writer(layers: dict[str, gpd.GeoDataFrame], folder: Path) -> list[Path]:
    path = folder / "polygons.gpkg"
    write_gpkg({plural(k): v for k, v in layers.items()}, path)
    return [path]


VECTOR_WRITERS: dict[str, VectorWriter] = {"geojson": _geojson_writer, "gpkg": _gpkg_writer}


def plural(class_name: str) -> str:
    """File/layer name for a class: ``building`` -> ``buildings``; ``roads`` stays."""
    return class_name if class_name.endswith("s") else f"{class_name}s"


# --------------------------------------------------------------------------- rasters
class ProbabilityWriter:
    """Streams uint8 probability blocks into a tiled GeoTIFF, then converts it to a COG.

    Memory: one block at a time (plus GDAL's cache); the COG conversion streams too.
    """

    def __init__(self, final: Path, *, width: int, height: int, crs_wkt: str,
                 transform: Affine, class_names: Sequence[str]) -> None:
        self.final = Path(final)
        self.stage = partial_name(self.final.with_name(f"stage-{self.final.name}"))
        self.class_names = list(class_names)
        try:
            self.ds = rasterio.open(
                self.stage, "w", driver="GTiff", width=width, height=height,
                count=len(class_names), dtype="uint8", crs=crs_wkt, transform=transform,
                # uncompressed staging: blocks are written by the client while workers
                # compute, so no CPU goes to compressing twice; the COG copy compresses once
                tiled=True, blockxsize=512, blockysize=512, compress="none",
                BIGTIFF="IF_SAFER", SPARSE_OK=True,
            )
        except RASTER_WRITE_ERRORS as exc:
            raise OutputError(f"cannot write {self.final}: {exc}") from exc

    def write(self, core: tuple[int, int, int, int], data: np.ndarray) -> None:
        col, row, w, h = core
        try:
            self.ds.write(data, window=Window(col, row, w, h))
        except RASTER_WRITE_ERRORS as exc:
            raise OutputError(f"cannot write {self.final}: {exc}") from exc

    def finish(self) -> Path:
        """Close the staging file, convert it to a COG and move it into place."""
        try:
            for i, name in enumerate(self.class_names, start=1):
                self.ds.set_band_description(i, f"{name} probability x 255")
            self.ds.close()  # flushes cached blocks: a full disk shows here
        except RASTER_WRITE_ERRORS as exc:
            self.abort()
            raise OutputError(f"cannot write {self.final}: {exc}") from exc
        try:
            with atomic_output(self.final) as tmp:
                try:
                    rasterio.shutil.copy(
                        self.stage, tmp, driver="COG", COMPRESS="DEFLATE", LEVEL=COG_DEFLATE_LEVEL,
                        NUM_THREADS="ALL_CPUS",
                        BLOCKSIZE=512, OVERVIEWS="IGNORE_EXISTING", RESAMPLING="AVERAGE",
                        BIGTIFF="IF_SAFER",
                    )
                except RASTER_WRITE_ERRORS as exc:
                    raise OutputError(f"cannot write {self.final}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                self.stage.unlink()
        return self.final

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.ds.close()
        with contextlib.suppress(OSError):
            self.stage.unlink()


# --------------------------------------------------------------------------- quicklook
# Pixels sampled (evenly spaced) for the quicklook's 2-98 % contrast stretch.
STRETCH_SAMPLE = 250_000


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each band stretched linearly from its 2nd to its 98th percentile over the valid
    cells (estimated from an even sample of at most :data:`STRETCH_SAMPLE` of them)."""
    out = np.zeros(rgb.shape, np.uint8)
    for i, band in enumerate(rgb.astype(np.float32)):
        vals = band[valid] if valid.any() else band.ravel()
        vals = vals[:: max(1, vals.size // STRETCH_SAMPLE)]
        lo, hi = (np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0))
        if hi <= lo:
            hi = lo + 1.0
        band -= lo
        band *= 255.0 / (hi - lo)
        np.clip(band, 0, 255, out=band)
        out[i] = band
    return out


def write_quicklook(canvas: ThumbnailCanvas, layers: Sequence[Sequence[Any]], final: Path, *,
                    to_pixel: Affine | None = None) -> Path:
    """Downsampled RGB (or grey) view with each class's outlines in :data:`CLASS_COLOURS`.

    ``canvas`` holds the scene's cell averages, gathered from the blocks the workers read
    (the scene is not read again); ``layers[k]`` holds class k's polygons, in scene pixel
    coordinates, or in the scene's CRS when ``to_pixel`` (the inverse of the scene's
    geotransform) maps them to pixels. Cells without a valid pixel are black.
    """
    from PIL import Image

    mean, valid = canvas.image()
    img = _stretch(mean, valid)
    img[:, ~valid] = 0
    tolerance = QUICKLOOK_TOLERANCE_PX if canvas.factor > 1 else 0.0
    for k, geoms in enumerate(layers):
        edge = outline_mask(geoms, valid.shape, factor=canvas.factor, tolerance_px=tolerance, to_pixel=to_pixel)
        colour = CLASS_COLOURS[k % len(CLASS_COLOURS)]
        for c in range(3):
            img[c][edge] = colour[c]
    with atomic_output(final) as tmp:
        Image.fromarray(np.moveaxis(img, 0, -1)).save(tmp, format="PNG", compress_level=PNG_LEVEL)
    return final
