"""APLS (SpaceNet 3) on small graphs whose scores can be computed by hand, and the road
scores built on it (completeness/correctness, truth as centerlines or polygons)."""

from __future__ import annotations

import math

import geopandas as gpd
import networkx as nx
import numpy as np
import pytest
import shapely
from shapely.geometry import LineString

from geounet.errors import ConfigError
from geounet.evaluate.pixels import RasterGrid
from geounet.evaluate.roads import apls, line_network, matched_length, road_topology, surface_network

UTM = "EPSG:32633"


def graph(points: dict[int, tuple[float, float]], edges: list[tuple[int, int]]) -> nx.MultiGraph:
    """An osmnx-style graph: nodes with x, y; straight edges (no geometry)."""
    g = nx.MultiGraph()
    for n, (x, y) in points.items():
        g.add_node(n, x=x, y=y)
    g.add_edges_from(edges)
    return g


def grid_network(n: int = 3, step: float = 100.0, drop: tuple[int, int] | None = None) -> nx.MultiGraph:
    """An n×n lattice of streets ``step`` m apart, optionally without one edge."""
    points = {i * n + j: (j * step, i * step) for i in range(n) for j in range(n)}
    edges = [(i * n + j, i * n + j + 1) for i in range(n) for j in range(n - 1)]
    edges += [(i * n + j, (i + 1) * n + j) for i in range(n - 1) for j in range(n)]
    return graph(points, [e for e in edges if e != drop])


def test_identical_graphs_score_one() -> None:
    r = apls(grid_network(), grid_network())
    assert r.apls == 1.0 and r.truth_to_proposal == 1.0 and r.proposal_to_truth == 1.0
    assert r.pairs_truth == r.pairs_proposal == math.comb(9 + 12 * 1, 2)  # 9 nodes, one midpoint per edge


def test_three_edge_path_with_one_edge_removed_by_hand() -> None:
    # A-B-C-D, 30 m edges (< 0.75 · 50 m: no midpoints): control points are the 4 nodes.
    points = {0: (0.0, 0.0), 1: (30.0, 0.0), 2: (60.0, 0.0), 3: (90.0, 0.0)}
    truth = graph(points, [(0, 1), (1, 2), (2, 3)])
    cut = graph({k: points[k] for k in (0, 1, 2)}, [(0, 1), (1, 2)])
    r = apls(truth, cut)
    # truth -> proposal: 6 pairs, the 3 with D cost 1 (D is 30 m from the proposal, snap 4 m)
    assert r.truth_to_proposal == pytest.approx(1 - 3 / 6) and r.pairs_truth == 6
    # proposal -> truth: 3 pairs, all found with the same length
    assert r.proposal_to_truth == 1.0 and r.pairs_proposal == 3
    assert r.apls == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_a_longer_detour_costs_its_relative_length() -> None:
    # Truth: a straight 40 m street (midpoint at 20 m). Proposal: the same ends joined by a
    # detour through (20, 3) -- within the 4 m snap -- so every path is longer by the detour.
    truth = graph({0: (0.0, 0.0), 1: (40.0, 0.0)}, [(0, 1)])
    detour = graph({0: (0.0, 0.0), 1: (20.0, 3.0), 2: (40.0, 0.0)}, [(0, 1), (1, 2)])
    r = apls(truth, detour, min_path_m=0)
    leg = math.hypot(20, 3)
    t = 20 * 20 / leg  # the midpoint (20, 0) projects onto the first leg, t m from (0, 0)
    # truth pairs: ends 40 m apart vs 2·leg; end-midpoint 20 m vs t, midpoint-end 20 m vs 2·leg - t
    expected = 1 - np.mean([(2 * leg - 40) / 40, abs(t - 20) / 20, (2 * leg - t - 20) / 20])
    assert r.truth_to_proposal == pytest.approx(expected)


def test_removing_one_edge_of_a_grid_lowers_apls() -> None:
    full = grid_network()
    r = apls(full, grid_network(drop=(0, 1)))
    assert 0.7 < r.apls < 1.0
    # Missing paths (the corner cut off) cost more than the truth's shortcut seen from the
    # proposal's side, which makes the proposal's paths look too long.
    assert r.truth_to_proposal < r.proposal_to_truth < 1.0


