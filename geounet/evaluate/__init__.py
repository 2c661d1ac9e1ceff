"""How good are predicted polygons? Building F1, pixel IoU and road topology.

One idea per module, each usable alone:

* :mod:`~geounet.evaluate.ratios` — the one rule for every ratio: ``NaN`` when nothing is
  present on either side, ``0`` for a zero denominator otherwise; scenes are combined by
  summing counts (micro-averaging, as SpaceNet does).
* :mod:`~geounet.evaluate.geometry` — inputs coerced once to arrays of valid polygons.
* :mod:`~geounet.evaluate.objects` — buildings as objects: :func:`building_f1` (the
  SpaceNet one-to-one match at IoU >= 0.5) and its :class:`MatchResult`.
* :mod:`~geounet.evaluate.pixels` — confusion counts of masks (:func:`pixel_counts`,
  :func:`pixel_metrics`) and of polygons burned window by window on a scene's grid
  (:class:`RasterGrid`, :func:`windowed_pixel_counts`), never a full-scene raster.
* :mod:`~geounet.evaluate.roads` — road networks as graphs in metres (centerlines as they
  are, polygons thinned as predicted masks are) and :func:`road_topology` (APLS, centerline
  completeness and correctness); :mod:`~geounet.evaluate.apls` — SpaceNet 3's APLS.
* :mod:`~geounet.evaluate.vectors` — truth and prediction files in any format and CRS that
  GDAL reads, classes selected by layer, file name or field (:func:`read_vectors`), and the
  metric CRS they are measured in (:func:`choose_metric_crs`).
* :mod:`~geounet.evaluate.pairing` — which prediction files belong to which truth scene
  (:func:`pair_scenes`).
* :mod:`~geounet.evaluate.score` — :func:`evaluate_scene` and :func:`evaluate_many`, driven
  by one :class:`EvaluationSettings` and returning typed results (:class:`SceneResult`,
  :class:`EvaluationResult`).
* :mod:`~geounet.evaluate.report` — the edge where results become text or JSON:
  :func:`format_table`, :func:`write_result_json`.

Everything is measured in a metric CRS (the raster's, or the local UTM zone), so areas are
in m² and lengths in metres. ``geounet evaluate`` (:mod:`geounet.cli.evaluate`) only
builds the settings from its options and calls :func:`pair_scenes`, :func:`evaluate_many`,
:func:`format_table` and :func:`write_result_json`.
"""

from __future__ import annotations

from geounet.evaluate.objects import MatchResult, building_f1
from geounet.evaluate.pairing import ScenePair, pair_scenes
from geounet.evaluate.pixels import PixelCounts, RasterGrid, pixel_counts, pixel_metrics, windowed_pixel_counts
from geounet.evaluate.report import format_table, write_result_json
from geounet.evaluate.roads import RoadTopology, RoadTotals, TopologyParams, road_topology, skeletonize
from geounet.evaluate.score import (
    EvaluationResult,
    EvaluationSettings,
    SceneFailure,
    SceneResult,
    Totals,
    evaluate_many,
    evaluate_scene,
)
from geounet.evaluate.vectors import DEFAULT_CLASSES, SceneVectors, choose_metric_crs, read_vectors

__all__ = [
    "DEFAULT_CLASSES",
    "EvaluationResult",
    "EvaluationSettings",
    "MatchResult",
    "PixelCounts",
    "RasterGrid",
    "RoadTopology",
    "RoadTotals",
    "SceneFailure",
    "SceneResult",
    "ScenePair",
    "SceneVectors",
    "TopologyParams",
    "Totals",
    "building_f1",
    "choose_metric_crs",
    "evaluate_many",
    "evaluate_scene",
    "format_table",
    "pair_scenes",
    "pixel_counts",
    "pixel_metrics",
    "read_vectors",
    "road_topology",
    "skeletonize",
    "windowed_pixel_counts",
    "write_result_json",
]
