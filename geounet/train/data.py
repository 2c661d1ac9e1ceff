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
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.errors import RasterioError
from tqdm import tqdm

from geounet.atomic import write_text
from geounet.errors import ConfigError, SceneReadError
from geounet.scene.normalize import MeanStd, Percentile, compute_normalization
from geounet.scene.read import keep_handles, prepare_input, read_window
from geounet.scene.source import SCENE_DRIVER, SceneInfo
from geounet.synth import synthesize_scene
from geounet.train.augment import augment
from geounet.train.config import AugmentSettings, NormalizationSettings, SyntheticData, TrainingSettings
from geounet.train.labels import (
    ClassGeometries,
    id_stack,
    rasterize_window,
    read_class_geometries,
    split_stack,
    window_box,
)
from geounet.train.sampling import Rect, WindowRef, random_windows

log = logging.getLogger(__name__)


@dataclass
class TrainScene:
    """One raster with labels. ``index`` is its position in the run's scene list."""

    index: int
    path: Path
    role: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    has_mask: bool  # nodata, an alpha band or a mask marks invalid pixels in some band
    nodata: float | None = None
    classes: list[ClassGeometries] = field(default_factory=list)
    label_files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units squared."""
        t = self.transform
        return abs(t.a * t.e - t.b * t.d)

    def transform_of(self, ref: WindowRef) -> Affine:
        """Affine transform of a window (pixel -> CRS coordinates)."""
        return self.transform @ Affine.translation(ref.col, ref.row)

    @cached_property
    def _info(self) -> SceneInfo:
        return SceneInfo(
            path=str(self.path),
            stem=self.path.stem,
            width=self.width,
            height=self.height,
            count=self.count,
            dtype=self.dtype,
            crs_wkt=self.crs.to_wkt(),
            epsg=self.crs.to_epsg(),
            transform=tuple(self.transform)[:6],
            bands=tuple(range(1, self.count + 1)),
            nodata=self.nodata,
            has_mask=self.has_mask,
            fingerprint="",
        )

    def scene_info(self, bands: Sequence[int], use_nodata: bool = True) -> SceneInfo:
        """This scene as inference's reader takes it, reading ``bands`` (1-based).

        ``use_nodata`` false (``data.use_nodata``) ignores the scene's nodata, alpha and
        mask: every pixel is valid unless it is NaN. The fingerprint is left empty (training
        records its own in the provenance).
        """
        return dataclasses.replace(
            self._info, bands=tuple(int(b) for b in bands), has_mask=use_nodata and self.has_mask
        )

    def read(self, ref: WindowRef, bands: Sequence[int], use_nodata: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Raw pixels ``(bands, h, w)`` of a window inside the scene and its valid mask ``(h, w)``.

        Reads through :func:`geounet.scene.read.read_window` (inference's reader and
        validity rule: a pixel is invalid when it is nodata/masked in all of its bands, or
        NaN in any).

        Raises:
            SceneReadError: the pixels cannot be read (truncated or corrupt file).
        """
        return read_window(self.scene_info(bands, use_nodata), ref.window)

    def labels(self, ref: WindowRef, *, separate: bool | None = None) -> np.ndarray:
        """Label stack ``(classes, h, w)`` uint8 of a window, burned from the vectors."""
        return self.targets(ref, separate=separate)[0]

    def targets(self, ref: WindowRef, *, separate: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Label stack ``(classes, h, w)`` uint8 and separation gaps ``(h, w)`` bool of a window."""
        return rasterize_window(self.classes, self.transform_of(ref), (ref.height, ref.width), separate=separate)

    def presence(self, refs: Sequence[WindowRef], min_pixels: int) -> np.ndarray:
        """``(len(refs), classes)`` bool: the window holds at least ``min_pixels`` px of the class.

        Computed from vector intersection areas (no rasterization): one STRtree query per class.
        """
        out = np.zeros((len(refs), len(self.classes)), dtype=bool)
        if not refs:
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
    jobs = [("train", cfg.train), ("val", cfg.val)]
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
    except RasterioError as exc:
        raise SceneReadError(path, f"cannot be opened as a GeoTIFF: {exc}") from None
    want = bands or list(range(1, scene.count + 1))
    if max(want) > scene.count:
        raise ConfigError(
            f"{settings.source}: data.bands {list(want)} asks for band {max(want)} but {path} has {scene.count} bands"
        )
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
    for k, name in enumerate(names):
        if sum(len(s.classes[k].geoms) for s in scenes) == 0:
            sel = settings.data.classes[k]
            how = f"field {sel.field!r} = {sel.value!r}" if sel.field else f"layer {sel.layer or '(auto)'}"
            raise ConfigError(
                f"{settings.source}: class {name!r} selects no feature in any label file ({how}); "
                "check data.classes and the label files"
            )
    return scenes


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sample: normalized image ``(bands, h, w)``, label stack ``(classes, h, w)``
    and loss weights ``(h, w)`` (0 where invalid, see :func:`pixel_weights`), augmented if ``aug``."""
    raw, valid = scene.read(ref, bands, use_nodata)
    x = prepare_input(raw, valid, norm)
    ids = id_stack(scene.classes, scene.transform_of(ref), (ref.height, ref.width))
    if aug is not None and rng is not None:
        x, ids, valid = augment(x, ids, valid, rng, aug)
        x = np.ascontiguousarray(x, dtype=np.float32)
        x[:, ~valid] = 0.0
    y, gaps = split_stack(ids, scene.classes)  # separation after the geometry: same rule in every frame
    return x, y, pixel_weights(valid, gaps, separation_weight)


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
    keep_handles(len(scenes))  # one open handle per scene on this thread
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
        )
        xs.append(x)
        ys.append(y)
        vs.append(v)
    return np.stack(xs), np.stack(ys), np.stack(vs)
