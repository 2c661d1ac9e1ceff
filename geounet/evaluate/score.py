"""Scoring scenes: one :class:`EvaluationSettings` in, typed results out.

:func:`evaluate_scene` reads one scene's predictions and truth, measures them in one
metric CRS and returns a :class:`SceneResult` (building F1, pixel counts, road topology);
:func:`evaluate_many` does it for every :class:`~geounet.evaluate.pairing.ScenePair` and
adds the counts up into :class:`Totals` (micro-averaging, see
:mod:`geounet.evaluate.ratios`). Results stay typed objects until the edge:
:mod:`geounet.evaluate.report` turns them into a table or JSON (their ``to_dict``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS

from geounet.errors import ConfigError, SceneReadError
from geounet.evaluate.geometry import polygonal
from geounet.evaluate.objects import MatchResult, building_f1
from geounet.evaluate.pairing import ScenePair, scene_stem
from geounet.evaluate.pixels import PixelCounts, RasterGrid, windowed_pixel_counts
from geounet.evaluate.roads import RoadTopology, RoadTotals, TopologyParams, road_surfaces, road_topology
from geounet.evaluate.vectors import (
    DEFAULT_CLASSES,
    SceneVectors,
    VectorSource,
    choose_metric_crs,
    normalise_classes,
    read_sources,
    reproject,
)

log = logging.getLogger(__name__)

__all__ = [
    "EvaluationResult",
    "EvaluationSettings",
    "SceneFailure",
    "SceneResult",
    "Totals",
    "evaluate_many",
    "evaluate_scene",
]


# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationSettings:
    """How scenes are read and scored; ``geounet evaluate`` builds it from its options.

    Values are checked when the object is made, before any file is read.
    """

    iou_threshold: float = 0.5
    """Minimum intersection-over-union of a building match, in (0, 1] (SpaceNet: 0.5)."""
    min_area_m2: float = 0.0
    """Buildings smaller than this, in m² (after clipping to the raster), are ignored on both
    sides of the building F1; pixel metrics count every pixel."""
    road_width_m: float = 6.0
    """Width of roads given as centerlines, metres; they are buffered by half of it for pixel
    IoU and topology. Road polygons are used as they are."""
    pixel_size_m: float | None = 0.5
    """Pixel size of the evaluation grid laid over a scene that has no raster, metres;
    ``None`` skips pixel metrics for such scenes (a scene's raster always gives its grid)."""
    window_size: int = 1024
    """Side of the windows in which polygons are burned for pixel metrics, pixels; peak
    memory is a few ``window_size``² booleans per class."""
    topology: TopologyParams | None = TopologyParams()
    """Road topology settings (APLS, centerline completeness; lengths in metres); ``None``
    skips the topology scores."""
    truth_layer: str | None = None
    """Layer of the truth files; ``None``: layers named buildings/roads/road_centerlines,
    else the only layer."""
    pred_layer: str | None = None
    """Layer of prediction files that hold several; ``None``: as for the truth."""
    class_field: str | None = None
    """Field holding the class (e.g. ``Niveau_2``), read from the truth and from prediction
    files that have it; ``None``: layer names, file names or geometry types decide."""
    classes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CLASSES), hash=False)
    """Values of ``class_field`` (case-insensitive) marking ``"building"`` and/or ``"road"``."""

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}; SpaceNet uses 0.5")
        if not self.min_area_m2 >= 0:
            raise ConfigError(f"min_area_m2 must be >= 0, got {self.min_area_m2}; 0 keeps every building")
        if not self.road_width_m > 0:
            raise ConfigError(f"road width must be > 0 m, got {self.road_width_m}; give the full width of a road")
        if self.pixel_size_m is not None and not self.pixel_size_m > 0:
            raise ConfigError(
                f"pixel_size_m must be > 0 m, got {self.pixel_size_m}; "
                "None skips pixel metrics for scenes without a raster"
            )
        if self.window_size < 1:
            raise ConfigError(f"window_size must be >= 1 pixel, got {self.window_size}; 1024 is a good size")
        object.__setattr__(self, "classes", MappingProxyType(normalise_classes(self.classes)))


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneResult:
    """Scores of one scene. A class the truth does not label is not scored (``None``).

    Attributes:
        scene: the scene's name.
        crs: the metric CRS everything was measured in.
        pred, truth: the sources read (``path`` or ``path:layer``).
        raster: the raster that gave the pixel grid, when one was given as a path.
        buildings: building matches (SpaceNet F1).
        pixels: pixel counts per class (``"building"``, ``"road"``) on ``pixel_grid``;
            ``None`` when there was no grid.
        pixel_grid: the grid the pixels were counted on.
        roads: road topology scores.
        missing_prediction: the scene had no prediction files (scored against nothing).
    """

    scene: str
    crs: CRS
    pred: tuple[str, ...] = ()
    truth: tuple[str, ...] = ()
    raster: str | None = None
    buildings: MatchResult | None = None
    pixels: Mapping[str, PixelCounts] | None = None
    pixel_grid: RasterGrid | None = None
    roads: RoadTopology | None = None
    missing_prediction: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the result (NaN kept; the JSON writer turns it into ``null``)."""
        out: dict[str, Any] = {
            "scene": self.scene,
            "pred": list(self.pred),
            "truth": list(self.truth),
            "raster": self.raster,
            "crs": self.crs.to_string(),
            "buildings": self.buildings.to_dict() if self.buildings is not None else None,
            "pixels": {k: v.to_dict() for k, v in self.pixels.items()} if self.pixels is not None else None,
        }
        if self.pixel_grid is not None:
            out["pixel_grid"] = self.pixel_grid.to_dict()
        out["roads"] = self.roads.to_dict() if self.roads is not None else None
        if self.missing_prediction:
            out["missing_prediction"] = True
        return out


@dataclass(frozen=True)
class SceneFailure:
    """A scene that could not be read; it is left out of the totals."""

    scene: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the scene and the error message."""
        return {"scene": self.scene, "error": self.error}


