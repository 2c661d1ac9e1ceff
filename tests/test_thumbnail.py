"""The quicklook picture assembled from block parts equals averaging the whole scene."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.export.quicklook import (
    ThumbnailCanvas,
    block_thumbnail,
    display_bands,
    thumbnail_factor,
    thumbnail_shape,
)


def _whole_average(rgb: np.ndarray, valid: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: mean of the valid pixels of every f x f cell, computed cell by cell."""
    _, h, w = rgb.shape
    rows, cols = thumbnail_shape(w, h, f)
    mean = np.zeros((3, rows, cols))
    ok = np.zeros((rows, cols), bool)
    for i in range(rows):
        for j in range(cols):
            v = valid[i * f : (i + 1) * f, j * f : (j + 1) * f]
            if v.any():
                ok[i, j] = True
                cell = np.nan_to_num(rgb[:, i * f : (i + 1) * f, j * f : (j + 1) * f].astype(np.float64))
                mean[:, i, j] = cell[:, v].mean(axis=1)
    return mean, ok


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    factor=st.integers(1, 9),
    block_h=st.integers(1, 40),
    block_w=st.integers(1, 40),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]),
    nodata=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_parts_from_any_block_grid_add_up_to_the_whole_average(
    h: int, w: int, factor: int, block_h: int, block_w: int, dtype: str, nodata: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 250, (3, h, w)).astype(dtype)
    valid = rng.random((h, w)) > 0.3 if nodata else np.ones((h, w), bool)
    if dtype == "float32" and nodata:
        rgb[:, ~valid] = np.nan  # a float scene's nodata pixels may hold NaN
    canvas = ThumbnailCanvas(w, h, factor)
    for r in range(0, h, block_h):
        for c in range(0, w, block_w):
            sl = (slice(r, r + block_h), slice(c, c + block_w))
            canvas.add(block_thumbnail(rgb[:, sl[0], sl[1]], valid[sl], row_off=r, col_off=c, factor=factor))
    mean, ok = canvas.image()
    want_mean, want_ok = _whole_average(rgb, valid, factor)
    assert mean.shape == (3, *thumbnail_shape(w, h, factor))
    assert np.array_equal(ok, want_ok)
    np.testing.assert_allclose(mean[:, ok], want_mean[:, ok], rtol=1e-5, atol=1e-3)


def test_factor_and_shape_fit_the_requested_size() -> None:
    assert thumbnail_factor(200, 150, 1024) == 1 and thumbnail_shape(200, 150, 1) == (150, 200)
    f = thumbnail_factor(4097, 1000, 1024)
    assert f == 5 and max(thumbnail_shape(4097, 1000, f)) <= 1024
    assert thumbnail_factor(40000, 40000, 1024) == 40
    with pytest.raises(ValueError, match="quicklook size"):
        thumbnail_factor(10, 10, 0)


def test_grey_scenes_are_shown_as_grey() -> None:
    one = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    shown = display_bands(one)
    assert shown.shape == (3, 3, 4) and all(np.array_equal(shown[i], one[0]) for i in range(3))
    four = np.zeros((4, 2, 2))
    assert display_bands(four).shape == (3, 2, 2)


# --------------------------------------------------------------------------- outlines
def test_outline_of_a_rectangle_with_a_hole_is_its_border_pixels() -> None:
    import shapely

    from geounet.export.quicklook import outline_mask

    # scene px 8..40 x 16..48 with a hole 24..32 x 24..40, drawn at factor 4 (10 x 12 picture)
    poly = shapely.Polygon([(8, 16), (40, 16), (40, 48), (8, 48)], holes=[[(24, 24), (32, 24), (32, 40), (24, 40)]])
    got = outline_mask([poly], (16, 12), factor=4)
    want = np.zeros((16, 12), bool)
    want[4, 2:11] = want[12, 2:11] = True  # top and bottom edges (y 16 and 48 -> rows 4 and 12)
    want[4:13, 2] = want[4:13, 10] = True  # left and right edges (x 8 and 40 -> columns 2 and 10)
    want[6, 6:9] = want[10, 6:9] = True  # the hole's ring
    want[6:11, 6] = want[6:11, 8] = True
    assert np.array_equal(got, want)


