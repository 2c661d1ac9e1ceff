"""Roads as networks: APLS (SpaceNet), centerline completeness and correctness.

:func:`road_topology` turns both networks into networkx graphs in metres -- centerlines
as they are, noded at their ends and crossings (:func:`line_network`); road polygons
burned on a grid and thinned by the same code as predicted road masks
(:func:`surface_network`, :mod:`geounet.vectorize.centerlines`) -- then scores them with
:func:`apls` and by the length of each network near the other; it returns a
:class:`RoadTopology`. :meth:`RoadTotals.combine` adds the results of several scenes.
Ratios follow :mod:`geounet.evaluate.ratios`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import numpy as np
import shapely

from geounet.errors import ConfigError
from geounet.evaluate.apls import APLSResult, Net, apls
from geounet.evaluate.geometry import GeometryInput, check_same_crs, geometry_array, polygonal
from geounet.evaluate.pixels import RasterGrid, burn
from geounet.evaluate.ratios import ratio
from geounet.vectorize.centerlines import centerline_graph
from geounet.vectorize.graph import to_networkx
from geounet.vectorize.skeleton import thin

__all__ = [
    "APLSResult",
    "RoadTopology",
    "RoadTotals",
    "TopologyParams",
    "apls",
    "line_network",
    "road_surfaces",
    "road_topology",
    "skeletonize",
    "surface_network",
]

# The thinning of road masks, under the name evaluation has always used for it.
skeletonize = thin


# ---------------------------------------------------------------------------------------
# Networks in metres
# ---------------------------------------------------------------------------------------


SNAP_M = 0.01  # line ends this close to another line (CRS units, metres) meet it


def line_network(lines: GeometryInput) -> nx.MultiGraph:
    """A graph of centerlines: nodes at line ends and where lines cross or touch, edges the
    lines between them (``shapely.node``, then ``shapely.line_merge`` so that lines meeting
    end to end become one edge). A line end within :data:`SNAP_M` of another line is snapped
    onto it first (``shapely.snap``): a T-junction digitized exactly in lon/lat misses the other
    line by a few nanometres once reprojected, which would cut the network there. Node
    attributes ``x``, ``y``; edge attributes ``geometry`` and ``length`` (CRS units). Null,
    empty and non-linear geometries are ignored."""
    arr = geometry_array(lines, "road centerlines")
    arr = arr[~shapely.is_missing(arr)]
    arr = arr[np.isin(shapely.get_type_id(arr), (1, 2, 5)) & ~shapely.is_empty(arr)]
    g = nx.MultiGraph()
    if len(arr) == 0:
        return g
    lines = shapely.get_parts(arr)
    ends = shapely.multipoints(np.concatenate([shapely.get_point(lines, i) for i in (0, -1)]))
    lines = shapely.snap(lines, ends, SNAP_M)
    merged = shapely.line_merge(shapely.node(shapely.MultiLineString(list(lines))))
    parts = shapely.get_parts(merged)
    parts = parts[shapely.length(parts) > 0]
    ends = np.concatenate([shapely.get_coordinates(shapely.get_point(parts, i)) for i in (0, -1)])
    xy, inverse = np.unique(ends, axis=0, return_inverse=True)
    inverse = inverse.reshape(2, -1)
    for i, (x, y) in enumerate(xy.tolist()):
        g.add_node(i, x=x, y=y)
    for k, line in enumerate(parts):
        g.add_edge(int(inverse[0, k]), int(inverse[1, k]), geometry=line, length=float(line.length))
    return g


def surface_network(
    polygons: GeometryInput, grid: RasterGrid, road_width_m: float, *, spur_m: float | None = None
) -> nx.MultiGraph:
    """A graph of road polygons: burned on ``grid`` (metres), thinned and traced as one window
    (:func:`geounet.vectorize.centerlines.centerline_graph`), in the grid's CRS.

    Cleaning, in metres converted to pixels: holes up to ``road_width_m`` across (and its
    square in area) are filled; spurs shorter than ``spur_m`` (default ``road_width_m``:
    the ragged edge of a road of that width) and components shorter than it are dropped;
    geometries are simplified by one pixel (thinning staircases would add up to 8 % to
    diagonal lengths). Cost: one raster of the grid, its thinning and one tracing pass.
    """
    pixel = math.sqrt(abs(grid.transform.determinant))
    mask = burn(polygonal(geometry_array(polygons, "road polygons")), (grid.height, grid.width), grid.transform)
    hole = road_width_m / pixel
    spur = (road_width_m if spur_m is None else spur_m) / pixel
    graph = centerline_graph(
        mask,
        max_hole_area_px=math.floor(hole * hole),
        max_hole_extent_px=math.floor(hole),
        min_spur_px=spur,
        min_component_px=spur,
        simplify_px=1.0,
    )
    return to_networkx(graph, grid.transform)


def matched_length(lines: np.ndarray, other: np.ndarray, distance: float) -> float:
    """Length of ``lines`` within ``distance`` of ``other`` (both LineString arrays, CRS units).

    The lines are cut into pieces of at most ``distance / 2``; a piece counts when its
    midpoint is within ``distance`` of ``other`` (so identical networks match exactly).
    Cost: one STRtree query per piece.
    """
    if len(lines) == 0 or len(other) == 0:
        return 0.0
    coords, index = shapely.get_coordinates(shapely.segmentize(lines, distance / 2), return_index=True)
    same = index[1:] == index[:-1]
    a, b = coords[:-1][same], coords[1:][same]
    seg = np.hypot(*(b - a).T)
    hits = shapely.STRtree(other).query(shapely.points((a + b) / 2), predicate="dwithin", distance=distance)[0]
    near = np.zeros(len(seg), dtype=bool)
    near[hits] = True
    return float(seg[near].sum())


# ---------------------------------------------------------------------------------------
# Settings, results, the metric
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologyParams:
    """Settings of :func:`road_topology` (all lengths in metres of the metric CRS).

    Attributes:
        pixel_m: pixel size of the raster on which road polygons are thinned.
        spacing_m: the most distance between APLS control points along an edge (SpaceNet: 50).
        snap_m: how far a control point may be moved onto the other network, and the
            buffer of centerline completeness/correctness; ``None``: half the road width.
        min_path_m: APLS skips paths shorter than this (SpaceNet: 10).
        max_points: at most this many control points per network (Dijkstra runs per point).
        max_pixels: refuse rasters larger than this (raise ``pixel_m`` instead).
    """

    pixel_m: float = 1.0
    spacing_m: float = 50.0
    snap_m: float | None = None
    min_path_m: float = 10.0
    max_points: int = 500
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not self.pixel_m > 0:
            raise ConfigError(f"topology pixel size must be > 0 m, got {self.pixel_m}")
        if not self.spacing_m > 0:
            raise ConfigError(f"topology control-point spacing must be > 0 m, got {self.spacing_m}")
        if self.snap_m is not None and not self.snap_m > 0:
            raise ConfigError(f"topology snap distance must be > 0 m, got {self.snap_m}")
        if not self.min_path_m >= 0:
            raise ConfigError(f"topology min_path_m must be >= 0 m, got {self.min_path_m}")
        if self.max_points < 2:
            raise ConfigError(f"topology max_points must be >= 2, got {self.max_points}")


def road_surfaces(geoms: GeometryInput, road_width_m: float) -> np.ndarray:
    """Road surfaces: polygons as they are, lines buffered by half the road width (round caps
    and joins); null geometries dropped. Returns valid polygonal geometries (object array)."""
    arr = geometry_array(geoms, "roads")
    arr = arr[~shapely.is_missing(arr)]
    if len(arr) == 0:
        return arr
    types = shapely.get_type_id(arr)
    linear = np.isin(types, (1, 2, 5))  # LineString, LinearRing, MultiLineString
    out = arr.copy()
    if linear.any():
        out[linear] = shapely.buffer(arr[linear], road_width_m / 2.0)
    return polygonal(out)


class CenterlineScores:
    """Completeness, correctness and their harmonic mean (Wiedemann 1998) from the matched
    and total lengths (metres) that a subclass gives by :meth:`_amounts`."""

    def _amounts(self) -> tuple[float, float, float, float]:
        """``(matched truth, truth, matched prediction, prediction)``."""
        raise NotImplementedError

    @property
    def _centerline(self) -> tuple[float, float, float]:
        matched_truth, truth, matched_pred, pred = self._amounts()
        nothing = truth == 0 and pred == 0
        completeness = ratio(matched_truth, truth, nothing)
        correctness = ratio(matched_pred, pred, nothing)
        return completeness, correctness, ratio(2 * completeness * correctness, completeness + correctness, nothing)

    @property
    def completeness(self) -> float:
        """Share of the truth's centerline within the snap distance of the prediction's."""
        return self._centerline[0]

    @property
    def correctness(self) -> float:
        """Share of the prediction's centerline within the snap distance of the truth's."""
        return self._centerline[1]

    @property
    def centerline_f1(self) -> float:
        """Harmonic mean of completeness and correctness."""
        return self._centerline[2]


@dataclass(frozen=True)
class RoadTopology(CenterlineScores):
    """Road scores of one scene; :func:`road_topology` explains what each one measures.

    Attributes:
        apls: :attr:`APLSResult.apls`; NaN when neither network has a path to score.
        apls_truth_to_pred: truth paths found in the prediction (:attr:`APLSResult.truth_to_proposal`).
        apls_pred_to_truth: the same with the roles swapped.
        pairs_truth, pairs_pred: control-point pairs scored in each direction.
        truth_length_m, pred_length_m: length of each network, metres.
        matched_truth_length_m, matched_pred_length_m: length of each network within
            ``snap_m`` of the other, metres.
        road_width_m, pixel_m, snap_m, spacing_m: the settings used, metres.
    """

    apls: float
    apls_truth_to_pred: float
    apls_pred_to_truth: float
    pairs_truth: int
    pairs_pred: int
    truth_length_m: float
    pred_length_m: float
    matched_truth_length_m: float
    matched_pred_length_m: float
    road_width_m: float
    pixel_m: float
    snap_m: float
    spacing_m: float

    def _amounts(self) -> tuple[float, float, float, float]:
        return (self.matched_truth_length_m, self.truth_length_m, self.matched_pred_length_m, self.pred_length_m)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (lengths in metres), NaN kept (the JSON writer turns it into ``null``)."""
        rest = asdict(self)
        head = {
            k: rest.pop(k) for k in ("apls", "apls_truth_to_pred", "apls_pred_to_truth", "pairs_truth", "pairs_pred")
        }
        scores = {
            "completeness": self.completeness,
            "correctness": self.correctness,
            "centerline_f1": self.centerline_f1,
        }
        return {**head, **scores, **rest}


