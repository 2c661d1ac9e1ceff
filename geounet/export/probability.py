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
