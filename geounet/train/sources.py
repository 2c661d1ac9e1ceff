"""Training data as it comes: image sets with raster masks or vector labels (``data.sources``).

Each image of a source becomes one :class:`~geounet.train.data.TrainScene` (with ``mosaic``,
each group of touching chips: :mod:`geounet.train.mosaic`). Steps of
:func:`open_sources`: glob the images -> (join touching chips) -> pair each with its mask (path template) or the
source's vector files -> read what the header says (size, bands, dtype, CRS, pixel size) ->
decide the pixel size (declared, from the georeferencing, or unknown) -> a coarse class
presence grid from the mask (for class-balanced sampling; never a full-resolution label
array) -> the image's area (for area-held-out validation).

Images without georeferencing are placed on their pixel grid (identity transform, no CRS):
their labels must then be masks on the same grid. PNG and JPEG are read with the GDAL PNG
and JPEG drivers only, beside GeoTIFF (inference still reads GeoTIFF only).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geounet.errors import ConfigError, SceneReadError
from geounet.scene.read import open_with, read_window
from geounet.scene.source import SCENE_DRIVER, SceneInfo, ground_pixel_size_m
from geounet.train.config import ImageSource, TrainingSettings
from geounet.train.data import COARSE, TrainScene
from geounet.train.labels import ClassGeometries, mask_to_stack, read_class_geometries
from geounet.train.mosaic import Chip, mosaic_path, plan_mosaics, write_mosaic

log = logging.getLogger(__name__)

__all__ = ["TRAIN_DRIVERS", "open_sources", "pair_mask", "area_of", "held_out"]

# GDAL drivers that may open training images and masks (never VRT or the whole driver list).
TRAIN_DRIVERS = (SCENE_DRIVER, "PNG", "JPEG")


def pair_mask(image: Path, template: str, stem_sub: tuple[str, str] | None = None) -> Path:
    """The mask path of ``image`` from a template with ``{dir}``, ``{stem}`` and ``{name}``.

    Example: ``a/images/img7.jpg`` with ``{dir}/../masks/{stem}.png`` -> ``a/images/../masks/img7.png``;
    with ``stem_sub = ("^img", "mask")`` -> ``a/images/../masks/mask7.png``.
    """
    stem = image.stem if stem_sub is None else re.sub(stem_sub[0], stem_sub[1], image.stem)
    return Path(template.format(dir=str(image.parent), stem=stem, name=image.name))


def area_of(image: Path, template: str, source: str) -> str:
    """The area name of ``image``: ``template`` with ``{source}``, ``{parent}``, ``{grandparent}``, ``{stem}``."""
    parents = image.parent.parts
    return template.format(
        source=source,
        parent=parents[-1] if parents else "",
        grandparent=parents[-2] if len(parents) > 1 else "",
        stem=image.stem,
    )


def held_out(area: str, patterns: Sequence[str]) -> bool:
    """True when ``area`` matches one of the shell ``patterns`` (``split.val_areas``)."""
    return any(fnmatch.fnmatchcase(area, p) for p in patterns)


def _header(path: Path) -> dict:
    """What the header of an image or mask says; an unreadable file is a SceneReadError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="TRUE"), open_with(str(path), TRAIN_DRIVERS) as ds:
                georef = ds.crs is not None and not ds.transform.is_identity
                dtypes = set(ds.dtypes)
                if len(dtypes) != 1:
                    raise SceneReadError(path, f"bands have different dtypes {sorted(dtypes)}")
                flags = [set(f) for f in ds.mask_flag_enums]
                palette = None
                if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
                    cmap = ds.colormap(1)
                    palette = np.zeros((max(256, max(cmap) + 1), 3), dtype=np.int64)
                    for value, rgba in cmap.items():
                        palette[value] = rgba[:3]
                return {
                    "palette": palette,
                    "width": ds.width,
                    "height": ds.height,
                    "count": ds.count,
                    "dtype": ds.dtypes[0],
                    "crs": CRS.from_wkt(ds.crs.to_wkt()) if georef else None,
                    "transform": ds.transform if georef else Affine.identity(),
                    "has_mask": any(f != {MaskFlags.all_valid} for f in flags),
                    "nodata": ds.nodata,
                }
    except RasterioError as exc:
        raise SceneReadError(
            path, f"cannot be opened as a GeoTIFF, PNG or JPEG image: {exc}; check the file or the source's glob"
        ) from None