@dataclass(frozen=True)
class RoadTotals(CenterlineScores):
    """Road scores of several scenes together.

    Lengths are summed and completeness/correctness computed once from the sums
    (micro-average); APLS is the mean over the scenes where it is defined, because a path
    metric does not add across scenes.

    Attributes:
        apls: mean APLS of the scenes where it is defined; NaN when it is defined nowhere.
        apls_scenes: how many scenes that mean is over.
        truth_length_m, pred_length_m: summed network lengths, metres.
        matched_truth_length_m, matched_pred_length_m: summed matched lengths, metres.
    """

    apls: float
    apls_scenes: int
    truth_length_m: float
    pred_length_m: float
    matched_truth_length_m: float
    matched_pred_length_m: float

    @classmethod
    def combine(cls, results: Iterable[RoadTopology]) -> RoadTotals:
        """Totals of the scenes' results (one pass over them)."""
        rs = list(results)
        apls = [r.apls for r in rs if not math.isnan(r.apls)]
        return cls(
            apls=float(np.mean(apls)) if apls else math.nan,
            apls_scenes=len(apls),
            truth_length_m=sum(r.truth_length_m for r in rs),
            pred_length_m=sum(r.pred_length_m for r in rs),
            matched_truth_length_m=sum(r.matched_truth_length_m for r in rs),
            matched_pred_length_m=sum(r.matched_pred_length_m for r in rs),
        )

    def _amounts(self) -> tuple[float, float, float, float]:
        return (self.matched_truth_length_m, self.truth_length_m, self.matched_pred_length_m, self.pred_length_m)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (lengths in metres), NaN kept (the JSON writer turns it into ``null``)."""
        return {
            "apls": self.apls,
            "apls_scenes": self.apls_scenes,
            "completeness": self.completeness,
            "correctness": self.correctness,
            "centerline_f1": self.centerline_f1,
            "truth_length_m": self.truth_length_m,
            "pred_length_m": self.pred_length_m,
            "matched_truth_length_m": self.matched_truth_length_m,
            "matched_pred_length_m": self.matched_pred_length_m,
        }


def _is_linear(arr: np.ndarray) -> bool:
    """Whether every (non-null) geometry is a line: such a network is used as it is."""
    arr = arr[~shapely.is_missing(arr)]
    return len(arr) > 0 and bool(np.isin(shapely.get_type_id(arr), (1, 2, 5)).all())


def road_topology(
    pred_roads: GeometryInput,
    true_roads: GeometryInput,
    *,
    road_width_m: float = 6.0,
    params: TopologyParams | None = None,
) -> RoadTopology:
    """Topology-aware road scores: APLS and centerline completeness/correctness.

    Each network becomes a graph in metres: centerlines (every geometry a line) as they
    are (:func:`line_network`); polygons (or a mix: lines buffered, :func:`road_surfaces`)
    burned on one grid of ``params.pixel_m`` and thinned as predicted road masks are
    (:func:`surface_network`).

    * ``apls``: :func:`apls` (SpaceNet 3) with ``spacing_m``, ``snap_m`` and ``min_path_m``.
      1 for identical networks; a road cut in two drops it because paths across the gap
      are missing; spurious roads and shortcuts drop the prediction → truth half.
    * ``completeness`` / ``correctness`` (Wiedemann 1998): the share of the truth's length
      within ``snap_m`` of the prediction, and vice versa (:func:`matched_length`);
      ``centerline_f1`` is their harmonic mean.

    Road categories and speeds (SpaceNet's travel-time APLS) are ignored. Geometries must be
    in one projected CRS in metres. Cost: for polygons, one raster over both networks at
    ``pixel_m`` (bool), thinned and traced; one Dijkstra per control point (<= ``max_points``
    per side) on each graph. Returns a :class:`RoadTopology`; both networks empty: scores NaN.
    """
    if not road_width_m > 0:
        raise ConfigError(f"road width must be > 0 m, got {road_width_m}; give the full width of a road")
    prm = params or TopologyParams()
    check_same_crs(pred_roads, true_roads, "road_topology")
    snap = prm.snap_m if prm.snap_m is not None else road_width_m / 2.0
    arrays = {}
    for role, geoms in (("pred", pred_roads), ("truth", true_roads)):
        arr = geometry_array(geoms, "roads")
        arr = arr[~shapely.is_missing(arr)]
        arrays[role] = arr[~shapely.is_empty(arr)]
    surfaces = {role: road_surfaces(arr, road_width_m) for role, arr in arrays.items() if not _is_linear(arr)}
    surfaces = {role: arr[~shapely.is_empty(arr)] for role, arr in surfaces.items()}

    # 1. Both networks as graphs in metres; polygons on one grid.
    graphs: dict[str, nx.Graph] = {}
    if surfaces:
        both = np.concatenate(list(surfaces.values()))
        grid = _grid(both, prm, true_roads, pred_roads) if len(both) else None
        for role, arr in surfaces.items():
            graphs[role] = nx.MultiGraph() if grid is None or not len(arr) else surface_network(arr, grid, road_width_m)
    for role, arr in arrays.items():
        if role not in graphs:
            graphs[role] = line_network(arr)

    # 2. APLS both ways; 3. lengths near the other network.
    result = apls(
        graphs["truth"],
        graphs["pred"],
        spacing_m=prm.spacing_m,
        snap_m=snap,
        min_path_m=prm.min_path_m,
        max_points=prm.max_points,
    )
    t_lines, p_lines = Net.of(graphs["truth"]).lines, Net.of(graphs["pred"]).lines
    return RoadTopology(
        apls=result.apls,
        apls_truth_to_pred=result.truth_to_proposal,
        apls_pred_to_truth=result.proposal_to_truth,
        pairs_truth=result.pairs_truth,
        pairs_pred=result.pairs_proposal,
        truth_length_m=float(shapely.length(t_lines).sum()),
        pred_length_m=float(shapely.length(p_lines).sum()),
        matched_truth_length_m=matched_length(t_lines, p_lines, snap),
        matched_pred_length_m=matched_length(p_lines, t_lines, snap),
        road_width_m=road_width_m,
        pixel_m=prm.pixel_m,
        snap_m=snap,
        spacing_m=prm.spacing_m,
    )


def _grid(geoms: np.ndarray, prm: TopologyParams, *inputs: GeometryInput) -> RasterGrid:
    """The grid of ``prm.pixel_m`` over ``geoms`` with a margin of two pixels, size-checked."""
    px = prm.pixel_m
    minx, miny, maxx, maxy = shapely.total_bounds(geoms)
    # The CRS of this grid is never used: geometries are already in the caller's metric CRS.
    crs = next((c for c in (getattr(i, "crs", None) for i in inputs) if c is not None), "EPSG:3857")
    grid = RasterGrid.from_bounds((minx - 2 * px, miny - 2 * px, maxx + 2 * px, maxy + 2 * px), px, crs)
    if grid.width * grid.height > prm.max_pixels:
        raise ConfigError(
            f"road topology raster would be {grid.width}×{grid.height} px at {px} m; "
            f"this exceeds {prm.max_pixels} px — use a larger topology pixel size"
        )
    return grid
