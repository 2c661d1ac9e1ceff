"""Typed settings: inference and outputs (the ``inference:`` section of configs), the
workflow of a batch run and its Dask cluster.

Every field documents its meaning and unit; ``configs/inference.yaml`` repeats them as
comments. ``None`` means "take it from the checkpoint or the machine".
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, field_validator

from geounet.config import StrictModel

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
OutputFormat = Literal["geojson", "gpkg", "probability", "quicklook", "stac"]
ALL_FORMATS: tuple[OutputFormat, ...] = ("geojson", "gpkg", "probability", "quicklook", "stac")


class CenterlineSettings(StrictModel):
    """Road networks: how the masks of linear classes become centerline graphs (lengths in
    metres, so results do not depend on the pixel size or the block grid)."""

    enabled: bool = True
    """Trace the checkpoint's linear classes (roads) as centerline graphs (road_centerlines.geojson,
    GeoPackage layers <class>_centerlines and <class>_nodes)."""
    classes: list[str] | None = None
    """Classes traced as graphs. None: the checkpoint's linear classes (classes named like roads)."""
    fill_holes_m2: float = Field(30.0, ge=0)
    """Holes in the road mask smaller than this area, square metres, are filled before thinning
    (a car or a tree's shadow on the road would otherwise split it into a loop)."""
    max_hole_side_m: float = Field(10.0, ge=0)
    """... and only holes whose bounding box is at most this long on both sides, metres."""
    min_spur_m: float = Field(10.0, ge=0)
    """Dead-end edges shorter than this hanging on a junction are pruned, metres (thinning
    leaves such spurs at the corners of wide roads)."""
    min_length_m: float = Field(20.0, ge=0)
    """Connected pieces of network shorter than this in total are dropped, metres."""
    bridge_m: float = Field(15.0, ge=0)
    """Join dead ends facing each other across a gap shorter than this, metres; 0: off (15 m
    raised APLS on held-out Dubai from 0.089 to 0.138, benchmarks/RESULTS.md)."""
    simplify_m: float = Field(1.0, ge=0)
    """Douglas-Peucker tolerance of the centerlines, metres; 0: every pixel centre."""
    max_width_m: float = Field(40.0, gt=0, le=1000)
    """Widest road traced exactly across block seams, metres: sets the overlap of the windows
    the graph is traced in (wider blobs, e.g. parking lots, may differ at a seam)."""


class RegularizeSettings(StrictModel):
    """Building outlines: pixel staircases become regular outlines (edges along each building's
    dominant directions, right angles, small steps removed) with ``buildingregulariser``; an
    outline is kept only where it stays close to the pixel one (lengths in metres, so results
    do not depend on the pixel size or the block grid)."""

    enabled: bool = True
    """Regularize the outlines of the building classes; the pixel outlines stay in the GeoPackage
    as layers <class>_raw (e.g. buildings_raw)."""
    classes: list[str] | None = None
    """Classes regularized. None: the classes named like buildings (building, buildings, *_building(s))."""
    simplify_m: float | None = Field(None, gt=0, le=100)
    """Douglas-Peucker tolerance applied before the edges are snapped to the directions, metres
    (removes the pixel stairs and the mask's noise). None: three times the scene's ground pixel size."""
    min_step_m: float = Field(1.0, ge=0, le=100)
    """Offsets between two parallel walls narrower than this are removed (the walls become one
    straight wall), metres."""
    rectangle_iou: float = Field(0.9, gt=0, le=1)
    """An outline within this IoU of its fitted rectangle becomes that rectangle without the
    library (0-1; most buildings are rectangles, and the fit is ~50x faster); 1: only exact
    rectangles do."""
    orthogonal: bool = True
    """Outlines whose walls all run along the building's two directions (L, T, U shapes) get
    right-angled outlines without the library where the acceptance gate takes them (about 50x
    faster); off: the library regularizes every outline that is no rectangle."""
    allow_45: bool = True
    """Edges may also run at 45 degrees to the dominant direction, where the outline clearly does."""
    diagonal_reduction_deg: float = Field(15.0, ge=0, le=22.5)
    """How much clearer an edge must be diagonal before it snaps to 45 degrees instead of 0 or 90,
    degrees (0: the nearest of the three; 22.5: never diagonal)."""
    allow_circles: bool = False
    """Outlines within IoU 0.9 of a circle become circles (storage tanks); off: they get straight edges."""
    min_iou: float = Field(0.8, gt=0, le=1)
    """A regularized outline replaces the pixel one only if their intersection over union is at
    least this (0-1); else the pixel outline is kept."""
    area_tolerance: float = Field(0.2, ge=0, le=1)
    """... and only if its area differs from the pixel outline's by at most this fraction (0.2: 20 %)."""


