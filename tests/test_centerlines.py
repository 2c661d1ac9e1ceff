"""Road centerline graphs: window by window, joined, equal the graph of the whole mask.

The reference is the whole mask traced as one window (no seams). Masks are thick polylines
(shapely buffers burned with rasterio), windows are block cores plus the halo that
``exact_halo_px`` asks for, clipped to the mask, as the pipeline reads them.
"""

from __future__ import annotations

import math
import pickle

import networkx as nx
import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize
from scipy import ndimage

from geounet.vectorize.centerlines import (
    WindowPieces,
    centerline_graph,
    exact_halo_px,
    join_windows,
    trace_window,
)
from geounet.vectorize.graph import CenterlineGraph, clean_graph, to_networkx
from geounet.vectorize.skeleton import edt_at, fill_small_holes, thin

CLEAN = {"min_spur_px": 12.0, "min_component_px": 30.0, "bridge_px": 10.0, "simplify_px": 1.0}


def burn(lines: list[list[tuple[float, float]]], widths: list[float], shape: tuple[int, int]) -> np.ndarray:
    """Thick polylines ((x, y) = (col, row) in pixels) burned on a grid of ``shape``."""
    with np.errstate(all="ignore"):  # GEOS divides by zero on repeated points; the buffer is still right
        geoms = [shapely.LineString(pts).buffer(w / 2) for pts, w in zip(lines, widths)]
    return rasterize(geoms, out_shape=shape).astype(bool)


def cuts_of(n: int, inner: list[int]) -> list[int]:
    return sorted({0, n, *(c for c in inner if 0 < c < n)})


def blockwise(
    mask: np.ndarray, rows: list[int], cols: list[int], halo: int, prob: np.ndarray | None = None, **trace: int
) -> list[WindowPieces]:
    """Pieces of every window: the cores between ``rows`` × ``cols`` cuts, plus ``halo``, clipped."""
    h, w = mask.shape
    out = []
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            wr0, wr1, wc0, wc1 = max(r0 - halo, 0), min(r1 + halo, h), max(c0 - halo, 0), min(c1 + halo, w)
            out.append(
                trace_window(
                    mask[wr0:wr1, wc0:wc1],
                    (slice(r0 - wr0, r1 - wr0), slice(c0 - wc0, c1 - wc0)),
                    (wr0, wc0),
                    None if prob is None else prob[wr0:wr1, wc0:wc1],
                    **trace,
                )
            )
    return out


def whole(mask: np.ndarray, prob: np.ndarray | None = None, **trace: int) -> CenterlineGraph:
    return join_windows([trace_window(mask, (slice(None), slice(None)), (0, 0), prob, **trace)])


def assert_same(a: CenterlineGraph, b: CenterlineGraph) -> None:
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.degree, b.degree)
    assert len(a.edges) == len(b.edges)
    for x, y in zip(a.edges, b.edges):
        assert (x.u, x.v) == (y.u, y.v)
        np.testing.assert_array_equal(x.path, y.path)
        np.testing.assert_array_equal(x.xy, y.xy)
        np.testing.assert_array_equal(x.width_px, y.width_px)
        np.testing.assert_array_equal(x.prob, y.prob)


def check_seamless(
    mask: np.ndarray, rows: list[int], cols: list[int], prob: np.ndarray | None = None, **trace: int
) -> CenterlineGraph:
    """Block-wise == whole, joined and cleaned; returns the whole-mask graph."""
    filled = fill_small_holes(mask, trace.get("max_hole_area_px", 0), trace.get("max_hole_extent_px", 0))
    halo = exact_halo_px(2 * float(ndimage.distance_transform_edt(filled).max()), trace.get("max_hole_extent_px", 0))
    ref = whole(mask, prob, **trace)
    joined = join_windows(blockwise(mask, rows, cols, halo, prob, **trace))
    assert_same(joined, ref)
    assert_same(clean_graph(joined, **CLEAN), clean_graph(ref, **CLEAN))
    return ref


# --- the seam-exactness property ---------------------------------------------------------


@st.composite
def road_scenes(draw: st.DrawFn) -> tuple[np.ndarray, list[int], list[int], int, int]:
    h = draw(st.integers(40, 300))
    w = draw(st.integers(40, 300))
    coord = st.tuples(st.floats(-20, w + 20), st.floats(-20, h + 20))
    lines = draw(st.lists(st.lists(coord, min_size=2, max_size=4), min_size=1, max_size=4))
    widths = draw(st.lists(st.floats(3, 15), min_size=len(lines), max_size=len(lines)))
    rows = cuts_of(h, draw(st.lists(st.integers(1, h - 1), max_size=3)))
    cols = cuts_of(w, draw(st.lists(st.integers(1, w - 1), max_size=3)))
    area = draw(st.sampled_from([0, 4, 30]))
    extent = draw(st.sampled_from([0, 3, 8]))
    return burn(lines, widths, (h, w)), rows, cols, area, extent


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(road_scenes(), st.integers(0, 2**32 - 1))
def test_blockwise_graph_equals_whole_mask_graph(scene: tuple, seed: int) -> None:
    mask, rows, cols, area, extent = scene
    prob = np.random.default_rng(seed).integers(0, 256, mask.shape).astype(np.uint8)
    check_seamless(mask, rows, cols, prob, max_hole_area_px=area, max_hole_extent_px=extent)


