"""``probability.tif``: uint8 probability blocks streamed into a tiled GeoTIFF, then a COG."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.windows import Window

from geounet.atomic import atomic_output, partial_name
from geounet.errors import OutputError

# What GDAL raises through rasterio when a raster cannot be written (disk full, read-only):
# CPLE_* errors (e.g. a failed flush at close) are not RasterioError subclasses.
RASTER_WRITE_ERRORS = (rasterio.errors.RasterioError, CPLE_BaseError, OSError)
# DEFLATE level of probability.tif. A 4096^2 px, 2-band probability COG on this project's
# machine: level 1 without predictor 0.31 s wall / 0.52 CPU-s, 11.7 MB; GDAL's default
# (level 6) with the horizontal predictor 0.83 s / 1.54 CPU-s, 11.4 MB.
COG_DEFLATE_LEVEL = 1


class ProbabilityWriter:
    """Streams uint8 probability blocks into a tiled GeoTIFF, then converts it to a COG.

    Memory: one block at a time (plus GDAL's cache); the COG conversion streams too.
    """

    def __init__(
        self, final: Path, *, width: int, height: int, crs_wkt: str, transform: Affine, class_names: Sequence[str]
    ) -> None:
        self.final = Path(final)
        self.stage = partial_name(self.final.with_name(f"stage-{self.final.name}"))
        self.class_names = list(class_names)
        self.width, self.height = int(width), int(height)
        try:
            self.ds = rasterio.open(
                self.stage,
                "w",
                driver="GTiff",
                width=width,
                height=height,
                count=len(class_names),
                dtype="uint8",
                crs=crs_wkt,
                transform=transform,
                # uncompressed staging: blocks are written by the client while workers
                # compute, so no CPU goes to compressing twice; the COG copy compresses once
                tiled=True,
                blockxsize=512,
                blockysize=512,
                compress="none",
                BIGTIFF="IF_SAFER",
                SPARSE_OK=True,
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
                        self.stage,
                        tmp,
                        driver="COG",
                        COMPRESS="DEFLATE",
                        LEVEL=COG_DEFLATE_LEVEL,
                        NUM_THREADS="ALL_CPUS",
                        BLOCKSIZE=512,
                        OVERVIEWS="IGNORE_EXISTING",
                        RESAMPLING="AVERAGE",
                        BIGTIFF="IF_SAFER",
                    )
                    _check_readable(tmp, self.width, self.height, len(self.class_names))
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


def _check_readable(path: Path, width: int, height: int, count: int) -> None:
    """Open the written COG and read its last pixel of every band (so its last tiles): GDAL
    reports a short write while closing or copying only as a log line, so a full disk could
    otherwise publish a file whose directory or last tiles are missing.

    Raises:
        OutputError: the file does not open, has another shape or its last tiles do not read.
    """
    try:
        with rasterio.open(path) as ds:
            if (ds.width, ds.height, ds.count) != (width, height, count):
                raise OutputError(
                    f"the written probability raster is {ds.width} x {ds.height} x {ds.count}, "
                    f"expected {width} x {height} x {count}; the disk may be full"
                )
            ds.read(window=Window(width - 1, height - 1, 1, 1))
            overviews = ds.overviews(1)
            if overviews:  # the smallest overview is written last
                ds.read(1, out_shape=(max(1, height // overviews[-1]), max(1, width // overviews[-1])))
    except RASTER_WRITE_ERRORS as exc:
        raise OutputError(f"the written probability raster does not read back ({exc}); the disk may be full") from exc
