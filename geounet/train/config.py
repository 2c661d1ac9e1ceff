"""Typed training settings: what ``geounet train CONFIG`` reads (see ``configs/training.yaml``).

Every field says its meaning and unit. The file is validated before any work starts: an
unknown key, a wrong type or an out-of-range value fails with a message naming the file,
the key, the value and what is allowed (:func:`load_training_settings`). Command-line
flags win over the file (dotted keys such as ``optim.epochs``).

Relative paths in the file are taken from the current directory, or from the config file's
folder when they do not exist relative to the current directory (the convention of
``workflows/segment-scenes.yaml``). Outputs are always relative to the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from geounet.checkpoint.metadata import is_road_name
from geounet.config import StrictModel, load_config
from geounet.errors import ConfigError
from geounet.settings import Device, Precision

Mode = Literal["binary", "multilabel", "multiclass"]
Role = Literal["auto", "train", "val"]
BestMetric = Literal["score", "building_f1", "mean_iou", "val_loss"]
LabelPaths = str | list[str] | dict[str, str | list[str]]


# -- data -----------------------------------------------------------------------------------


class ClassLabels(StrictModel):
    """How the features of one class are selected from the label files."""

    name: str = Field(min_length=1)
    """Class name stored in the checkpoint (``building``, ``road``...)."""
    layer: str | None = None
    """Layer of the label file holding this class. None: the file's only layer, else a layer
    named like the class (``building``/``buildings``); a file with several other layers is an error."""
    field: str | None = None
    """Attribute whose value selects this class's features, e.g. ``Niveau_2``. None: every feature of the layer."""
    value: str | int | float | list[str | int | float] | None = None
    """Value(s) of ``field`` selecting the class, e.g. ``Building`` (text compared case-insensitively)."""
    width_m: float | None = Field(None, gt=0, le=1000)
    """Width of line features (road centerlines), metres; lines are buffered by half of it.
    Also the fallback where ``width_field`` is empty. Points are buffered likewise."""
    width_field: str | None = None
    """Attribute holding each line's width in metres (e.g. ``width_m``); empty values use ``width_m``."""
    linear: bool | None = None
    """Trace this class as a centerline graph at inference (road networks: LineStrings between
    junctions and dead ends). None: true for classes named like roads (``road``, ``roads``)."""
    separate_touching: bool = False
    """Burn a background line where two features of this class touch, so that attached
    buildings (terraced houses) are predicted, and polygonized, as separate objects. Vector
    labels only: raster masks carry no outlines (see ``mask_gap_px``)."""
    separation_px: int = Field(1, ge=1, le=2)
    """Width of that line, pixels (1: cut from one of the two features; 2: from both)."""
    mask_gap_px: int = Field(0, ge=0, le=4)
    """Raster masks: background pixels with pixels of two separate regions of this class within
    this many pixels (the narrow gaps between neighbouring buildings) weigh
    ``loss.separation_weight``, as separation lines do. 0: off."""

    @model_validator(mode="after")
    def _field_and_value(self) -> ClassLabels:
        if (self.field is None) != (self.value is None):
            raise ValueError(
                f"class {self.name!r}: 'field' ({self.field!r}) and 'value' ({self.value!r}) go "
                "together; give both to select features by attribute, or neither to take the whole layer"
            )
        return self

    @property
    def values(self) -> list[str | int | float]:
        """``value`` as a list (empty when no field selection)."""
        if self.value is None:
            return []
        return list(self.value) if isinstance(self.value, list) else [self.value]


class SceneSource(StrictModel):
    """One raster scene and its vector labels."""

    image: str
    """GeoTIFF path (any CRS, any numeric dtype)."""
    labels: LabelPaths
    """Vector label file(s) (GeoJSON, GeoPackage, any CRS: reprojected to the raster's CRS).
    One path or a list serves every class; a mapping ``{class: path or list}`` gives each class its own files."""
    role: Role = "auto"
    """train | val: the whole scene is training or validation data; auto: split spatially (see ``split``)."""

    def label_files(self, classes: list[str]) -> dict[str, list[str]]:
        """Label files per class, in canonical form."""
        if isinstance(self.labels, dict):
            unknown = sorted(set(self.labels) - set(classes))
            if unknown:
                raise ConfigError(
                    f"scene {self.image}: labels name classes {unknown} that are not in data.classes "
                    f"{classes}; use the class names as keys"
                )
            return {c: _as_list(self.labels.get(c, [])) for c in classes}
        files = _as_list(self.labels)
        return {c: list(files) for c in classes}