# --- explicit seam cases -------------------------------------------------------------------


def test_road_running_exactly_along_a_seam() -> None:
    # 9 px road whose centreline is row 50, the first row of the lower cores; another on col 60.
    mask = burn([[(-5, 50), (125, 50)], [(60, -5), (60, 125)]], [9, 9], (120, 120))
    ref = check_seamless(mask, [0, 50, 120], [0, 60, 120])
    assert sorted(ref.degree.tolist()) == [1, 1, 1, 1, 4]
    assert check_seamless(mask, [0, 49, 51, 120], [0, 59, 61, 120]) is not None  # 2 px cores on the seam


def test_junction_on_the_corner_of_four_blocks() -> None:
    mask = burn([[(-5, 60), (125, 60)], [(60, -5), (60, 125)]], [11, 11], (120, 120))
    ref = check_seamless(mask, [0, 60, 120], [0, 60, 120])
    assert sorted(ref.degree.tolist()) == [1, 1, 1, 1, 4]
    assert np.abs(ref.nodes[ref.degree == 4][0] - 60).max() <= 1
    # A third road through the corner: the thinned star has junctions on every side of it.
    star = mask | burn([[(0, 0), (120, 120)]], [7], (120, 120))
    ref = check_seamless(star, [0, 60, 120], [0, 60, 120])
    assert (ref.degree == 1).sum() == 6
    assert np.abs(ref.nodes[ref.degree >= 3] - 60).max() <= 8


def test_loop_spanning_four_blocks_gets_one_canonical_node() -> None:
    ring = shapely.Point(60, 60).buffer(35).exterior
    mask = rasterize([ring.buffer(4)], out_shape=(120, 120)).astype(bool)
    ref = check_seamless(mask, [0, 60, 120], [0, 60, 120])
    assert len(ref.nodes) == 1 and len(ref.edges) == 1
    (edge,) = ref.edges
    assert edge.u == edge.v == 0
    rc = edge.path
    assert tuple(ref.nodes[0]) == min(map(tuple, rc.tolist()))  # the loop's smallest pixel
    assert 2 * math.pi * 33 < edge.length_px < 2 * math.pi * 37


def test_road_leaving_and_reentering_a_core() -> None:
    x = np.linspace(-5, 165, 60)
    wave = list(zip(x, 60 + 12 * np.sin(x / 9)))
    mask = burn([wave], [6], (120, 160))
    ref = check_seamless(mask, [0, 60, 120], [0, 50, 90, 160])
    assert len(ref.edges) == 1 and sorted(ref.degree.tolist()) == [1, 1]


def test_a_window_missing_from_the_join_is_named() -> None:
    mask = burn([[(-5, 30), (65, 30)]], [5], (60, 60))
    pieces = blockwise(mask, [0, 60], [0, 30, 60], 10)
    with pytest.raises(ValueError, match="no window's core continues it"):
        join_windows(pieces[:1])


def test_window_pieces_pickle_and_check_their_core() -> None:
    mask = burn([[(-5, 30), (65, 30)]], [5], (60, 60))
    pieces = blockwise(mask, [0, 60], [0, 30, 60], 10)
    again = pickle.loads(pickle.dumps(pieces))
    assert_same(join_windows(again), join_windows(pieces))
    with pytest.raises(ValueError, match="empty or strided"):
        trace_window(mask, (slice(10, 10), slice(0, 5)))


# --- units -----------------------------------------------------------------------------------


def test_plus_has_one_junction_of_degree_four_and_four_ends() -> None:
    mask = np.zeros((41, 41), dtype=bool)
    mask[18:23, :] = mask[:, 18:23] = True
    g = centerline_graph(mask)
    assert sorted(g.degree.tolist()) == [1, 1, 1, 1, 4]
    assert tuple(g.nodes[g.degree == 4][0]) == (20, 20)


@pytest.mark.parametrize("k", [5, 7, 11])
def test_width_of_a_straight_road_is_its_pixel_count(k: int) -> None:
    mask = np.zeros((40, 80), dtype=bool)
    mask[10 : 10 + k, :] = True
    prob = np.where(mask, 204, 0).astype(np.uint8)
    (edge,) = centerline_graph(mask, prob).edges
    assert edge.median_width_px == k
    assert edge.mean_prob == pytest.approx(0.8)
    (edge,) = centerline_graph(mask.T.copy()).edges
    assert edge.median_width_px == k and math.isnan(edge.mean_prob)


