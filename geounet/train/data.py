"""Training scenes: open rasters, read labels, read windows, build batches.

A :class:`TrainScene` holds what was learned about one raster (size, CRS, transform, dtype,
nodata) and its classes' label geometries. Pixels are read window by window through
inference's reader, :func:`geounet.scene.read.read_window`, and normalized by
:func:`geounet.scene.read.prepare_input`: one dataset cache (per thread, least recently
used closed first), one validity rule (masked in every band, or NaN in any, is invalid) and
one normalization for training and inference, so a model sees the same numbers in both.
Synthetic scenes named by the config are generated first with
:func:`geounet.synth.synthesize_scene` and reused when present.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window
from tqdm import tqdm

from geounet.atomic import write_text
from geounet.errors import ConfigError, SceneReadError
from geounet.scene.normalize import MeanStd, Percentile, compute_normalization
from geounet.scene.read import keep_handles, prepare_input, read_window
from geounet.scene.source import SCENE_DRIVER, SceneInfo, ground_pixel_size_m
from geounet.synth import synthesize_scene
from geounet.train.augment import augment
from geounet.train.config import (
    AugmentSettings,
    MaskClasses,
    NormalizationSettings,
    SyntheticData,
    TrainingSettings,
)
from geounet.train.labels import (
    ClassGeometries,
    id_stack,
    mask_to_stack,
    rasterize_window,
    read_class_geometries,
    split_stack,
    window_box,
)
from geounet.train.sampling import Rect, WindowRef, random_windows

log = logging.getLogger(__name__)


COARSE = 8  # source pixels per side of a cell of a raster-mask scene's class-presence grid


@dataclass
class TrainScene:
    """One image with labels. ``index`` is its position in the run's scene list.

    Windows (:class:`~geounet.train.sampling.WindowRef`) are in the run's *training grid*:
    the scene resampled to ``data.gsd_m`` (``scale`` source pixels per training pixel; 1 when
    the run has no pixel size, and then reads are the plain windowed reads of inference).
    Labels come from vector features (``classes``) or from a raster mask on the image's grid
    (``mask`` with ``mask_classes``); ``known`` says which classes the scene labels at all.
    """

    index: int
    path: Path
    role: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    has_mask: bool  # nodata, an alpha band or a mask marks invalid pixels in some band
    nodata: float | None = None
    classes: list[ClassGeometries] = field(default_factory=list)
    label_files: dict[str, list[str]] = field(default_factory=dict)
    scale: float = 1.0  # source pixels per training-grid pixel (data.gsd_m / gsd_m)
    gsd_m: float | None = None  # ground pixel size, metres (None: unknown and no data.gsd_m)
    gsd_known: bool = True  # False: gsd_m is the run's, assumed (source gsd_m: unknown)
    source: str = ""  # data.sources[].name ("" for data.scenes and synthetic scenes)
    area: str = ""  # area for held-out validation
    bands: list[int] | None = None  # this scene's own bands (a source's), else the run's
    value_scale: float = 1.0
    drivers: tuple[str, ...] = (SCENE_DRIVER,)
    mask: SceneInfo | None = None  # raster mask on the image's grid
    mask_classes: MaskClasses | None = None
    mask_palette: np.ndarray | None = None  # (values, 3) RGB of a paletted mask
    known: list[bool] | None = None  # per class: labelled in this scene (None: every class)
    coarse: np.ndarray | None = None  # (classes, h/COARSE, w/COARSE) bool: class present in the cell
    members: int = 1  # images this scene holds (a mosaic of chips: data.sources[].mosaic)

    @property
    def pixel_area(self) -> float:
        """Area of one training-grid pixel in CRS units squared (source pixel area * scale**2)."""
        t = self.transform
        return abs(t.a * t.e - t.b * t.d) * self.scale**2

    @property
    def grid_height(self) -> int:
        """Rows of the scene on the training grid."""
        return self.height if self.scale == 1.0 else max(1, round(self.height / self.scale))

    @property
    def grid_width(self) -> int:
        """Columns of the scene on the training grid."""
        return self.width if self.scale == 1.0 else max(1, round(self.width / self.scale))

    @property
    def partial(self) -> bool:
        """True when some class is not labelled in this scene."""
        return self.known is not None and not all(self.known)

    def source_window(self, ref: WindowRef) -> tuple[Window, tuple[int, int] | None]:
        """The scene window (fractional where resampled) a training-grid window reads, and its
        output shape (None: an unresampled, integer window)."""
        step = self.scale * ref.zoom
        if step == 1.0:
            return ref.window, None
        cr = (ref.row + ref.height / 2.0) * self.scale
        cc = (ref.col + ref.width / 2.0) * self.scale
        h, w = ref.height * step, ref.width * step
        return Window(cc - w / 2.0, cr - h / 2.0, w, h), (ref.height, ref.width)

    def transform_of(self, ref: WindowRef) -> Affine:
        """Affine transform of a window (its pixel -> CRS coordinates)."""
        win, shape = self.source_window(ref)
        if shape is None:
            return self.transform @ Affine.translation(ref.col, ref.row)
        return (
            self.transform
            @ Affine.translation(win.col_off, win.row_off)
            @ Affine.scale(win.width / ref.width, win.height / ref.height)
        )

    @cached_property
    def _info(self) -> SceneInfo:
        return SceneInfo(
            path=str(self.path),
            stem=self.path.stem,
            width=self.width,
            height=self.height,
            count=self.count,
            dtype=self.dtype,
            crs_wkt=self.crs.to_wkt() if self.crs is not None else "",
            epsg=self.crs.to_epsg() if self.crs is not None else None,
            transform=tuple(self.transform)[:6],
            bands=tuple(range(1, self.count + 1)),
            nodata=self.nodata,
            has_mask=self.has_mask,
            fingerprint="",
            drivers=self.drivers,
        )

    def scene_info(self, bands: Sequence[int], use_nodata: bool = True) -> SceneInfo:
        """This scene as inference's reader takes it, reading ``bands`` (1-based; a source's
        own ``bands`` win).

        ``use_nodata`` false (``data.use_nodata``) ignores the scene's nodata, alpha and
        mask: every pixel is valid unless it is NaN. The fingerprint is left empty (training
        records its own in the provenance).
        """
        chosen = self.bands or bands
        return dataclasses.replace(
            self._info, bands=tuple(int(b) for b in chosen), has_mask=use_nodata and self.has_mask
        )

    def read(self, ref: WindowRef, bands: Sequence[int], use_nodata: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Raw pixels ``(bands, h, w)`` of a window and its valid mask ``(h, w)``.

        Reads through :func:`geounet.scene.read.read_window` (inference's reader and
        validity rule: a pixel is invalid when it is nodata/masked in all of its bands, or
        NaN in any), resampled bilinearly to the training grid where ``scale`` or the
        window's zoom is not 1; pixels outside the scene are invalid. A source's
        ``value_scale`` multiplies the values (then float32).

        Raises:
            SceneReadError: the pixels cannot be read (truncated or corrupt file).
        """
        win, shape = self.source_window(ref)
        raw, valid = read_window(self.scene_info(bands, use_nodata), win, shape)
        if self.value_scale != 1.0:
            raw = raw.astype(np.float32) * np.float32(self.value_scale)
        return raw, valid

    def label_ids(self, ref: WindowRef) -> tuple[np.ndarray, np.ndarray]:
        """Labels of a window in training form (:func:`~geounet.train.labels.id_stack`) and its
        unlabelled pixels ``(h, w)`` bool (a mask's ignore values; outside the mask)."""
        if self.mask is None or self.mask_classes is None:
            ids = id_stack(self.classes, self.transform_of(ref), (ref.height, ref.width))
            return ids, np.zeros((ref.height, ref.width), dtype=bool)
        win, shape = self.source_window(ref)
        raw, inside = read_window(self.mask, win, shape, resampling=Resampling.nearest)
        ids, ignore = mask_to_stack(raw, self.mask_classes, [c.name for c in self.classes], self.mask_palette)
        return ids, ignore | ~inside

    def labels(self, ref: WindowRef, *, separate: bool | None = None) -> np.ndarray:
        """Label stack ``(classes, h, w)`` uint8 of a window (vectors burned, or the mask's classes)."""
        return self.targets(ref, separate=separate)[0]

    def targets(self, ref: WindowRef, *, separate: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Label stack ``(classes, h, w)`` uint8 and separation gaps ``(h, w)`` bool of a window."""
        if self.mask is not None:  # the mask's classes and narrow gaps (mask_gap_px), as training sees them
            ids, _ = self.label_ids(ref)
            return split_stack(ids, self.classes, masks=True)
        return rasterize_window(self.classes, self.transform_of(ref), (ref.height, ref.width), separate=separate)

    def presence(self, refs: Sequence[WindowRef], min_pixels: int) -> np.ndarray:
        """``(len(refs), classes)`` bool: the window holds at least ``min_pixels`` px of the class.

        Vector labels: from intersection areas (one STRtree query per class, no rasterization).
        Raster masks: from the coarse class-presence grid read when the scene was opened.
        """
        out = np.zeros((len(refs), len(self.classes)), dtype=bool)
        if not refs:
            return out
        if self.coarse is not None:
            cell_px = COARSE * COARSE / self.scale**2  # training pixels per coarse cell
            for i, r in enumerate(refs):
                win, _ = self.source_window(r)
                r0, c0 = max(int(win.row_off // COARSE), 0), max(int(win.col_off // COARSE), 0)
                r1 = math.ceil((win.row_off + win.height) / COARSE)
                c1 = math.ceil((win.col_off + win.width) / COARSE)
                cells = self.coarse[:, r0:r1, c0:c1].reshape(len(self.classes), -1).sum(axis=1)
                out[i] = cells * cell_px >= min_pixels
            return out
        boxes = np.array([window_box(self.transform_of(r), r.height, r.width) for r in refs], dtype=object)
        for k, cg in enumerate(self.classes):
            if cg.tree is None:
                continue
            bi, gi = cg.tree.query(boxes, predicate="intersects")
            if len(bi) == 0:
                continue
            areas = shapely.area(shapely.intersection(boxes[bi], cg.geoms[gi]))
            total = np.zeros(len(refs))
            np.add.at(total, bi, areas)
            out[:, k] = total >= min_pixels * self.pixel_area
        return out


def class_presence(scenes: Sequence[TrainScene], refs: Sequence[WindowRef], min_pixels: int) -> np.ndarray:
    """``(len(refs), classes)`` bool over windows of several scenes (:meth:`TrainScene.presence`
    per scene); what :class:`~geounet.train.sampling.WindowSampler` balances classes with."""
    out = np.zeros((len(refs), len(scenes[0].classes) if scenes else 0), dtype=bool)
    by_scene: dict[int, list[int]] = {}
    for i, r in enumerate(refs):
        by_scene.setdefault(r.scene, []).append(i)
    for s, idx in by_scene.items():
        out[idx] = scenes[s].presence([refs[i] for i in idx], min_pixels)
    return out


# -- synthetic scenes ------------------------------------------------------------------------


def synthetic_sources(cfg: SyntheticData, progress: bool = False) -> list[tuple[Path, Path, str]]:
    """Generate (or reuse) the synthetic set; returns ``(image, truth gpkg, role)`` per scene.

    A scene is reused when its files exist and ``synthetic.json`` in the folder records the
    same options for it (generation is deterministic for a seed and options).
    """
    out = Path(cfg.dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp_path = out / "synthetic.json"
    try:
        stamps = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        stamps = {}
    result = []
    jobs = [("train", cfg.train)] + ([("val", cfg.val)] if cfg.val is not None else [])
    todo = [(role, i, part) for role, part in jobs for i in range(part.n)]
    it = tqdm(todo, desc="synthetic scenes", unit="scene", leave=False) if progress else todo
    for role, i, part in it:
        name = f"{cfg.prefix}_{role}_{i:04d}"
        opts = {"width": cfg.size, "height": cfg.size, "seed": part.seed + i, **cfg.options}
        image, truth = out / f"{name}.tif", out / f"{name}_truth.gpkg"
        key = json.dumps(opts, sort_keys=True)
        if not (image.exists() and truth.exists() and stamps.get(name) == key):
            synthesize_scene(out, name=name, overwrite=True, **opts)
            stamps[name] = key
            write_text(stamp_path, json.dumps(stamps, indent=1, sort_keys=True))
        result.append((image, truth, role))
    return result


# -- opening ---------------------------------------------------------------------------------


def open_scene(
    index: int,
    path: Path,
    role: str,
    label_files: dict[str, list[str]],
    settings: TrainingSettings,
    bands: Sequence[int] | None,
) -> TrainScene:
    """Validate a raster and read its labels (reprojected to its CRS)."""
    if not path.exists():
        raise ConfigError(f"{settings.source}: scene image {path} does not exist; check data.scenes[].image")
    try:
        with rasterio.open(path, driver=SCENE_DRIVER) as ds:
            if ds.crs is None:
                raise SceneReadError(path, "has no CRS; labels cannot be placed on it. Give the GeoTIFF a CRS")
            if ds.transform.is_identity:
                raise SceneReadError(path, "has no geotransform; labels cannot be placed on it")
            dtypes = set(ds.dtypes)
            if len(dtypes) != 1:
                raise SceneReadError(path, f"bands have different dtypes {sorted(dtypes)}")
            flags = [set(f) for f in ds.mask_flag_enums]
            has_mask = any(f != {rasterio.enums.MaskFlags.all_valid} for f in flags)
            scene = TrainScene(
                index,
                path,
                role,
                ds.width,
                ds.height,
                ds.count,
                ds.dtypes[0],
                CRS.from_wkt(ds.crs.to_wkt()),
                ds.transform,
                has_mask,
                ds.nodata,
            )
            target = settings.data.gsd_m
            if target is not None:
                scene.gsd_m = ground_pixel_size_m(ds.crs.to_wkt(), tuple(ds.transform)[:6], ds.width, ds.height)
                if scene.gsd_m is None:
                    raise SceneReadError(path, "has a CRS without a datum; its pixel size in metres is unknown")
                scene.scale = target / scene.gsd_m
    except RasterioError as exc:
        raise SceneReadError(path, f"cannot be opened as a GeoTIFF: {exc}") from None
    want = bands or list(range(1, scene.count + 1))
    if max(want) > scene.count:
        raise ConfigError(
            f"{settings.source}: data.bands {list(want)} asks for band {max(want)} but {path} has {scene.count} bands"
        )
    assert scene.crs is not None  # refused above when missing
    for sel in settings.data.classes:
        files = [str(settings.resolve(f)) for f in label_files.get(sel.name, [])]
        scene.classes.append(read_class_geometries(files, sel, scene.crs))
        scene.label_files[sel.name] = files
    return scene


def open_scenes(settings: TrainingSettings, progress: bool = False) -> list[TrainScene]:
    """Every scene of the run (configured, then synthetic), labels read, bands checked.

    Raises:
        ConfigError: a missing file, inconsistent bands, or a class selecting no feature at all.
    """
    names = settings.class_names
    sources: list[tuple[Path, str, dict[str, list[str]]]] = []
    for s in settings.data.scenes:
        sources.append((settings.resolve(s.image), s.role, s.label_files(names)))
    if settings.data.synthetic is not None:
        for image, truth, role in synthetic_sources(settings.data.synthetic, progress):
            sources.append((image, role, {c: [str(truth)] for c in names}))
    scenes: list[TrainScene] = []
    bands = settings.data.bands
    for i, (path, role, files) in enumerate(sources):
        scene = open_scene(i, path, role, files, settings, bands)
        if bands is None:
            bands = list(range(1, scene.count + 1))
        scenes.append(scene)
    return scenes


def check_classes(settings: TrainingSettings, scenes: Sequence[TrainScene]) -> None:
    """Every class has at least one labelled feature or mask pixel somewhere.

    Raises:
        ConfigError: naming the class and how it was selected.
    """
    for k, name in enumerate(settings.class_names):
        features = sum(len(s.classes[k].geoms) for s in scenes)
        mask_cells = sum(int(s.coarse[k].sum()) for s in scenes if s.coarse is not None)
        if features + mask_cells == 0:
            sel = settings.data.classes[k]
            how = f"field {sel.field!r} = {sel.value!r}" if sel.field else f"layer {sel.layer or '(auto)'}"
            raise ConfigError(
                f"{settings.source}: class {name!r} selects no feature in any label file ({how}) and no "
                "pixel of any mask; check data.classes, data.sources[].mask_classes and the label files"
            )


def bands_of(settings: TrainingSettings, scenes: Sequence[TrainScene]) -> list[int]:
    """The 1-based bands fed to the model."""
    return list(settings.data.bands or range(1, scenes[0].count + 1))


# -- normalization ---------------------------------------------------------------------------


def estimate_normalization(
    scenes: Sequence[TrainScene],
    rects: Sequence[Rect],
    bands: Sequence[int],
    cfg: NormalizationSettings,
    window: int,
    seed: int,
    use_nodata: bool = True,
) -> MeanStd | Percentile:
    """Per-band statistics from ``cfg.sample_windows`` random training windows (never a full scene).

    Valid pixels only; at most ``cfg.max_pixels`` per band, drawn at random. ``kind: auto``
    picks mean/std for 8-bit scenes and 2-98 percentiles otherwise.

    Raises:
        ConfigError: the sampled windows hold no valid pixel.
    """
    rng = np.random.default_rng([seed, 0, 5])
    refs = random_windows(rects, window, cfg.sample_windows, rng)
    chunks = []
    for ref in refs:
        raw, valid = scenes[ref.scene].read(ref, bands, use_nodata)
        chunks.append(raw[:, valid])
    px = np.concatenate(chunks, axis=1) if chunks else np.empty((len(bands), 0))
    if px.shape[1] == 0:
        raise ConfigError("the sampled training windows hold no valid pixel (all nodata); check the scenes' nodata")
    if px.shape[1] > cfg.max_pixels:
        px = px[:, rng.choice(px.shape[1], cfg.max_pixels, replace=False)]
    kind = cfg.kind
    if kind == "auto":
        kind = "meanstd" if all(scenes[i].dtype == "uint8" for i in {r.scene for r in rects}) else "percentile"
    return compute_normalization(px, kind, low_percentile=cfg.low_percentile, high_percentile=cfg.high_percentile)


# -- windows -> arrays -----------------------------------------------------------------------


def pixel_weights(valid: np.ndarray, gaps: np.ndarray, separation_weight: float = 1.0) -> np.ndarray:
    """Loss weights ``(h, w)`` float32: 0 on invalid pixels, ``separation_weight`` on gap pixels, else 1."""
    w = valid.astype(np.float32)
    if separation_weight != 1.0:
        w[gaps & valid] = separation_weight
    return w


def zoom_range(scene: TrainScene, aug: AugmentSettings) -> float:
    """Largest random zoom of ``scene``'s windows (1: none): ``augment.zoom``, or
    ``augment.zoom_unknown`` for a scene whose pixel size is unknown."""
    return aug.zoom if scene.gsd_known else max(aug.zoom, aug.zoom_unknown)


def load_window(
    scene: TrainScene,
    ref: WindowRef,
    bands: Sequence[int],
    norm: MeanStd | Percentile,
    *,
    use_nodata: bool = True,
    aug: AugmentSettings | None = None,
    rng: np.random.Generator | None = None,
    separation_weight: float = 1.0,
    per_class: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sample: normalized image ``(bands, h, w)``, label stack ``(classes, h, w)``
    and loss weights ``(h, w)`` (0 where invalid or unlabelled, see :func:`pixel_weights`),
    augmented if ``aug``.

    With augmentation, a window of a scene on a pixel-size grid is first zoomed by a random
    factor (log-uniform within :func:`zoom_range`): it covers more or less ground, read
    resampled to the same pixels. ``per_class`` returns weights ``(classes, h, w)`` instead,
    0 for the classes the scene does not label (multi-source runs).
    """
    if aug is not None and rng is not None:
        r = zoom_range(scene, aug)
        if r > 1.0:
            ref = dataclasses.replace(ref, zoom=float(np.exp(rng.uniform(-np.log(r), np.log(r)))))
    raw, valid = scene.read(ref, bands, use_nodata)
    x = prepare_input(raw, valid, norm)
    ids, unlabelled = scene.label_ids(ref)
    valid = valid & ~unlabelled
    if aug is not None and rng is not None:
        x, ids, valid = augment(x, ids, valid, rng, aug)
        x = np.ascontiguousarray(x, dtype=np.float32)
        x[:, ~valid] = 0.0
    # separation after the geometry: same rule in every frame
    y, gaps = split_stack(ids, scene.classes, masks=scene.mask is not None)
    w = pixel_weights(valid, gaps, separation_weight)
    if per_class:
        known = (
            np.ones(len(scene.classes), dtype=np.float32)
            if scene.known is None
            else np.asarray(scene.known, np.float32)
        )
        w = w[None] * known[:, None, None]
    return x, y, w


def load_batch(
    scenes: Sequence[TrainScene],
    refs: Sequence[WindowRef],
    bands: Sequence[int],
    norm: MeanStd | Percentile,
    *,
    use_nodata: bool,
    aug: AugmentSettings | None,
    seed: int,
    epoch: int,
    first: int,
    separation_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked ``(x, y, weights)`` of windows ``first, first + 1, ...`` of an epoch.

    Window ``j`` of epoch ``e`` is augmented with ``default_rng([seed, e, 17, j])``, so a
    batch is the same whichever thread builds it and whether or not the run was resumed.
    """
    keep_handles(min(2 * len(scenes), 256))  # one open handle per scene (and mask) on this thread
    per_class = any(s.partial for s in scenes)
    xs, ys, vs = [], [], []
    for j, ref in enumerate(refs):
        rng = np.random.default_rng([seed, epoch, 17, first + j])
        x, y, v = load_window(
            scenes[ref.scene],
            ref,
            bands,
            norm,
            use_nodata=use_nodata,
            aug=aug,
            rng=rng,
            separation_weight=separation_weight,
            per_class=per_class,
        )
        xs.append(x)
        ys.append(y)
        vs.append(v)
    return np.stack(xs), np.stack(ys), np.stack(vs)