def test_lines_are_drawn_themselves_not_their_end_points() -> None:
    import shapely

    from geounet.export.quicklook import outline_mask

    line = shapely.LineString([(4, 10), (44, 10), (44, 30)])  # scene px, drawn at factor 4
    got = outline_mask([line], (10, 12), factor=4)
    want = np.zeros((10, 12), bool)
    want[2, 1:12] = True  # y 10 -> row 2, x 4..44 -> columns 1..11
    want[2:8, 11] = True  # x 44 -> column 11, y 10..30 -> rows 2..7
    assert np.array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), factor=st.integers(1, 6), chunk=st.sampled_from([3, 50, 200_000]))
def test_outline_pixels_are_those_rasterize_touches(seed: int, factor: int, chunk: int) -> None:
    """Every marked pixel is one GDAL's all-touched rasterization of the rings also marks,
    every vertex's pixel is marked, and chunking the vertices changes nothing."""
    import shapely
    from rasterio.features import rasterize

    import geounet.export.quicklook as th

    rng = np.random.default_rng(seed)
    polys = []
    for _ in range(rng.integers(1, 6)):
        c = rng.uniform(25, 75, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 12)))
        radius = rng.uniform(1, 20, len(angles))
        polys.append(shapely.Polygon(np.c_[c[0] + radius * np.cos(angles), c[1] + radius * np.sin(angles)]))
    shape = (-(-100 // factor), -(-100 // factor))
    saved = th.OUTLINE_CHUNK_VERTICES
    th.OUTLINE_CHUNK_VERTICES = chunk
    try:
        got = th.outline_mask(polys, shape, factor=factor)
    finally:
        th.OUTLINE_CHUNK_VERTICES = saved
    assert np.array_equal(got, th.outline_mask(polys, shape, factor=factor))
    rings = [shapely.affinity.scale(p.exterior, 1 / factor, 1 / factor, origin=(0, 0)) for p in polys]
    touched = rasterize([(r, 1) for r in rings], out_shape=shape, all_touched=True, dtype="uint8") > 0
    # a sample exactly on a pixel edge falls in the pixel below/right; GDAL may count either
    grown = touched | np.roll(touched, 1, 0) | np.roll(touched, 1, 1) | np.roll(np.roll(touched, 1, 0), 1, 1)
    assert not (got & ~grown).any()
    xy = np.concatenate([np.asarray(r.coords) for r in rings])
    r_, c_ = (
        np.clip(np.floor(xy[:, 1]).astype(int), 0, shape[0] - 1),
        np.clip(np.floor(xy[:, 0]).astype(int), 0, shape[1] - 1),
    )
    assert got[r_, c_].all()
    # a ring drawn with no gap: marked pixels of one ring form one 8-connected set
    from scipy import ndimage

    one = th.outline_mask(polys[:1], shape, factor=factor)
    assert ndimage.label(one, structure=np.ones((3, 3)))[1] == 1


def test_quicklook_outlines_come_from_the_post_processed_pixel_polygons() -> None:
    """The quicklook draws the polygons post-processing kept, in scene pixels (no CRS ->
    pixel round trip): they are exactly the written polygons before the geotransform, after
    hole filling and simplification, and small ones dropped from both alike."""
    import shapely
    from affine import Affine

    from geounet.vectorize.postprocess import postprocess, to_world

    transform = Affine(0.3, 0.0, 431_234.7, 0.0, -0.3, 6_121_987.1)  # 0.3 m, UTM south
    hole = shapely.Polygon([(3, 5), (17, 5), (17, 29), (3, 29)], [[(5, 7), (6, 7), (6, 8), (5, 8)]])
    px = np.asarray([hole, shapely.box(20, 0, 33, 7), shapely.box(40, 40, 41, 41)], dtype=object)
    counts = np.asarray([int(shapely.area(g)) for g in px])
    out = postprocess(
        px, counts, counts * 0.9, affine=transform, crs="EPSG:32733", fill_holes_m2=0.5, min_area_m2=1.0, simplify_m=0.3
    )
    assert len(out.pixel_geoms) == len(out.geoms) == 2  # the 0.09 m^2 square is dropped from both
    assert all(len(g.interiors) == 0 for g in out.pixel_geoms)  # the 0.09 m^2 hole is filled in both
    back = to_world(out.pixel_geoms, transform)
    assert shapely.equals_exact(back, out.geoms, tolerance=1e-9).all()