@dataclass(frozen=True)
class Totals:
    """Scores of all scenes that were read, from summed counts (micro-average).

    Attributes:
        n_scenes: scenes that were read and scored.
        buildings: summed building matches; ``None`` when no scene scored buildings.
        pixels: summed pixel counts per class; ``None`` when no scene counted pixels.
        roads: road totals; ``None`` when no scene scored road topology.
    """

    n_scenes: int
    buildings: MatchResult | None = None
    pixels: Mapping[str, PixelCounts] | None = None
    roads: RoadTotals | None = None

    @property
    def scene(self) -> str:
        """The name of the totals' row in tables and JSON."""
        return "TOTAL"

    @classmethod
    def combine(cls, scenes: Sequence[SceneResult]) -> Totals:
        """Sum the counts of ``scenes``; ratios are computed once from the sums."""
        buildings = [s.buildings for s in scenes if s.buildings is not None]
        pixels: dict[str, PixelCounts] = {}
        for s in scenes:
            for name, counts in (s.pixels or {}).items():
                pixels[name] = pixels.get(name, PixelCounts()) + counts
        roads = [s.roads for s in scenes if s.roads is not None]
        return cls(
            n_scenes=len(scenes),
            buildings=MatchResult.combine(buildings) if buildings else None,
            pixels=pixels or None,
            roads=RoadTotals.combine(roads) if roads else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the totals (NaN kept; the JSON writer turns it into ``null``)."""
        return {
            "scene": self.scene,
            "n_scenes": self.n_scenes,
            "buildings": self.buildings.to_dict() if self.buildings is not None else None,
            "pixels": {k: v.to_dict() for k, v in self.pixels.items()} if self.pixels is not None else None,
            "roads": self.roads.to_dict() if self.roads is not None else None,
        }


@dataclass(frozen=True)
class EvaluationResult:
    """Every scene's result, the totals, and the predictions that had no truth."""

    scenes: tuple[SceneResult | SceneFailure, ...]
    total: Totals
    unmatched_predictions: tuple[str, ...] = ()

    @property
    def failed(self) -> list[str]:
        """Names of the scenes that could not be read."""
        return [s.scene for s in self.scenes if isinstance(s, SceneFailure)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by ``geounet evaluate --json``."""
        return {
            "scenes": [s.to_dict() for s in self.scenes],
            "total": self.total.to_dict(),
            "unmatched_predictions": list(self.unmatched_predictions),
            "failed": self.failed,
        }


# ---------------------------------------------------------------------------------------
# One scene
# ---------------------------------------------------------------------------------------


def _clip(s: gpd.GeoSeries | None, area: shapely.Geometry) -> gpd.GeoSeries | None:
    """The parts of ``s`` inside ``area`` (polygons stay polygonal); features outside are dropped."""
    if s is None or len(s) == 0:
        return s
    vals = np.asarray(s.values, dtype=object)
    vals = vals[~shapely.is_missing(vals)]
    areal = np.isin(shapely.get_type_id(vals), (3, 6))  # Polygon, MultiPolygon
    vals[areal] = polygonal(vals[areal])
    hit = shapely.intersects(vals, area)
    vals, areal = vals[hit], areal[hit]
    clipped = shapely.intersection(vals, area)
    clipped[areal] = polygonal(clipped[areal])
    return gpd.GeoSeries(clipped[~shapely.is_empty(clipped)], crs=s.crs)


def _clip_to_grid(scenes: Sequence[SceneVectors], grid: RasterGrid, crs: CRS) -> None:
    """Clip every layer of ``scenes`` (in ``crs``) to the grid's footprint, in place."""
    # Densified so that the outline stays right after reprojection (e.g. a WGS84 raster).
    outline = shapely.segmentize(grid.footprint, grid.footprint.length / 256)
    footprint = gpd.GeoSeries([outline], crs=grid.crs).to_crs(crs).iloc[0]
    for sc in scenes:
        for role in ("buildings", "roads", "road_centerlines"):
            setattr(sc, role, _clip(getattr(sc, role), footprint))


def _lines_or(lines: gpd.GeoSeries | None, surfaces: gpd.GeoSeries, crs: CRS) -> gpd.GeoSeries:
    """A network's centerlines when it has any (scored as the graph they form), else its surfaces."""
    if lines is not None and len(lines):
        return reproject(lines, crs, "road centerlines")
    return surfaces


def _surfaces_series(sc: SceneVectors, road_width_m: float, crs: CRS) -> gpd.GeoSeries | None:
    """Road surfaces: road polygons when there are any, else centerlines buffered to ``road_width_m``.

    ``None`` when the scene does not label roads at all.
    """
    if not sc.has_roads():
        return None
    if sc.roads is not None and len(sc.roads):
        src = sc.roads
    elif sc.road_centerlines is not None and len(sc.road_centerlines):
        src = sc.road_centerlines
    else:
        return gpd.GeoSeries([], crs=crs)
    return gpd.GeoSeries(road_surfaces(src, road_width_m), crs=crs)


def _grid_over_data(layers: Sequence[gpd.GeoSeries | None], pixel_size_m: float, crs: CRS) -> RasterGrid | None:
    """A grid of ``pixel_size_m`` over the bounds of every non-empty layer; ``None`` without data."""
    present = [s for s in layers if s is not None and len(s)]
    if not present:
        return None
    bounds = shapely.total_bounds(np.concatenate([np.asarray(s.values, dtype=object) for s in present]))
    return RasterGrid.from_bounds(tuple(bounds), pixel_size_m, crs)


def evaluate_scene(
    pred: VectorSource | Sequence[VectorSource],
    truth: VectorSource | Sequence[VectorSource],
    settings: EvaluationSettings | None = None,
    *,
    raster: str | Path | RasterGrid | None = None,
    scene: str | None = None,
) -> SceneResult:
    """Evaluate one scene's predicted polygons against its truth.

    Steps: read both sides (:func:`~geounet.evaluate.vectors.read_sources`; several files
    per side are merged) → pick a metric CRS (:func:`choose_metric_crs`) and reproject →
    clip both sides to the raster's footprint when a raster is given (predictions cannot
    exist outside it) → building F1 (:func:`building_f1`) → pixel counts for buildings and
    road surfaces on the raster's grid, or on a grid of ``settings.pixel_size_m`` over the
    data when there is no raster (:func:`windowed_pixel_counts`; nodata pixels of the raster
    are not counted) → road topology (:func:`road_topology`).

    A class that the truth does not label (no layer, no matching class value) is not
    scored (``None``); a labelled class with no features is scored (predictions are FPs).
    Truth roads given as centerlines are buffered to ``settings.road_width_m`` for pixel IoU
    and topology; road polygons are used as they are.

    Cost: both sides in memory as geometries; pixel metrics window by window (see
    :func:`windowed_pixel_counts`); road topology one raster of the road network at
    ``settings.topology.pixel_m`` (see :func:`road_topology`).

    Args:
        pred: geounet scene folder (``buildings.geojson``, ``roads.geojson``), vector
            file(s), :class:`SceneVectors` or GeoDataFrame.
        truth: vector file(s) or in-memory data.
        settings: how to read and score; default :class:`EvaluationSettings()`.
        raster: GeoTIFF (or :class:`RasterGrid`) defining the pixel grid and valid pixels.
        scene: name reported in the result (default: the truth file's stem).
    """
    s = settings if settings is not None else EvaluationSettings()

    # 1. Read both sides and measure them in one metric CRS.
    pv = read_sources(
        pred, "predictions", layer=s.pred_layer, class_field=s.class_field, classes=s.classes, require_field=False
    )
    tv = read_sources(truth, "truth", layer=s.truth_layer, class_field=s.class_field, classes=s.classes)
    grid = raster if raster is None or isinstance(raster, RasterGrid) else RasterGrid.from_raster(raster)
    crs = choose_metric_crs(tv, pv, raster_crs=grid.crs if grid else None)
    pv, tv = pv.to_crs(crs), tv.to_crs(crs)
    if grid is not None:
        _clip_to_grid((pv, tv), grid, crs)
    empty = gpd.GeoSeries([], crs=crs)
    p_buildings = pv.buildings if pv.buildings is not None else empty

    # 2. Buildings as objects.
    buildings = None
    if tv.buildings is not None:
        buildings = building_f1(p_buildings, tv.buildings, s.iou_threshold, min_area=s.min_area_m2)

    # 3. Road surfaces (polygons, or centerlines buffered to the road width).
    t_roads = _surfaces_series(tv, s.road_width_m, crs)
    p_roads = _surfaces_series(pv, s.road_width_m, crs)
    if t_roads is not None and p_roads is None:
        p_roads = empty

    # 4. Pixels, on the raster's grid or on one laid over the data.
    pixel_grid = grid
    if pixel_grid is None and s.pixel_size_m is not None:
        pixel_grid = _grid_over_data((pv.buildings, tv.buildings, p_roads, t_roads), s.pixel_size_m, crs)
    pixels = None
    if pixel_grid is not None:
        layers: dict[str, tuple[gpd.GeoSeries, gpd.GeoSeries]] = {}
        if tv.buildings is not None:
            layers["building"] = (
                reproject(p_buildings, pixel_grid.crs, "buildings"),
                reproject(tv.buildings, pixel_grid.crs, "buildings"),
            )
        if t_roads is not None and p_roads is not None:
            layers["road"] = (reproject(p_roads, pixel_grid.crs, "roads"), reproject(t_roads, pixel_grid.crs, "roads"))
        pixels = windowed_pixel_counts(layers, pixel_grid, window_size=s.window_size)

    # 5. Road topology.
    roads = None
    if s.topology is not None and t_roads is not None and p_roads is not None:
        # graphs as they are where there are any: the predicted centerline graph geounet wrote
        # (road_centerlines.geojson) and truth centerlines; else surfaces, thinned alike
        p_graph = _lines_or(pv.road_centerlines, p_roads, crs)
        t_graph = _lines_or(tv.road_centerlines, t_roads, crs)
        roads = road_topology(p_graph, t_graph, road_width_m=s.road_width_m, params=s.topology)

    if scene is None:
        scene = scene_stem(Path(tv.sources[0].rsplit(":", 1)[0])) if tv.sources else "scene"
    return SceneResult(
        scene=scene,
        crs=crs,
        pred=tuple(pv.sources),
        truth=tuple(tv.sources),
        raster=str(raster) if isinstance(raster, (str, Path)) else None,
        buildings=buildings,
        pixels=pixels,
        pixel_grid=pixel_grid,
        roads=roads,
    )


# ---------------------------------------------------------------------------------------
# Many scenes
# ---------------------------------------------------------------------------------------


def evaluate_many(
    pairs: Sequence[ScenePair],
    settings: EvaluationSettings | None = None,
    *,
    unmatched_predictions: Sequence[str] = (),
) -> EvaluationResult:
    """Evaluate each scene with :func:`evaluate_scene` and micro-average over all of them.

    Totals (:meth:`Totals.combine`): building TP/FP/FN and pixel TP/FP/FN/TN are summed over
    scenes and the ratios computed once from the sums; road completeness/correctness from
    summed lengths; APLS is the mean of the scenes where it is defined (a path metric does
    not add across scenes). A scene without predictions is scored against nothing (every
    true object missed). A scene that cannot be read is recorded as a
    :class:`SceneFailure` and left out of the totals. Cost: one scene in memory at a time.
    """
    s = settings if settings is not None else EvaluationSettings()
    scenes: list[SceneResult | SceneFailure] = []
    for pair in pairs:
        try:
            if pair.pred:
                scenes.append(evaluate_scene(list(pair.pred), list(pair.truth), s, raster=pair.raster, scene=pair.name))
            else:
                nothing = SceneVectors(
                    buildings=gpd.GeoSeries([], crs="EPSG:4326"), roads=gpd.GeoSeries([], crs="EPSG:4326")
                )
                r = evaluate_scene(nothing, list(pair.truth), s, raster=pair.raster, scene=pair.name)
                scenes.append(dataclasses.replace(r, missing_prediction=True))
        except (SceneReadError, OSError) as exc:
            log.error("scene %s: %s", pair.name, exc)
            scenes.append(SceneFailure(pair.name, str(exc)))
    scored = [r for r in scenes if isinstance(r, SceneResult)]
    return EvaluationResult(tuple(scenes), Totals.combine(scored), tuple(unmatched_predictions))