def _as_list(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


RGB = tuple[int, int, int]


class MaskClasses(StrictModel):
    """How the pixel values of raster masks map to classes (value masks or colour-coded masks)."""

    values: dict[str, int | list[int]] = Field(default_factory=dict)
    """Class -> mask value(s) of the mask's first band, e.g. ``{building: 255}``."""
    colors: dict[str, RGB | list[RGB]] = Field(default_factory=dict)
    """Class -> RGB colour(s) of a colour-coded mask's first three bands, e.g. ``{road: [110, 193, 228]}``."""
    ignore_values: list[int] = Field(default_factory=list)
    """Mask values whose pixels are not scored at all (unlabelled), e.g. ``[128]``."""
    ignore_colors: list[RGB] = Field(default_factory=list)
    """RGB colours whose pixels are not scored at all, e.g. ``[[155, 155, 155]]``."""

    @model_validator(mode="after")
    def _one_kind(self) -> MaskClasses:
        if not self.values and not self.colors:
            raise ValueError("give 'values' (class -> mask value) or 'colors' (class -> [r, g, b])")
        if (self.values or self.ignore_values) and (self.colors or self.ignore_colors):
            raise ValueError("a mask is either value-coded ('values') or colour-coded ('colors'), not both")
        for name, c in self.colors.items():
            for rgb in _colour_list(c):
                if any(not 0 <= v <= 65535 for v in rgb):
                    raise ValueError(f"colour {list(rgb)} of class {name!r} must hold three values 0-65535")
        return self

    @property
    def classes(self) -> list[str]:
        """Classes this mask labels."""
        return list(self.values) + list(self.colors)

    def values_of(self, name: str) -> list[int]:
        v = self.values.get(name, [])
        return [v] if isinstance(v, int) else list(v)

    def colors_of(self, name: str) -> list[RGB]:
        return _colour_list(self.colors.get(name, []))


def _colour_list(c: RGB | list[RGB]) -> list[RGB]:
    if isinstance(c, tuple):
        return [c]
    return [tuple(x) for x in c]  # type: ignore[misc]


GsdSpec = float | Literal["auto", "unknown"]


class ImageSource(StrictModel):
    """A set of images with labels, as data sets come: georeferenced scenes or chips, or
    image/mask pairs without georeferencing, each image one training scene.

    Example (colour-coded PNG masks beside JPEG images, pixel size not documented)::

        - name: dubai
          images: ../shared/data/real/dubai-hitl/dataset/Tile */images/*.jpg
          masks: "{dir}/../masks/{stem}.png"
          mask_classes: {colors: {building: [60, 16, 152], road: [110, 193, 228]}}
          gsd_m: unknown
          area: "dubai/{grandparent}"
    """

    name: str = Field(min_length=1)
    """Source name for logs, the model card and the default area."""
    images: str
    """Glob of image files (GeoTIFF, PNG or JPEG), relative to the current directory or the config's folder."""
    masks: str | None = None
    """Mask of each image: a path template with ``{dir}`` (the image's folder), ``{stem}`` (its
    name without extension, after ``stem_sub``) and ``{name}``; e.g. ``{dir}/../gt/{stem}.tif``."""
    stem_sub: tuple[str, str] | None = None
    """Regular expression and replacement applied to the image stem before ``masks`` is filled,
    e.g. ``["^image", "label"]`` pairs image7.png with label7.png."""
    mask_classes: MaskClasses | None = None
    """How mask values map to classes (required with ``masks``)."""
    labels: LabelPaths | None = None
    """Vector label files instead of masks (georeferenced images only), as ``data.scenes[].labels``."""
    gsd_m: GsdSpec = "auto"
    """Ground pixel size, metres: a number declares it; auto reads it from the georeferencing
    (an error for images without); unknown: taken as ``data.gsd_m`` and zoomed more widely in training
    (``augment.zoom_unknown``)."""
    bands: list[int] | None = None
    """1-based bands of this source's images fed to the model; None: ``data.bands``."""
    value_scale: float = Field(1.0, gt=0.0)
    """Factor applied to this source's raw pixel values before normalization (e.g. 1/257 brings
    16-bit imagery to the 8-bit range of the other sources)."""
    weight: float = Field(1.0, gt=0.0, le=1000.0)
    """Relative share of training windows drawn from this source (whatever its pixel count)."""
    area: str = "{source}"
    """Area of each image, for area-held-out validation (``split.val_areas``): a template with
    ``{source}``, ``{parent}`` (the image's folder name), ``{grandparent}`` and ``{stem}``."""
    role: Role = "auto"
    """train | val for the whole source; auto: by ``split.val_areas`` (else training)."""
    limit: int | None = Field(None, ge=1)
    """Take at most this many images (sorted by path), e.g. for a quick run."""
    mosaic: bool = False
    """Join georeferenced chips that touch (same CRS, pixel size, grid, bands and area) into one
    scene each, written once to ``<output.dir>/mosaics/``: windows then see the chips'
    surroundings instead of nodata around one chip. Vector labels only."""
    terms: str | None = None
    """Licence or terms of the data as far as known (recorded in the checkpoint, shown by ``geounet info``)."""
    attribution: str | None = None
    """Credit the data asks for wherever the model is used (recorded and shown likewise)."""

    def labelled_classes(self, classes: list[str]) -> list[str]:
        """The classes this source labels (the others are not scored on its images): the
        mask's classes, the keys of a ``labels`` mapping, or every class."""
        if self.mask_classes is not None:
            return [c for c in classes if c in self.mask_classes.classes]
        if isinstance(self.labels, dict):
            return [c for c in classes if c in self.labels]
        return list(classes)

    @model_validator(mode="after")
    def _labels(self) -> ImageSource:
        if (self.masks is None) == (self.labels is None):
            raise ValueError(
                f"source {self.name!r}: give 'masks' (raster masks) or 'labels' (vector files), one of them"
            )
        if self.masks is not None and self.mask_classes is None:
            raise ValueError(f"source {self.name!r}: 'masks' needs 'mask_classes' (which values are which class)")
        if self.mosaic and self.masks is not None:
            raise ValueError(
                f"source {self.name!r}: 'mosaic' joins georeferenced chips with vector labels; "
                "it does not apply to 'masks' (drop mosaic, or give the labels as vector files)"
            )
        if self.labels is not None and self.gsd_m == "unknown":
            raise ValueError(
                f"source {self.name!r}: vector labels need georeferenced images; gsd_m 'unknown' cannot apply"
            )
        return self


class SyntheticPart(StrictModel):
    """A run of synthetic scenes: scene i has seed ``seed + i``."""

    n: int = Field(ge=1, le=10_000)
    """Number of scenes."""
    seed: int = Field(ge=0)
    """Seed of the first scene; the scenes use seeds seed .. seed + n - 1."""


class SyntheticData(StrictModel):
    """Synthetic scenes generated by :mod:`geounet.synth` (what ``geounet synth`` writes) before training."""

    dir: str
    """Folder the scenes are written to; scenes already there with the same options are reused."""
    size: int = Field(1024, ge=64, le=16384)
    """Scene width and height, pixels."""
    prefix: str = "synth"
    """File name prefix: scenes are <prefix>_train_0000.tif, <prefix>_val_0000.tif, ..."""
    train: SyntheticPart
    """Training scenes (their seeds must not overlap the validation or test seeds)."""
    val: SyntheticPart | None = None
    """Validation scenes, used to pick the best epoch. None: no synthetic validation scene (the
    synthetic scenes rehearse what a model learned on them while the best epoch is chosen on the
    real validation areas of ``data.sources``)."""
    weight: float = Field(1.0, gt=0.0, le=1000.0)
    """Share of training windows of the synthetic scenes (with any ``data.scenes``) beside
    ``data.sources``, relative to the sources' ``weight``."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Further keywords of geounet.synth.synthesize_scene (crs, resolution, bands, dtype,
    building_density, road_spacing_m, tree_density, nodata, nodata_border)."""

    @model_validator(mode="after")
    def _disjoint(self) -> SyntheticData:
        a = range(self.train.seed, self.train.seed + self.train.n)
        b = range(self.val.seed, self.val.seed + self.val.n) if self.val is not None else range(0)
        if b and a.start < b.stop and b.start < a.stop:
            raise ValueError(
                f"train seeds {a.start}..{a.stop - 1} and val seeds {b.start}..{b.stop - 1} overlap, so "
                "validation scenes would repeat training scenes; move val.seed past the training seeds"
            )
        forbidden = {"name", "width", "height", "seed", "out_dir", "overwrite", "progress"}
        bad = sorted(forbidden & set(self.options))
        if bad:
            raise ValueError(f"options {bad} are set by the synthetic set itself (size, seeds, names); remove them")
        return self


class DataSettings(StrictModel):
    """Where the training data comes from and how labels are selected."""

    classes: list[ClassLabels] = Field(min_length=1)
    """Classes in model output order; each says how its features are selected."""
    scenes: list[SceneSource] = Field(default_factory=list)
    """Scenes with labels; may be combined with ``synthetic`` and ``sources``."""
    sources: list[ImageSource] = Field(default_factory=list)
    """Image sets with raster masks or vector labels, each with its own pixel size, bands,
    class mapping and sampling weight (see :class:`ImageSource`)."""
    gsd_m: float | None = Field(None, gt=0.0, le=10_000.0)
    """Ground pixel size the model is trained at, metres, stored in the checkpoint (inference
    resamples scenes to it). Every window is read resampled to it. None: every scene is read
    at its own pixel size and the checkpoint records none."""
    synthetic: SyntheticData | None = None
    """Generate synthetic scenes and train on them."""
    bands: list[int] | None = None
    """1-based raster bands fed to the model, in order. None: every band of the first scene."""
    use_nodata: bool = True
    """Pixels that are nodata (or masked) in all their bands are ignored by the loss and metrics."""

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(b < 1 for b in v) or len(set(v)) != len(v)):
            raise ValueError(f"bands {v} must be a non-empty list of distinct 1-based band indexes")
        return v

    @model_validator(mode="after")
    def _check(self) -> DataSettings:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names {names} must be unique")
        if not self.scenes and self.synthetic is None and not self.sources:
            raise ValueError("no training data: give 'scenes' or 'sources' (images with labels) and/or 'synthetic'")
        for src in self.sources:
            unknown = sorted(set(src.mask_classes.classes if src.mask_classes else []) - set(names))
            if unknown:
                raise ValueError(f"source {src.name!r}: mask_classes name {unknown}, not in data.classes {names}")
            if src.gsd_m == "unknown" and self.gsd_m is None:
                raise ValueError(f"source {src.name!r} has gsd_m 'unknown': set data.gsd_m (the model's pixel size)")
        seen = [s.name for s in self.sources]
        if len(set(seen)) != len(seen):
            raise ValueError(f"source names {seen} must be unique")
        return self


