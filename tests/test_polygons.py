"""polygons.py: world coordinates, pixel sizes and areas in metres, post-merge processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import Point, Polygon, box, shape

from geounet.errors import ConfigError
from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.postprocess import WorldPolygons, areas_m2, pixel_size_m, postprocess, to_world
from geounet.vectorize.seams import merge_seams

US_FOOT = 1200 / 3937  # metres, exactly
UTM = "EPSG:32633"
NORTH_UP_HALF_METRE = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)


def merged_polygons(mask: np.ndarray, prob: np.ndarray | None, row_cuts=(), col_cuts=()):
    h, w = mask.shape
    rows, cols = [0, *row_cuts, h], [0, *col_cuts, w]
    blocks = [
        polygonize_block(
            mask[r0:r1, c0:c1],
            None if prob is None else prob[r0:r1, c0:c1],
            row_off=r0,
            col_off=c0,
            scene_height=h,
            scene_width=w,
        )
        for r0, r1 in zip(rows[:-1], rows[1:])
        for c0, c1 in zip(cols[:-1], cols[1:])
    ]
    return merge_seams(blocks)


# --------------------------------------------------------------------------- to_world


def test_rotated_affine_puts_a_pixel_where_expected() -> None:
    angle = math.radians(30)
    # 2 m pixels, rotated by 30 degrees, origin at (1000, 2000), rows running "down".
    a, b, c = 2 * math.cos(angle), 2 * math.sin(angle), 1000.0
    d, e, f = 2 * math.sin(angle), -2 * math.cos(angle), 2000.0
    affine = Affine(a, b, c, d, e, f)
    col, row = 3, 5
    expected_corner = (
        1000 + 2 * (3 * math.cos(angle) + 5 * math.sin(angle)),
        2000 + 2 * (3 * math.sin(angle) - 5 * math.cos(angle)),
    )
    pixel = box(col, row, col + 1, row + 1)
    (world,) = to_world([pixel], affine)
    assert shapely.is_valid(world)
    assert world.area == pytest.approx(4.0)  # |det| = 4 m^2 per pixel
    corners = shapely.get_coordinates(world)
    assert np.isclose(corners, expected_corner).all(axis=1).any()
    centre = to_world([Point(col + 0.5, row + 0.5)], affine)[0]
    assert world.contains(centre)
    # A 6-tuple in Affine order gives the same result.
    assert shapely.equals_exact(to_world([pixel], (a, b, c, d, e, f))[0], world, tolerance=1e-9)


def test_sheared_and_north_up_transforms() -> None:
    sheared = to_world([box(0, 0, 2, 1)], Affine(1, 0.5, 10, 0, -1, 20))[0]
    assert sheared.area == pytest.approx(2.0) and shapely.is_valid(sheared)
    north_up = to_world([box(0, 0, 1, 1)], NORTH_UP_HALF_METRE)[0]
    assert north_up.bounds == pytest.approx((500000.0, 4649999.5, 500000.5, 4650000.0))
    with pytest.raises(ValueError, match="degenerate"):
        to_world([box(0, 0, 1, 1)], Affine(1, 1, 0, 1, 1, 0))


# --------------------------------------------------------------------------- pixel size


def test_pixel_size_projected_in_metres_and_feet() -> None:
    assert pixel_size_m(NORTH_UP_HALF_METRE, UTM, (500000, 4650000)) == pytest.approx(0.5)
    rotated = Affine.translation(500000, 4650000) @ Affine.rotation(45) @ Affine.scale(2, -2)
    assert pixel_size_m(rotated, UTM, (500000, 4650000)) == pytest.approx(2.0)
    feet = Affine(3, 0, 700000, 0, -3, 3000000)
    assert pixel_size_m(feet, "EPSG:2249", (700000, 3000000)) == pytest.approx(3 * US_FOOT)


def test_pixel_size_geographic_is_geodesic() -> None:
    deg = Affine(1e-4, 0, 0, 0, -1e-4, 0)
    # 1e-4 degree at the equator: 11.132 m east-west, 11.057 m north-south (WGS84).
    assert pixel_size_m(deg, "EPSG:4326", (0.0, 0.0)) == pytest.approx(math.sqrt(11.1319 * 11.0574), rel=1e-4)
    # At 60 degrees north the east-west side halves.
    at_60 = pixel_size_m(deg, "EPSG:4326", (10.0, 60.0))
    assert at_60 == pytest.approx(math.sqrt(5.5800 * 11.1412), rel=1e-3)


# --------------------------------------------------------------------------- areas


def test_areas_projected_metres_and_us_feet() -> None:
    square = box(500000, 4650000, 500010, 4650010)
    assert areas_m2([square], UTM)[0] == pytest.approx(100.0)
    feet_square = box(700000, 3000000, 700100, 3000100)  # 100 ft x 100 ft
    assert areas_m2([feet_square], "EPSG:2249")[0] == pytest.approx(100 * 100 * US_FOOT**2)
    assert areas_m2([feet_square], "EPSG:2249")[0] == pytest.approx(929.0341, rel=1e-6)


def test_areas_geodesic_near_the_equator() -> None:
    square = box(0.0, 0.0, 0.001, 0.001)
    (area,) = areas_m2([square], "EPSG:4326")
    assert area == pytest.approx(12364, rel=0.005)  # the usual spherical figure, within 0.5 %
    # On the WGS84 ellipsoid: 111.3195 m x 110.5744 m.
    assert area == pytest.approx(111.3195 * 110.5744, rel=1e-4)
    # Orientation does not matter; holes are subtracted; nothing counts as zero.
    cw = shapely.orient_polygons(square, exterior_cw=True)
    with_hole = Polygon(square.exterior.coords, [box(0.0002, 0.0002, 0.0007, 0.0007).exterior.coords])
    out = areas_m2([cw, with_hole, None, Polygon()], "EPSG:4326")
    assert out[0] == pytest.approx(area)
    assert out[1] == pytest.approx(area * (1 - 0.25), rel=1e-3)
    assert out[2] == 0 and out[3] == 0


# --------------------------------------------------------------------------- postprocess


def test_score_area_and_min_area_filter() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px = 1 m^2 at 0.5 m pixels
    mask[10:20, 5:15] = True  # 100 px = 25 m^2
    prob = np.where(mask, 0.8, 0.1).astype(np.float32)
    prob[10, 5] = 0.3
    m = merged_polygons(mask, prob, [7], [8])
    out = postprocess(m.geoms, m.pixel_count, m.prob_sum, affine=NORTH_UP_HALF_METRE, crs=UTM)
    assert isinstance(out, WorldPolygons)
    np.testing.assert_allclose(out.area_m2, [1.0, 25.0])
    np.testing.assert_allclose(out.score, [0.8, (99 * 0.8 + 0.3) / 100], rtol=1e-6)
    assert out.pixel_count.tolist() == [4, 100]
    geoms, area, score, count, _pixels = postprocess(
        m.geoms, m.pixel_count, m.prob_sum, affine=NORTH_UP_HALF_METRE, crs=UTM, min_area_m2=2.0
    )
    assert len(geoms) == 1 and area.tolist() == [25.0] and count.tolist() == [100]
    assert geoms[0].bounds == pytest.approx((500002.5, 4649990.0, 500007.5, 4649995.0))


def test_fill_holes_by_area_in_metres() -> None:
    mask = np.ones((12, 12), dtype=bool)
    mask[2, 2] = False  # 1 px hole = 4 m^2 at 2 m pixels
    mask[5:9, 5:9] = False  # 16 px hole = 64 m^2
    m = merged_polygons(mask, None, [6], [6])
    affine = Affine(2, 0, 500000, 0, -2, 4650000)  # inside the UTM zone: the plane is true to the ground
    out = postprocess(m.geoms, m.pixel_count, m.prob_sum, affine=affine, crs=UTM, fill_holes_m2=10)
    (g,) = out.geoms
    assert len(g.interiors) == 1
    assert out.area_m2[0] == pytest.approx((144 - 16) * 4)
    assert out.pixel_count.tolist() == [144 - 17]  # pixels as segmented, before filling
    untouched = postprocess(m.geoms, m.pixel_count, m.prob_sum, affine=affine, crs=UTM)
    assert len(untouched.geoms[0].interiors) == 2


def test_fill_holes_geographic() -> None:
    mask = np.ones((10, 10), dtype=bool)
    mask[2, 2] = False  # ~1.2 m^2 at 1e-5 degree pixels near the equator
    mask[5:8, 5:8] = False  # ~11 m^2
    m = merged_polygons(mask, None)
    affine = Affine(1e-5, 0, 0, 0, -1e-5, 0)
    out = postprocess(m.geoms, m.pixel_count, m.prob_sum, affine=affine, crs="EPSG:4326", fill_holes_m2=5)
    assert len(out.geoms[0].interiors) == 1
    assert out.area_m2[0] == pytest.approx((100 - 9) * 1.11319 * 1.10574, rel=1e-3)


def blob_mask() -> np.ndarray:
    rng = np.random.default_rng(42)
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - 30) ** 2 + (xx - 33) ** 2 < 26**2
    mask &= ~(((yy - 28) ** 2 + (xx - 36) ** 2) < 6**2)  # a hole
    mask ^= ndimage.binary_opening(rng.random((64, 64)) < 0.35)  # ragged edges, small islands
    return mask


@pytest.mark.parametrize(
    ("crs", "affine"), [(UTM, NORTH_UP_HALF_METRE), ("EPSG:4326", Affine(5e-6, 0, 10, 0, -5e-6, 45))]
)
def test_simplification_does_not_depend_on_the_block_grid(crs, affine) -> None:
    mask = blob_mask()
    kwargs = dict(affine=affine, crs=crs, simplify_m=1.2, scene_shape=mask.shape)
    results = []
    for cuts in (((), ()), ((16, 32, 48), (16, 32, 48)), ((5, 6, 40), (1, 33)), ((30,), ())):
        m = merged_polygons(mask, None, *cuts)
        results.append(postprocess(m.geoms, m.pixel_count, m.prob_sum, **kwargs))
    # Whole-mask GDAL polygons as input give the very same output too.
    whole = [shape(g) for g, _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4)]
    whole_keys = [(int(g.bounds[1]), int(g.bounds[0])) for g in whole]
    order = sorted(range(len(whole)), key=lambda i: whole_keys[i])
    results.append(
        postprocess(np.array(whole, dtype=object)[order], np.ones(len(whole)), np.ones(len(whole)), **kwargs)
    )
    first = results[0]
    unsimplified = shapely.get_num_coordinates(to_world(merged_polygons(mask, None).geoms, affine)).sum()
    assert shapely.get_num_coordinates(first.geoms).sum() < unsimplified
    assert shapely.is_valid(first.geoms).all()
    for other in results[1:]:
        assert len(other.geoms) == len(first.geoms)
        assert all(shapely.equals_exact(a, b, tolerance=0) for a, b in zip(first.geoms, other.geoms))


def test_simplified_geometries_stay_valid_and_polygonal() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((60, 60)) < 0.55)
        m = merged_polygons(mask, None, [20, 40], [25])
        out = postprocess(m.geoms, m.pixel_count, m.prob_sum, affine=Affine(1, 0, 0, 0, -1, 0), crs=UTM, simplify_m=2.5)
        assert shapely.is_valid(out.geoms).all()
        kinds = set(shapely.get_type_id(out.geoms).tolist())
        assert kinds <= {shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON}
        assert (out.area_m2 > 0).all()


def test_small_tolerance_keeps_pixel_shapes() -> None:
    mask = blob_mask()
    m = merged_polygons(mask, None, [20], [20])
    out = postprocess(m.geoms, m.pixel_count, m.prob_sum, affine=NORTH_UP_HALF_METRE, crs=UTM, simplify_m=0.1)
    np.testing.assert_allclose(out.area_m2, m.pixel_count * 0.25)  # 0.2 px: no corner can go


def test_us_feet_scene_areas_in_square_metres() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:6, 3:8] = True
    m = merged_polygons(mask, None, [4], [5])
    out = postprocess(
        m.geoms,
        m.pixel_count,
        m.prob_sum,
        affine=Affine(2, 0, 700000, 0, -2, 3000000),
        crs="EPSG:2249",
        min_area_m2=1.0,
    )
    assert out.area_m2[0] == pytest.approx(20 * 4 * US_FOOT**2)


def test_bad_options_and_inputs() -> None:
    g = np.array([box(0, 0, 1, 1)], dtype=object)
    with pytest.raises(ConfigError, match="simplify_m"):
        postprocess(g, [1], [0.5], affine=NORTH_UP_HALF_METRE, crs=UTM, simplify_m=-1)
    with pytest.raises(ConfigError, match="min_area_m2"):
        postprocess(g, [1], [0.5], affine=NORTH_UP_HALF_METRE, crs=UTM, min_area_m2=float("nan"))
    with pytest.raises(ValueError, match="differ in length"):
        postprocess(g, [1, 2], [0.5], affine=NORTH_UP_HALF_METRE, crs=UTM)
    with pytest.raises(ValueError, match="CRS"):
        postprocess(g, [1], [0.5], affine=NORTH_UP_HALF_METRE, crs=None)
    empty = postprocess([], [], [], affine=NORTH_UP_HALF_METRE, crs=UTM, simplify_m=1)
    assert len(empty.geoms) == 0 and empty.area_m2.dtype == np.float64


# --------------------------------------------------------------------------- Web Mercator
def _mercator_square(lat: float, side_m: float) -> tuple[Polygon, float]:
    """A square of about ``side_m`` ground metres at ``lat`` in EPSG:3857, and its geodesic area."""
    from pyproj import Geod, Transformer

    dlat = side_m / 111_320.0
    dlon = dlat / math.cos(math.radians(lat))
    lonlat = box(10.0, lat, 10.0 + dlon, lat + dlat)
    true = abs(Geod(ellps="WGS84").geometry_area_perimeter(shapely.orient_polygons(lonlat))[0])
    to_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    return shapely.transform(lonlat, lambda xy: np.column_stack(to_3857.transform(xy[:, 0], xy[:, 1]))), true


@pytest.mark.parametrize("lat", [0.0, 30.0, 45.0, 60.0, 70.0, -75.0])
def test_web_mercator_areas_are_ground_areas(lat: float) -> None:
    square, true = _mercator_square(lat, 100.0)
    assert areas_m2([square], "EPSG:3857")[0] == pytest.approx(true, rel=0.005)
    if abs(lat) >= 45:  # the plane's own area is far off there (8.5x at 70 degrees)
        assert square.area > 1.9 * true


def test_web_mercator_thresholds_are_ground_metres() -> None:
    """A 0.3 m map-pixel scene at 70 degrees N: its pixels are 0.103 m on the ground, so a
    200 x 200 px building is about 20.5 x 20.5 m = 420 m2, not the plane's 3600 m2."""
    lat = 70.0
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(10.0, lat)
    affine = Affine(0.3, 0, x, 0, -0.3, y)
    assert pixel_size_m(affine, "EPSG:3857", (x, y)) == pytest.approx(0.3 * math.cos(math.radians(lat)), rel=0.01)
    mask = np.zeros((240, 240), dtype=bool)
    mask[20:220, 20:220] = True
    merged = merge_seams([polygonize_block(mask, None, row_off=0, col_off=0, scene_height=240, scene_width=240)])
    out = postprocess(merged.geoms, merged.pixel_count, merged.prob_sum, affine=affine, crs="EPSG:3857")
    assert out.area_m2[0] == pytest.approx((200 * 0.3 * math.cos(math.radians(lat))) ** 2, rel=0.01)
    # min_area_m2 in ground square metres: a 500 m2 threshold drops it, 400 m2 keeps it
    kw = dict(affine=affine, crs="EPSG:3857")
    assert len(postprocess(merged.geoms, merged.pixel_count, merged.prob_sum, min_area_m2=500, **kw).geoms) == 0
    assert len(postprocess(merged.geoms, merged.pixel_count, merged.prob_sum, min_area_m2=400, **kw).geoms) == 1