def _coarse(mask: SceneInfo, src: ImageSource, classes: list[str], palette: np.ndarray | None) -> np.ndarray:
    """``(classes, ceil(h / COARSE), ceil(w / COARSE))`` bool: cells holding any pixel of each
    class. Read in strips of ``64 * COARSE`` rows, so a large mask never sits in memory whole."""
    assert src.mask_classes is not None
    rows, cols = math.ceil(mask.height / COARSE), math.ceil(mask.width / COARSE)
    out = np.zeros((len(classes), rows, cols), dtype=bool)
    strip = 64 * COARSE
    for r0 in range(0, rows * COARSE, strip):
        h = min(strip, rows * COARSE - r0)
        raw, inside = read_window(mask, Window(0, r0, cols * COARSE, h))
        ids, _ = mask_to_stack(raw, src.mask_classes, classes, palette)
        hit = (ids > 0) & inside
        cells = hit.reshape(len(classes), h // COARSE, COARSE, cols, COARSE).any(axis=(2, 4))
        out[:, r0 // COARSE : r0 // COARSE + h // COARSE] = cells
    return out


def _images(settings: TrainingSettings, src: ImageSource) -> list[Path]:
    pattern = src.images
    found = sorted(glob.glob(pattern))
    if not found and settings._base is not None and not Path(pattern).is_absolute():
        found = sorted(glob.glob(str(settings._base / pattern)))
    found = [f for f in found if not f.endswith((".aux.xml", ".ovr"))]
    if not found:
        raise ConfigError(
            f"{settings.source}: source {src.name!r}: images {pattern!r} matches no file; check the glob "
            "(relative to the current directory or the config's folder)"
        )
    return [Path(f) for f in found[: src.limit]]


def _pixel_size(path: Path, head: dict, src: ImageSource, target: float | None) -> tuple[float | None, bool]:
    """``(ground pixel size in metres, known)`` of an image."""
    if isinstance(src.gsd_m, float | int) and not isinstance(src.gsd_m, bool):
        return float(src.gsd_m), True
    if src.gsd_m == "unknown":
        return target, False
    crs = head["crs"]
    gsd = (
        ground_pixel_size_m(crs.to_wkt(), tuple(head["transform"])[:6], head["width"], head["height"]) if crs else None
    )
    if gsd is None and target is not None:
        raise ConfigError(
            f"source {src.name!r}: {path} has no georeferencing, so its pixel size is not known; declare it "
            "(gsd_m: 0.3, in metres) or say gsd_m: unknown"
        )
    return gsd, True


def _mosaics(
    settings: TrainingSettings, src: ImageSource, images: list[Path]
) -> tuple[list[Path], dict[Path, tuple[str, int]]]:
    """``images`` with the chips that touch joined into mosaics (``mosaic: true``): the images
    to open (mosaics and lone chips, in the order of their first chip) and each mosaic's area
    (its chips') and number of chips."""
    chips = []
    for path in images:
        head = _header(path)
        if head["crs"] is None:
            raise ConfigError(
                f"{settings.source}: source {src.name!r}: {path} has no georeferencing, so it cannot be placed "
                "beside the other chips; drop mosaic, or georeference the chips (.aux.xml or world files)"
            )
        chips.append(
            Chip(
                path=path,
                crs_wkt=head["crs"].to_wkt(),
                transform=head["transform"],
                width=head["width"],
                height=head["height"],
                count=head["count"],
                dtype=head["dtype"],
                area=area_of(path, src.area, src.name),
            )
        )
    folder = Path(settings.output.dir) / "mosaics"
    out: list[Path] = []
    areas: dict[Path, tuple[str, int]] = {}
    plans = plan_mosaics(chips)
    for plan in plans:
        if len(plan.chips) == 1:
            out.append(plan.first.path)
            continue
        path = mosaic_path(plan, folder, src.name)
        try:
            write_mosaic(plan, path, TRAIN_DRIVERS)
        except RasterioError as exc:
            raise SceneReadError(
                path, f"cannot be written from the chips of source {src.name!r}: {exc}; check the chips"
            ) from None
        out.append(path)
        areas[path] = (plan.first.area, len(plan.chips))
    joined = sum(len(p.chips) for p in plans if len(p.chips) > 1)
    log.info(
        "source %s: %d chips -> %d mosaics of %d chips + %d lone chips (%s)",
        src.name,
        len(images),
        len(areas),
        joined,
        len(images) - joined,
        folder,
    )
    return out, areas


def open_sources(settings: TrainingSettings, first_index: int) -> list[TrainScene]:
    """Every image of ``data.sources`` as a training scene, indexes from ``first_index``.

    Raises:
        ConfigError: a glob matching nothing, a missing mask, bands the images lack, images of
            unknown pixel size where the run has one, vector labels on an image without CRS.
        SceneReadError: an image or mask GDAL cannot open.
    """
    names = settings.class_names
    target = settings.data.gsd_m
    scenes: list[TrainScene] = []
    vector_cache: dict[tuple[str, str, str], ClassGeometries] = {}
    for src in settings.data.sources:
        labelled = src.labelled_classes(names)
        known = [c in labelled for c in names]
        images = _images(settings, src)
        mosaics: dict[Path, tuple[str, int]] = {}
        if src.mosaic:
            images, mosaics = _mosaics(settings, src, images)
        for path in images:
            head = _header(path)
            bands = src.bands or settings.data.bands or list(range(1, head["count"] + 1))
            if max(bands) > head["count"]:
                raise ConfigError(
                    f"{settings.source}: source {src.name!r} reads bands {bands} but {path} has {head['count']}; "
                    "set the source's bands"
                )
            gsd, gsd_known = _pixel_size(path, head, src, target)
            area, members = mosaics.get(path) or (area_of(path, src.area, src.name), 1)
            role = src.role
            if role == "auto":
                role = "val" if held_out(area, settings.split.val_areas) else "train"
            scene = TrainScene(
                first_index + len(scenes),
                path,
                role,
                head["width"],
                head["height"],
                head["count"],
                head["dtype"],
                head["crs"],
                head["transform"],
                head["has_mask"],
                head["nodata"],
                scale=(target / gsd) if (target is not None and gsd is not None) else 1.0,
                gsd_m=gsd,
                gsd_known=gsd_known,
                source=src.name,
                area=area,
                bands=list(bands) if src.bands else None,
                value_scale=src.value_scale,
                drivers=TRAIN_DRIVERS,
                known=known,
                members=members,
            )
            if src.masks is not None:
                mask_path = pair_mask(path, src.masks, src.stem_sub)
                if not mask_path.exists():
                    raise ConfigError(
                        f"{settings.source}: source {src.name!r}: the mask of {path} should be {mask_path} "
                        f"(masks: {src.masks!r}), which does not exist; fix the template or stem_sub"
                    )
                mh = _header(mask_path)
                if (mh["width"], mh["height"]) != (head["width"], head["height"]):
                    raise SceneReadError(
                        mask_path,
                        f"is {mh['width']} x {mh['height']} px but its image {path} is "
                        f"{head['width']} x {head['height']}; a mask must be on the image's grid",
                    )
                scene.mask = SceneInfo(
                    path=str(mask_path),
                    stem=mask_path.stem,
                    width=mh["width"],
                    height=mh["height"],
                    count=mh["count"],
                    dtype=mh["dtype"],
                    crs_wkt="",
                    epsg=None,
                    transform=tuple(Affine.identity())[:6],
                    bands=tuple(range(1, min(mh["count"], 3) + 1)),
                    nodata=None,
                    has_mask=False,
                    fingerprint="",
                    drivers=TRAIN_DRIVERS,
                )
                scene.mask_classes = src.mask_classes
                scene.mask_palette = mh["palette"]
                scene.classes = [
                    ClassGeometries(c.name, np.empty(0, dtype=object), mask_gap_px=c.mask_gap_px)
                    for c in settings.data.classes
                ]
                scene.label_files = {c: [str(mask_path)] if k else [] for c, k in zip(names, known)}
                scene.coarse = _coarse(scene.mask, src, names, mh["palette"])
            else:
                if head["crs"] is None:
                    raise ConfigError(
                        f"{settings.source}: source {src.name!r}: {path} has no georeferencing, so vector labels "
                        "cannot be placed on it; use masks, or georeference the image"
                    )
                files = src.labels if isinstance(src.labels, dict) else dict.fromkeys(names, src.labels)
                for sel in settings.data.classes:
                    paths = files.get(sel.name) or []
                    paths = [paths] if isinstance(paths, str) else list(paths)
                    resolved = [str(settings.resolve(f)) for f in paths]
                    key = (sel.name, "|".join(resolved), head["crs"].to_wkt())
                    if key not in vector_cache:
                        vector_cache[key] = read_class_geometries(resolved, sel, head["crs"])
                    scene.classes.append(vector_cache[key])
                    scene.label_files[sel.name] = resolved
            scenes.append(scene)
        log.info(
            "source %s: %d scenes, %s",
            src.name,
            len(images),
            "pixel size unknown" if src.gsd_m == "unknown" else f"pixel size {src.gsd_m}",
        )
    return scenes