# -- sampling, split, augmentation ----------------------------------------------------------


class SamplingSettings(StrictModel):
    """Random training windows and class-balanced sampling."""

    window: int = Field(256, ge=16, le=4096)
    """Side of a training window, pixels."""
    windows_per_epoch: int = Field(512, ge=1)
    """Training windows drawn per epoch."""
    batch_size: int = Field(8, ge=1, le=1024)
    """Windows per optimizer step."""
    balance: float = Field(0.5, ge=0.0, le=1.0)
    """Class balancing in [0, 1]: 0 draws windows uniformly over the training area; 1 makes
    every class equally likely to be the reason a window is drawn (windows holding rare
    classes are oversampled); values between mix the two."""
    candidates: int = Field(8, ge=1, le=100)
    """Candidate windows examined per drawn window (balancing picks among them)."""
    min_class_pixels: int = Field(64, ge=1)
    """Pixels of a class a window must hold for that class to count as present in it."""


class SplitSettings(StrictModel):
    """Spatial train/validation split of scenes whose role is ``auto``."""

    kind: Literal["strip", "checkerboard", "scenes"] = "strip"
    """strip: the far end of each scene along its longer side is validation; checkerboard:
    square cells, a seeded random ``val_fraction`` of them validation; scenes: no split,
    ``auto`` scenes are training and validation comes from scenes with role ``val``."""
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each scene (strip) or of the cells (checkerboard) used for validation."""
    cell: int = Field(1024, ge=32)
    """Checkerboard cell side, pixels."""
    val_areas: list[str] = Field(default_factory=list)
    """Areas (``data.sources[].area``, shell patterns such as ``dubai/Tile 7``) held out whole for
    validation, so the validation score measures generalization to unseen areas."""
    gap: int | None = Field(None, ge=0)
    """Pixels left unused between training and validation areas; None: the window size.
    Must be at least the window size, so no training window sees validation pixels' neighbourhood."""


