"""polygonize_block: one block's polygons, statistics and edge strips, on arrays you can read."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import shapely
from rasterio.features import shapes
from shapely.geometry import box, shape

from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.seams import BlockPolygons, merge_seams


def grid(text: str) -> np.ndarray:
    """'#' = foreground, '.' = background; one row per line."""
    rows = [r.strip() for r in text.strip().splitlines()]
    return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


def whole_mask_polygons(mask: np.ndarray) -> list[shapely.Geometry]:
    m = mask.astype(np.uint8)
    return [shape(g) for g, _ in shapes(m, mask=mask, connectivity=4)]


MASK = grid(
    """
    ##..#
    ##..#
    ....#
    #.#..
    """
)


def test_single_block_equals_whole_mask_shapes() -> None:
    prob = np.arange(MASK.size, dtype=np.float32).reshape(MASK.shape) / 100
    b = polygonize_block(MASK, prob, row_off=0, col_off=0, scene_height=4, scene_width=5)
    assert len(b) == 4
    expected = whole_mask_polygons(MASK)
    assert len(expected) == 4
    for g in expected:
        assert sum(shapely.equals(g, b.geoms)) == 1
    by_geom = {shapely.normalize(g).wkt: i for i, g in enumerate(b.geoms)}
    square = by_geom[shapely.normalize(box(0, 0, 2, 2)).wkt]
    column = by_geom[shapely.normalize(box(4, 0, 5, 3)).wkt]
    assert b.pixel_count[square] == 4 and b.pixel_count[column] == 3
    assert b.prob_sum[square] == pytest.approx((0 + 1 + 5 + 6) / 100)
    assert b.prob_sum[column] == pytest.approx((4 + 9 + 14) / 100)
    assert b.edges == {}  # the block is the whole scene: no internal edges
    assert not b.touches_edge.any()


def test_coordinates_are_scene_pixels() -> None:
    b = polygonize_block(grid("#"), None, row_off=7, col_off=3, scene_height=20, scene_width=20)
    assert shapely.equals(b.geoms[0], box(3, 7, 4, 8))
    assert np.isnan(b.prob_sum[0])
    assert b.pixel_count.tolist() == [1]


def test_strips_name_the_polygon_of_each_edge_pixel() -> None:
    # Core at rows 2..5, columns 3..8 of a 10 x 10 scene: all four sides are internal.
    b = polygonize_block(MASK, None, row_off=2, col_off=3, scene_height=10, scene_width=10)
    label = {}
    for i, g in enumerate(b.geoms):
        x0, y0, _, _ = g.bounds
        label[(int(y0) - 2, int(x0) - 3)] = i + 1  # top-left pixel of each polygon -> label
    sq, col, lone0, lone2 = label[(0, 0)], label[(0, 4)], label[(3, 0)], label[(3, 2)]
    assert b.edges["top"].tolist() == [sq, sq, 0, 0, col]
    assert b.edges["bottom"].tolist() == [lone0, 0, lone2, 0, 0]
    assert b.edges["left"].tolist() == [sq, sq, 0, lone0]
    assert b.edges["right"].tolist() == [col, col, col, 0]
    assert all(s.dtype == np.int32 for s in b.edges.values())
    assert b.touches_edge.all()


def test_only_internal_sides_get_strips() -> None:
    mask = grid("#.\n..")
    b = polygonize_block(mask, None, row_off=0, col_off=0, scene_height=4, scene_width=2)
    assert set(b.edges) == {"bottom"}
    assert b.edges["bottom"].tolist() == [0, 0]
    assert not b.touches_edge.any()  # its only polygon lies on the scene border, not a seam
    b = polygonize_block(mask, None, row_off=2, col_off=0, scene_height=4, scene_width=2)
    assert set(b.edges) == {"top"}
    assert b.touches_edge.tolist() == [True]


def test_ring_with_hole_and_corner_touching_pixels() -> None:
    mask = grid(
        """
        ###.
        #.#.
        ###.
        ...#
        """
    )
    b = polygonize_block(mask, None, row_off=0, col_off=0, scene_height=4, scene_width=4)
    assert len(b) == 2  # the lone pixel touches the ring only at a corner
    ring = b.geoms[np.argmax(b.pixel_count)]
    assert len(ring.interiors) == 1 and b.pixel_count.max() == 8
    assert shapely.is_valid(b.geoms).all()


def test_empty_and_full_blocks() -> None:
    empty = polygonize_block(np.zeros((3, 4), bool), None, row_off=3, col_off=0, scene_height=6, scene_width=4)
    assert len(empty) == 0 and empty.pixel_count.dtype == np.int64
    assert empty.edges["top"].tolist() == [0, 0, 0, 0]
    full = polygonize_block(
        np.ones((3, 4), np.uint8), np.full((3, 4), 0.5), row_off=0, col_off=0, scene_height=6, scene_width=4
    )
    assert len(full) == 1 and shapely.equals(full.geoms[0], box(0, 0, 4, 3))
    assert full.prob_sum[0] == pytest.approx(6.0)
    assert full.edges["bottom"].tolist() == [1, 1, 1, 1]


def test_non_contiguous_views_are_accepted() -> None:
    rng = np.random.default_rng(3)
    big = rng.random((20, 30)) < 0.5
    prob = rng.random((20, 30)).astype(np.float32)
    view = big[5:15, 7:19]
    a = polygonize_block(view, prob[5:15, 7:19], row_off=5, col_off=7, scene_height=20, scene_width=30)
    b = polygonize_block(view.copy(), prob[5:15, 7:19].copy(), row_off=5, col_off=7, scene_height=20, scene_width=30)
    assert shapely.equals(a.geoms, b.geoms).all()
    np.testing.assert_allclose(a.prob_sum, b.prob_sum)


def test_pickles_compactly_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) < 0.4
    b = polygonize_block(mask, rng.random((64, 64)), row_off=64, col_off=0, scene_height=256, scene_width=64)
    data = pickle.dumps(b)
    back = pickle.loads(data)
    assert isinstance(back, BlockPolygons)
    assert shapely.equals(back.geoms, b.geoms).all()
    np.testing.assert_array_equal(back.pixel_count, b.pixel_count)
    np.testing.assert_array_equal(back.edges["top"], b.edges["top"])
    assert len(data) < len(pickle.dumps(list(b.geoms)))  # int32 vertices, not WKB per polygon
    empty = pickle.loads(
        pickle.dumps(
            polygonize_block(np.zeros((2, 2), bool), None, row_off=0, col_off=0, scene_height=2, scene_width=2)
        )
    )
    assert len(empty) == 0


def test_single_block_merge_passes_through() -> None:
    b = polygonize_block(MASK, None, row_off=0, col_off=0, scene_height=4, scene_width=5)
    merged = merge_seams([b])
    assert len(merged) == 4
    # Ordered by the first pixel in raster order: (0,0), (0,4), (3,0), (3,2).
    assert [tuple(map(int, g.bounds[:2])) for g in merged.geoms] == [(0, 0), (4, 0), (0, 3), (2, 3)]


@pytest.mark.parametrize(
    ("mask", "prob", "kw", "match"),
    [
        (np.zeros((2, 2, 2), bool), None, {}, "2-D"),
        (np.zeros((2, 2), bool), np.zeros((2, 3)), {}, "prob has shape"),
        (np.zeros((2, 2), bool), None, {"row_off": 9}, "does not fit"),
        (np.zeros((2, 2), bool), None, {"col_off": -1}, "does not fit"),
    ],
)
def test_bad_input_is_rejected(mask, prob, kw, match) -> None:
    args = {"row_off": 0, "col_off": 0, "scene_height": 10, "scene_width": 10, **kw}
    with pytest.raises(ValueError, match=match):
        polygonize_block(mask, prob, **args)