class SeparateSettings(StrictModel):
    """Touching buildings apart: a connected region of a building class's mask holding two or
    more seeds (interior pixels of high probability) is split by a watershed over the
    probability, so each building is its own polygon (lengths in metres, so results do not
    depend on the pixel size or the block grid)."""

    enabled: bool = True
    """Split touching buildings (the separation lines models trained with separate_touching draw)."""
    classes: list[str] | None = None
    """Classes split. None: the classes named like buildings (building, buildings, *_building(s))."""
    seed_threshold: float = Field(0.7, gt=0, le=1)
    """Probability a pixel needs to seed a building (0-1; never below the class's threshold).
    0.7 with 25 m2 seeds kept the most F1 in a sweep on synthetic scenes (benchmarks/RESULTS.md,
    "Touching buildings")."""
    min_seed_m2: float = Field(25.0, ge=0)
    """Seeds smaller than this, square metres, are ignored: a bright patch inside one roof does
    not cut it in two (smaller seeds split more attached houses and more single roofs)."""
    max_size_m: float = Field(300.0, gt=0, le=10000)
    """Regions longer than this on a side, metres, are left whole (bounds the probabilities a
    region reaching a block seam sends to the client)."""


class InferenceSettings(StrictModel):
    """How a scene is cut, inferred, thresholded, vectorized and written."""

    # -- tiling --------------------------------------------------------------------------
    tile_size: int | None = Field(None, ge=16, le=16384)
    """Largest model input window, pixels per side (multiple of 2**depth). A scene gets the fewest
    tiles of at most this size, each as small as that count allows (scene.json records the
    tile_shape used). None: checkpoint's suggestion."""
    halo: int | None = Field(None, ge=0, le=4096)
    """Context pixels on each side of a tile's core. None: receptive-field radius, rounded up."""
    tiles_per_block: int | None = Field(None, ge=1, le=16)
    """Tiles per side of one Dask task (block): a block holds tiles_per_block**2 tiles.
    None: 1 on CPU (even load across worker threads at a scene's end), 3 with CUDA (a batch fits in a block)."""
    batch_size: int | None = Field(None, ge=1, le=1024)
    """Tiles per forward pass. None: 1 on CPU (larger batches were measured slower there), 8 on CUDA."""
    # -- compute -------------------------------------------------------------------------
    device: Device = "auto"
    """auto: CUDA when available, else CPU."""
    precision: Precision = "auto"
    """auto: bf16 where the device supports it (CUDA, or a CPU with AVX-512 BF16/AMX), else fp32."""
    # -- input ---------------------------------------------------------------------------
    bands: list[int] | None = None
    """1-based scene band indexes fed to the model, in order. None: checkpoint's bands."""
    use_nodata: bool = True
    """Treat the scene's nodata value / mask as invalid (a pixel is invalid when all its bands are)."""
    max_pixels: int = Field(4_000_000_000, ge=1)
    """Refuse scenes with more pixels than this (width x height) before any work; a scene
    resampled to the model's pixel size is refused when its model grid has more."""
    gsd_m: float | None = Field(None, gt=0, le=10_000)
    """The scenes' ground pixel size, metres, for scenes whose georeferencing does not tell the
    truth. None: each scene's own (at its centre; geodesic, so right for degrees too). Scenes
    are resampled to the checkpoint's pixel size (its ``gsd_m``) when they differ by > 2 %."""
    stac_asset: str = Field("auto", min_length=1, max_length=200)
    """Which asset of a STAC item is the scene: ``auto`` (the first GeoTIFF asset with role
    ``data``, else ``visual``, else the item's only GeoTIFF), an asset key (``visual``), or
    ``role:NAME``. Only for scenes given as STAC Items, ItemCollections or Catalogs."""
    stac_bands: list[str] | None = None
    """Bands of a STAC asset fed to the model, by name or common name from the asset's
    ``bands``/``eo:bands`` (e.g. [red, green, blue]). None: ``bands``, else the checkpoint's."""
    # -- model ---------------------------------------------------------------------------
    tta: bool = False
    """Test-time augmentation: average each tile's probabilities over its 8 flips and quarter
    turns before thresholding (8x the model's compute; still seam-free)."""
    # -- polygons ------------------------------------------------------------------------
    thresholds: dict[str, float] = Field(default_factory=dict)
    """Per-class probability threshold in [0, 1]; missing classes use the checkpoint's (0.5)."""
    simplify_m: float = Field(0.0, ge=0)
    """Simplification tolerance in metres (topology-preserving); 0 keeps the pixel outline."""
    min_area_m2: float = Field(0.0, ge=0)
    """Drop polygons of every class smaller than this area, square metres."""
    min_building_m2: float = Field(5.0, ge=0)
    """Drop outlines of the classes named like buildings (building, buildings, *_building(s))
    smaller than this, square metres: a garden shed is about 5 m2, smaller pieces are the mask's
    speckle. 0 keeps them (``min_area_m2`` still applies)."""
    fill_holes_m2: float = Field(0.0, ge=0)
    """Fill holes smaller than this area, square metres."""
    centerlines: CenterlineSettings = Field(default_factory=CenterlineSettings)
    """Road centerline graphs of the linear classes (see :class:`CenterlineSettings`)."""
    regularize: RegularizeSettings = Field(default_factory=RegularizeSettings)
    """Regular building outlines (see :class:`RegularizeSettings`)."""
    separate: SeparateSettings = Field(default_factory=SeparateSettings)
    """Touching buildings apart (see :class:`SeparateSettings`)."""
    # -- outputs -------------------------------------------------------------------------
    formats: list[OutputFormat] = Field(default_factory=lambda: list(ALL_FORMATS))
    """Which outputs to write besides scene.json (``stac``: a STAC Item per scene, item.json,
    and a STAC Catalog of the run's scenes, catalog.json)."""
    quicklook_size: int = Field(1024, ge=64, le=8192)
    """Longest side of quicklook.png, pixels."""

    @field_validator("thresholds")
    @classmethod
    def _check_thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        for name, t in v.items():
            if not 0.0 <= float(t) <= 1.0:
                raise ValueError(f"threshold for class {name!r} is {t}; it must lie in [0, 1]")
        return v

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError(f"bands {v} must be a non-empty list of 1-based band indexes")
        return v

    def fingerprint(self) -> str:
        """Hash of every setting that can change outputs (resume compares it): all but
        :data:`NOT_HASHED`."""
        data = {k: v for k, v in self.model_dump(mode="json").items() if k not in NOT_HASHED}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Settings that cannot change a scene's outputs, so changing them resumes finished scenes:
# batch_size and tiles_per_block group the same tiles into forward passes and Dask tasks (each
# tile is still the same model input; polygons are merged exactly across block edges), and
# max_pixels only refuses scenes (a refused scene has no outputs to reuse). Device and
# precision do change the numbers and are hashed; cluster settings (workers, threads) and
# progress bars are not inference settings at all.
NOT_HASHED = frozenset({"batch_size", "tiles_per_block", "max_pixels"})


class ClusterSettings(StrictModel):
    """Where the work runs."""

    scheduler: str | None = None
    """Address of an existing Dask scheduler (tcp://host:8786); null: an embedded LocalCluster."""
    workers: int | None = Field(None, ge=1)
    """Embedded cluster: worker processes; null: one per GPU, else one per 4 cores."""
    threads_per_worker: int | None = Field(None, ge=1)
    """Embedded cluster: task threads per worker; null: cores / workers."""
    processes: bool = True
    """Embedded cluster: workers are processes (true, robust to crashes) or threads (false)."""


class WorkflowSettings(StrictModel):
    """A job definition (see workflows/segment-scenes.yaml)."""

    scenes: str | list[str]
    """A folder, a glob, a text file of paths (one per line), or a list of paths/URLs."""
    pattern: str = "*.tif"
    """File pattern for folders (case-insensitive suffix match on .tif/.tiff when default)."""
    recursive: bool = True
    """Search sub-folders of a scene folder."""
    model: str
    """Checkpoint (.safetensors); 'default' for the weights shipped with geounet."""
    out: str
    """Output folder; each scene gets OUT/<stem>/."""
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    """Inference settings (keys as in configs/inference.yaml)."""
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    """Dask cluster settings."""
