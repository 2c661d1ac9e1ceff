"""Writers for a scene's outputs; every file appears atomically or not at all.

Each writer writes to a temporary name in the destination folder
(``.partial-<pid>-<name>``) and moves it into place with :func:`os.replace`, so an
interrupted run never leaves a complete-looking file. ``scene.json`` is written last by
the pipeline and is the proof that a scene is complete.

Outputs (one registry, :data:`VECTOR_WRITERS`, for the polygon formats):

* ``<class>.geojson`` -- RFC 7946: WGS84 lon/lat, counter-clockwise exteriors, cut at the
  antimeridian (GDAL's ``RFC7946=YES`` does all three);
* ``polygons.gpkg`` -- the same polygons in the scene's CRS, one layer per class;
* ``probability.tif`` -- Cloud-Optimized GeoTIFF, one uint8 band per class (p x 255);
* ``quicklook.png`` -- downsampled scene with each class's outlines in its colour.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
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
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geounet.errors import OutputError

PARTIAL_PREFIX = ".partial-"
# What GDAL raises through rasterio when a raster cannot be written (disk full, read-only):
# CPLE_* errors (e.g. a failed flush at close) are not RasterioError subclasses.
RASTER_WRITE_ERRORS = (rasterio.errors.RasterioError, CPLE_BaseError, OSError)
# Outline colours for the quicklook, by class index (RGB).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48), (255, 214, 0), (0, 200, 255), (170, 80, 255), (60, 255, 90), (255, 130, 0),
)


def partial_name(final: Path) -> Path:
    """Temporary sibling of ``final``; keeps the extension so GDAL picks the right driver."""
    return final.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{final.name}")


def remove_partials(folder: Path) -> int:
    """Delete leftovers of interrupted writes in ``folder``; returns how many were removed."""
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(PARTIAL_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    n += 1
    return n


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto ``final``, on failure remove it.

    Raises:
        OutputError: the folder cannot take the file (disk full, read-only, permissions).
    """
    final = Path(final)
    tmp = partial_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as exc:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal"), tmp.with_name(tmp.name + "-wal")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
        raise


def write_json(obj: Any, final: Path) -> None:
    """Pretty JSON, atomically."""
    with atomic_output(final) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------- vectors
def _io_error(path: Path, exc: Exception) -> OutputError:
    return OutputError(f"cannot write {path}: {exc}")


def write_geojson(gdf: gpd.GeoDataFrame, final: Path) -> None:
    """RFC 7946 GeoJSON: GDAL reprojects to WGS84, winds exteriors CCW, cuts at ±180°."""
    with atomic_output(final) as tmp:
        try:
            pyogrio.write_dataframe(  # layer= names the collection (else the temporary file's name)
                gdf, tmp, layer=final.stem, driver="GeoJSON", geometry_type="Unknown",
                layer_options={"RFC7946": "YES", "WRITE_BBOX": "YES"},
            )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
            raise _io_error(final, exc) from exc


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
        self.stage = self.final.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-stage-{self.final.name}")
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
                        self.stage, tmp, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES",
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
def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros(rgb.shape, np.uint8)
    for i, band in enumerate(rgb.astype(np.float32)):
        vals = band[valid] if valid.any() else band.ravel()
        lo, hi = (np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0))
        if hi <= lo:
            hi = lo + 1.0
        out[i] = np.clip((band - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return out


def write_quicklook(
    scene_path: str,
    bands: Sequence[int],
    pixel_geoms: Sequence[Sequence[Any]],
    final: Path,
    *,
    size: int = 1024,
) -> Path:
    """Downsampled RGB (or grey) view with each class's outlines in :data:`CLASS_COLOURS`.

    ``pixel_geoms[k]`` holds class k's polygons in scene pixel coordinates. Reads the
    scene once at the quicklook's resolution (GDAL streams the decimation).
    """
    from PIL import Image
    from rasterio.features import rasterize

    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(scene_path) as ds:
        scale = min(1.0, size / max(ds.width, ds.height))
        qw, qh = max(1, round(ds.width * scale)), max(1, round(ds.height * scale))
        show = list(bands[:3]) if len(bands) >= 3 else [bands[0]] * 3
        rgb = ds.read(show, out_shape=(len(show), qh, qw), resampling=Resampling.average)
        valid = ds.read_masks(show[0], out_shape=(qh, qw), resampling=Resampling.nearest) > 0
    if rgb.dtype.kind == "f":
        valid &= ~np.isnan(rgb).any(axis=0)
        rgb = np.nan_to_num(rgb)
    img = _stretch(rgb, valid)
    to_q = Affine.scale(qw / max(1, ds.width), qh / max(1, ds.height))
    for k, geoms in enumerate(pixel_geoms):
        if len(geoms) == 0:
            continue
        lines = shapely.boundary(shapely.transform(np.asarray(geoms, dtype=object),
                                                   lambda xy: xy * [to_q.a, to_q.e]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            edge = rasterize(((g, 1) for g in lines if not g.is_empty), out_shape=(qh, qw),
                             all_touched=True, dtype="uint8")
        colour = CLASS_COLOURS[k % len(CLASS_COLOURS)]
        for c in range(3):
            img[c][edge > 0] = colour[c]
    with atomic_output(final) as tmp:
        Image.fromarray(np.moveaxis(img, 0, -1)).save(tmp, format="PNG", optimize=False)
    return final