def test_short_spur_is_pruned_and_long_one_kept() -> None:
    mask = burn([[(-5, 40), (125, 40)], [(40, 40), (40, 32)], [(90, 40), (90, 5)]], [5, 3, 5], (80, 120))
    raw = centerline_graph(mask)
    assert sorted(raw.degree.tolist()) == [1, 1, 1, 1, 3, 3]
    g = clean_graph(raw, min_spur_px=15)
    assert sorted(g.degree.tolist()) == [1, 1, 1, 3]  # the 8 px spur went, its junction merged away
    assert g.nodes[g.degree == 3][0][1] == 90


def test_small_hole_is_filled_and_big_one_kept() -> None:
    mask = np.zeros((60, 100), dtype=bool)
    mask[20:41, :] = True
    mask[29:32, 20:23] = False  # 3×3 hole
    mask[26:35, 60:75] = False  # 9×15 hole
    kw = {"max_hole_area_px": 20, "max_hole_extent_px": 5}
    assert fill_small_holes(mask, 20, 5)[30, 21] and not fill_small_holes(mask, 20, 5)[30, 65]
    assert cycles(centerline_graph(mask, **kw)) == 1  # around the big hole only
    assert cycles(centerline_graph(mask)) == 2


def cycles(g: CenterlineGraph) -> int:
    """Independent cycles of a graph: edges - nodes + components."""
    return len(g.edges) - len(g.nodes) + nx.number_connected_components(to_networkx(g))


def test_holes_touching_the_border_are_never_filled() -> None:
    mask = np.ones((10, 10), dtype=bool)
    mask[0:2, 4:6] = False  # touches the top border
    mask[5, 5] = False
    out = fill_small_holes(mask, 10, 5)
    assert not out[0:2, 4:6].any() and out[5, 5]


def test_gap_bridging_joins_dead_ends_that_face_each_other() -> None:
    mask = burn([[(-5, 30), (50, 30)], [(57, 30), (125, 30)], [(80, 50), (80, 75)]], [5, 5, 5], (80, 120))
    g = centerline_graph(mask)
    assert len(g.edges) == 3
    bridged = clean_graph(g, bridge_px=10)
    assert len(bridged.edges) == 2  # the two halves are one edge; the side road does not face them
    assert sorted(bridged.degree.tolist()) == [1, 1, 1, 1]
    assert len(clean_graph(g, bridge_px=3).edges) == 3


def test_simplification_keeps_ends_and_pixel_paths() -> None:
    mask = burn([[(5, 5), (95, 50)]], [5], (60, 100))
    raw = centerline_graph(mask)
    simple = clean_graph(raw, simplify_px=1.0)
    (a,), (b,) = raw.edges, simple.edges
    assert len(b.xy) < len(a.xy) / 4
    np.testing.assert_array_equal(b.xy[[0, -1]], a.xy[[0, -1]])
    np.testing.assert_array_equal(b.path, a.path)


def test_to_networkx_is_an_osmnx_style_multigraph() -> None:
    mask = np.zeros((41, 41), dtype=bool)
    mask[18:23, :] = mask[:, 18:23] = True
    g = centerline_graph(mask)
    G = to_networkx(g)
    assert G.is_multigraph() and sorted(G.nodes) == list(range(5))
    assert G.nodes[0]["x"] == g.nodes[0][1] + 0.5 and G.nodes[0]["pos"] == (G.nodes[0]["x"], G.nodes[0]["y"])
    (u, v, key, data) = next(iter(G.edges(keys=True, data=True)))
    assert key == 0 and data["length"] == pytest.approx(data["geometry"].length) and data["width_px"] == 5
    metres = to_networkx(g, Affine(0.5, 0, 1000, 0, -0.5, 2000))
    assert metres.nodes[0]["x"] == 1000 + 0.5 * G.nodes[0]["x"]
    assert metres.nodes[0]["y"] == 2000 - 0.5 * G.nodes[0]["y"]
    assert metres.edges[u, v, key]["length"] == pytest.approx(data["length"] / 2)
    assert metres.edges[u, v, key]["width"] == 2.5


def test_thin_and_exact_halo() -> None:
    bar = np.zeros((9, 16), dtype=bool)
    bar[2:7, 2:14] = True
    assert thin(bar)[4].sum() >= 6 and thin(bar).sum() == thin(bar)[4].sum()
    assert exact_halo_px(14.2, 3) == 15 + 3 + 12


@pytest.mark.parametrize("seed", range(6))
def test_thin_equals_scikit_image_thin_pixel_for_pixel(seed: int) -> None:
    """The active-set Guo & Hall thinning gives exactly scikit-image's result (blobs, roads,
    salt noise, objects on the array's border)."""
    from skimage.morphology import thin as skimage_thin

    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random((150, 170)), 2 + seed) > 0.5
    noisy = blobs | (rng.random(blobs.shape) > 0.93) if seed % 2 else blobs
    assert np.array_equal(thin(noisy), skimage_thin(noisy))


def test_edt_at_equals_scipy_distance_transform() -> None:
    rng = np.random.default_rng(3)
    m = ndimage.gaussian_filter(rng.random((120, 140)), 3) > 0.45
    rows, cols = np.nonzero(thin(m))
    assert np.array_equal(edt_at(m, rows, cols), ndimage.distance_transform_edt(m)[rows, cols])