def test_empty_proposal_scores_zero_and_nothing_is_undefined() -> None:
    r = apls(grid_network(), nx.MultiGraph())
    assert r.apls == 0.0 and r.truth_to_proposal == 0.0 and r.pairs_proposal == 0
    assert math.isnan(apls(nx.MultiGraph(), nx.MultiGraph()).apls)


def test_apls_is_symmetric() -> None:
    a, b = grid_network(), grid_network(drop=(4, 5))
    ab, ba = apls(a, b), apls(b, a)
    assert ab.apls == pytest.approx(ba.apls)
    assert ab.truth_to_proposal == ba.proposal_to_truth and ab.proposal_to_truth == ba.truth_to_proposal


def test_apls_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="snap_m"):
        apls(grid_network(), grid_network(), snap_m=0)


# --- networks from centerlines and polygons; completeness/correctness -----------------------


def plus(gap: float = 0.0) -> gpd.GeoSeries:
    """Two 200 m roads crossing at (100, 100); ``gap`` cuts the east-west one west of the junction."""
    if gap:
        ew = [LineString([(0, 100), (80 - gap, 100)]), LineString([(80, 100), (200, 100)])]
    else:
        ew = [LineString([(0, 100), (200, 100)])]
    return gpd.GeoSeries([*ew, LineString([(100, 0), (100, 200)])], crs=UTM)


def test_line_network_nodes_ends_and_crossings() -> None:
    g = line_network(plus())
    assert g.number_of_nodes() == 5 and g.number_of_edges() == 4
    assert sorted(d["length"] for _, _, d in g.edges(data=True)) == [100.0] * 4


def test_cut_road_by_hand_and_wiedemann_scores() -> None:
    # Truth control points: 5 nodes + 4 midpoints (50 m spacing) = 9, 36 pairs; the 2 west of
    # the gap lose their paths to the other 7: 14 pairs cost 1.
    cut = road_topology(plus(gap=20), plus())
    assert cut.apls_truth_to_pred == pytest.approx(1 - 14 / 36)
    assert cut.apls_pred_to_truth == pytest.approx(1.0)
    assert cut.apls == pytest.approx(2 * (22 / 36) / (1 + 22 / 36))
    assert cut.correctness == 1.0
    assert cut.completeness == pytest.approx(1 - 14 / 400, abs=0.01)  # 20 m gap less 3 m snap each side
    half = road_topology(gpd.GeoSeries([LineString([(0, 100), (100, 100)])], crs=UTM), plus())
    # the west arm, and 3 m of each other arm at the junction
    assert half.completeness == pytest.approx((100 + 3 * 3) / 400, abs=0.005) and half.correctness == 1.0


def test_polygon_truth_is_thinned_like_predicted_masks() -> None:
    polys = gpd.GeoSeries(plus().buffer(3), crs=UTM)
    same = road_topology(polys, polys)
    assert same.apls == 1.0 and same.completeness == 1.0
    assert same.truth_length_m == pytest.approx(400, abs=12)  # caps: thinning stops near the ends
    grid = RasterGrid.from_bounds((-10, -10, 210, 210), 1.0, UTM)
    g = surface_network(polys, grid, road_width_m=6)
    assert sorted(d for _, d in g.degree()) == [1, 1, 1, 1, 4]
    against_lines = road_topology(polys, plus())
    assert against_lines.apls > 0.9 and against_lines.correctness == 1.0


def test_matched_length_counts_pieces_near_the_other_network() -> None:
    a = np.array([LineString([(0, 0), (100, 0)])], dtype=object)
    b = np.array([LineString([(0, 2), (40, 2)])], dtype=object)
    assert matched_length(a, b, 3.0) == pytest.approx(40 + 3 * math.sqrt(1 - (2 / 3) ** 2), abs=1.0)
    assert matched_length(a, a, 0.5) == pytest.approx(100.0)
    assert matched_length(a, np.array([], dtype=object), 3.0) == 0.0
    assert shapely.length(a)[0] == 100.0