class AugmentSettings(StrictModel):
    """Random augmentation of training windows (geometric ones move image and labels together)."""

    flip: bool = True
    """Random horizontal and vertical flips."""
    rotate90: bool = True
    """Random rotation by a multiple of 90 degrees."""
    elastic_p: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of an elastic deformation per window."""
    elastic_alpha: float = Field(20.0, ge=0.0)
    """Largest elastic displacement scale, pixels."""
    elastic_sigma: float = Field(8.0, gt=0.0)
    """Smoothness of the elastic displacement field (Gaussian sigma), pixels."""
    brightness: float = Field(0.1, ge=0.0)
    """Largest brightness shift, in units of the normalized image (about one standard deviation = 1)."""
    contrast: float = Field(0.1, ge=0.0, lt=1.0)
    """Largest relative contrast change (0.1: factor 0.9 to 1.1 around the window mean)."""
    gamma: float = Field(0.1, ge=0.0, lt=1.0)
    """Largest gamma change in log units (0.1: gamma 0.905 to 1.105), applied to the window's own range."""
    grayscale_p: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of replacing every band by the mean of the bands."""
    band_jitter: float = Field(0.0, ge=0.0, lt=1.0)
    """Largest independent change of each band, normalized units: gain in [1 - j, 1 + j] and
    shift in [-j, j] drawn per band (another sensor's colour balance); 0 turns it off."""
    blur_p: float = Field(0.0, ge=0.0, le=1.0)
    """Probability of a Gaussian blur per window (softer optics, resampled imagery)."""
    blur_sigma: float = Field(1.0, gt=0.0, le=8.0)
    """Largest blur (Gaussian sigma, drawn uniformly from [0.3, blur_sigma]), pixels."""
    coarsen_p: float = Field(0.0, ge=0.0, le=1.0)
    """Probability per window of simulating a coarser scene: the window averaged down to a pixel
    size ``f`` times larger and read back bilinearly, as inference reads a scene coarser than
    the model's pixel size."""
    coarsen_max: float = Field(4.0, gt=1.0, le=8.0)
    """Largest coarsening factor ``f`` (drawn log-uniform in [1.25, coarsen_max]); 4: a 2 m scene
    seen by a 0.5 m model."""
    zoom: float = Field(1.0, ge=1.0, le=4.0)
    """Largest random zoom around ``data.gsd_m`` (log-uniform in [1/zoom, zoom]; 1.25: pixel
    sizes 0.8x to 1.25x the target), so a model tolerates the spread of real pixel sizes.
    Needs ``data.gsd_m``."""
    zoom_unknown: float = Field(1.5, ge=1.0, le=4.0)
    """Largest random zoom for sources whose pixel size is unknown (``gsd_m: unknown``)."""


# -- model, optimizer, loss -----------------------------------------------------------------


class ModelSettings(StrictModel):
    """The network to train (see ``geounet.models``)."""

    arch: str = "unet"
    """Architecture registry name: unet, attention_unet, resunet, unet_plus_plus."""
    width: int = Field(16, ge=1, le=256)
    """Channels of the first stage; stage i has width * 2**i."""
    depth: int = Field(4, ge=1, le=6)
    """Number of 2x2 poolings."""
    mode: Mode = "multilabel"
    """binary (one class), multilabel (independent sigmoids) or multiclass (softmax with background)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Architecture-specific extras."""
    init: str | None = None
    """Start from this checkpoint's weights (fine-tuning): a shipped model's name (``default``,
    ``synthetic``) or a path. Its architecture is used (leave arch, width, depth and options
    out, or give its values), its input normalization kept; the output head starts afresh when
    ``data.classes`` or ``mode`` differ from its own. None: random weights."""


class OptimSettings(StrictModel):
    """AdamW, a learning-rate schedule and gradient clipping."""

    epochs: int = Field(20, ge=1, le=100_000)
    """Number of epochs."""
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    """Peak learning rate."""
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    """AdamW decoupled weight decay."""
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    """onecycle: cosine warm-up from lr/25 to lr, then cosine decay to lr/1e4; cosine: linear
    warm-up from 0, then cosine decay to 0; constant: lr throughout."""
    warmup: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of all steps spent warming up."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Largest global L2 norm of the gradients; 0 turns clipping off."""
    ema: float = Field(0.0, ge=0.0, lt=1.0)
    """Decay per optimizer step of an exponential moving average of the weights and BatchNorm
    statistics; 0 turns it off. With it, validation scores the average and ``best.safetensors``
    holds it (0.99: about the last 100 steps weigh), which smooths the epoch-to-epoch swings a
    small validation set picks among; ``last.safetensors`` keeps the trained weights for
    ``--resume``, its state sidecar the average."""


class LossSettings(StrictModel):
    """Weights of the loss terms (BCE+Dice for binary/multilabel, CE+Dice for multiclass)."""

    ce_weight: float = Field(1.0, ge=0.0)
    """Weight of the (binary) cross-entropy term."""
    dice_weight: float = Field(1.0, ge=0.0)
    """Weight of the soft Dice term; 0 turns it off."""
    separation_weight: float = Field(1.0, ge=0.0, le=1000.0)
    """Loss weight of the pixels of separation lines (see data.classes[].separate_touching)
    and of the narrow gaps of raster masks (data.classes[].mask_gap_px), relative to 1 for
    every other valid pixel; > 1 teaches the model to draw those thin lines."""
    class_weights: dict[str, float] = Field(default_factory=dict)
    """Per-class weight of positives (binary/multilabel: BCE pos_weight) or of the class
    (multiclass: cross-entropy weight); missing classes weigh 1."""


class NormalizationSettings(StrictModel):
    """Per-band input statistics, computed from sampled training windows and stored in the checkpoint."""

    kind: Literal["auto", "meanstd", "percentile"] = "auto"
    """meanstd: (x - mean) / std; percentile: (x - low) / (high - low) clipped to [0, 1]
    (robust for 16-bit imagery); auto: meanstd for 8-bit scenes, percentile otherwise."""
    low_percentile: float = Field(2.0, ge=0.0, lt=100.0)
    """Lower percentile for percentile normalization, percent."""
    high_percentile: float = Field(98.0, gt=0.0, le=100.0)
    """Upper percentile for percentile normalization, percent."""
    sample_windows: int = Field(64, ge=1)
    """Training windows read to estimate the statistics (never the full scene)."""
    max_pixels: int = Field(1_000_000, ge=100)
    """Valid pixels (per band) kept at most, drawn at random from those windows."""


class ValidationSettings(StrictModel):
    """Per-epoch validation on the validation area and the choice of the best checkpoint."""

    tile: int = Field(512, ge=16, le=8192)
    """Side of the tiles the validation area is cut into and predicted whole, pixels."""
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Probability threshold of binary/multilabel masks (also stored in the checkpoint)."""
    building_class: str | None = "building"
    """Class scored with the building F1 (predicted tiles polygonized, matched at IoU >= iou);
    None or a class not trained: no building F1."""
    iou: float = Field(0.5, gt=0.0, le=1.0)
    """Minimum IoU of a building match."""
    min_area_px: float = Field(0.0, ge=0.0)
    """Buildings smaller than this many pixels are ignored on both sides of the F1."""
    best_metric: BestMetric = "score"
    """Metric choosing the best checkpoint: score (mean of the building F1 and the pixel IoU
    of every other class), building_f1, mean_iou (mean pixel IoU of the classes) or val_loss
    (the only one that is minimized)."""
    max_tiles: int | None = Field(None, ge=1)
    """Validate on at most this many tiles (evenly spread); None: all of the validation area."""
    calibrate: list[float] = Field(default_factory=list)
    """Candidate probability thresholds (0-1) tried with the best checkpoint on the validation
    tiles after the last epoch: each class gets the one with its best score (the building class
    by object F1, the others by pixel IoU), stored in the checkpoint as the threshold inference
    uses. Empty: every class keeps ``threshold``."""

    @field_validator("calibrate")
    @classmethod
    def _check_calibrate(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not 0.0 < t < 1.0]
        if bad:
            raise ValueError(f"thresholds {bad} must lie strictly between 0 and 1, e.g. [0.3, 0.4, 0.5]")
        return v


class ComputeSettings(StrictModel):
    """Device, precision, threads and seed."""

    device: Device = "auto"
    """auto: CUDA when visible, else CPU."""
    precision: Precision = "auto"
    """Autocast precision; auto: bf16 where the device runs it natively (CUDA, CPU with AVX-512 BF16/AMX), else fp32."""
    threads: int | None = Field(None, ge=1, le=1024)
    """Torch CPU threads; None: torch's default (the machine's cores)."""
    seed: int = Field(0, ge=0)
    """Seed of weights, windows and augmentation: the same seed and data give the same run."""
    prefetch: bool = True
    """Prepare the next batch in a background thread while the model trains."""


class OutputSettings(StrictModel):
    """Where the run writes."""

    dir: str = "runs/train"
    """Output folder: best.safetensors, last.safetensors (+ .state.json/.state.safetensors), log.csv, curves.png."""
    export: str | None = None
    """Also copy the best checkpoint to this path at the end (e.g. geounet/weights/default.safetensors)."""
    overwrite: bool = False
    """Start afresh in a folder that holds an earlier run (otherwise that is an error; use --resume to continue)."""


class TrainingSettings(StrictModel):
    """Everything ``geounet train`` needs; one section per concern."""

    data: DataSettings
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    split: SplitSettings = Field(default_factory=SplitSettings)
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    loss: LossSettings = Field(default_factory=LossSettings)
    normalization: NormalizationSettings = Field(default_factory=NormalizationSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)

    _source: str = PrivateAttr(default="settings")
    _base: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSettings:
        names = [c.name for c in self.data.classes]
        if self.model.mode == "binary" and len(names) != 1:
            raise ValueError(
                f"model.mode 'binary' takes exactly one class, data.classes has {names}; "
                "use mode multilabel or multiclass"
            )
        gap = self.gap
        if gap < self.sampling.window:
            raise ValueError(
                f"split.gap = {gap} px is smaller than sampling.window = {self.sampling.window} px; "
                "training windows could then border validation pixels: use a gap >= the window"
            )
        gapped = [c.name for c in self.data.classes if c.mask_gap_px > 0]
        if gapped and self.loss.separation_weight == 1.0:
            raise ValueError(
                f"data.classes {gapped} set mask_gap_px, but loss.separation_weight is 1.0, so the gaps weigh "
                "what every pixel weighs: set loss.separation_weight above 1 (e.g. 10) or mask_gap_px: 0"
            )
        unknown = sorted(set(self.loss.class_weights) - set(names))
        if unknown:
            raise ValueError(f"loss.class_weights names classes {unknown} not in data.classes {names}")
        if self.validation.best_metric == "building_f1" and self.validation.building_class not in names:
            raise ValueError(
                f"validation.best_metric 'building_f1' needs validation.building_class "
                f"({self.validation.building_class!r}) to be one of data.classes {names}"
            )
        partial = [src.name for src in self.data.sources if set(src.labelled_classes(names)) != set(names)]
        if partial and self.model.mode == "multiclass":
            raise ValueError(
                f"sources {partial} label only some of the classes {names}; multiclass training needs every "
                "class labelled everywhere: use model.mode multilabel (unlabelled classes are then not scored)"
            )
        if self.augment.zoom > 1.0 and self.data.gsd_m is None:
            raise ValueError("augment.zoom > 1 zooms around data.gsd_m: set data.gsd_m (metres) or zoom 1")
        if self.normalization.low_percentile >= self.normalization.high_percentile:
            raise ValueError(
                f"normalization.low_percentile {self.normalization.low_percentile} must be below "
                f"high_percentile {self.normalization.high_percentile}"
            )
        return self

    @property
    def gap(self) -> int:
        """Pixels between training and validation areas."""
        return self.split.gap if self.split.gap is not None else self.sampling.window

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.data.classes]

    @property
    def linear_classes(self) -> list[str]:
        """Classes traced as centerline graphs at inference (``linear``, else named like roads)."""
        return [c.name for c in self.data.classes if (c.linear if c.linear is not None else is_road_name(c.name))]

    @property
    def source(self) -> str:
        """The config file (or 'settings') these settings came from, for messages."""
        return self._source

    def resolve(self, path: str) -> Path:
        """An input path: as given if it exists (or is absolute), else relative to the config's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or p.exists() or self._base is None:
            return p
        cand = self._base / p
        return cand if cand.exists() else p


def load_training_settings(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainingSettings:
    """Read and validate a training config; ``overrides`` (dotted keys, None = not given) win.

    Raises:
        ConfigError: naming the file, the key, the value and what is allowed.
    """
    settings = load_config(TrainingSettings, path, overrides)
    if path is not None:
        settings._source = str(path)
        settings._base = Path(path).resolve().parent
    return settings
