"""Vector labels -> window rasters: CRS, layer/field/value selection, line widths, separation."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from scipy import ndimage

from geounet.errors import ConfigError
from geounet.train.config import ClassLabels
from geounet.train.data import pixel_weights
from geounet.train.labels import burn, burn_with_gaps, read_class_geometries

# Raster grid of these tests: EPSG:32633, 0.5 m pixels, 40 x 40 px, upper-left (500000, 4650000).
T = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)
SHAPE = (40, 40)
UTM = "EPSG:32633"


def px_box(row0: int, col0: int, row1: int, col1: int) -> shapely.Polygon:
    """Polygon of pixel rows [row0, row1) and cols [col0, col1) in the raster CRS."""
    x0, y0 = T @ (col0, row0)
    x1, y1 = T @ (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def to_lonlat(geoms: list[shapely.Geometry]) -> gpd.GeoSeries:
    return gpd.GeoSeries(geoms, crs=UTM).to_crs("EPSG:4326")


def full(cg, **kw) -> np.ndarray:
    return burn(cg, T, SHAPE, **kw)


def test_labels_in_another_crs_land_on_the_right_pixels(tmp_path):
    path = tmp_path / "b.geojson"
    gpd.GeoDataFrame({"id": [1, 2]}, geometry=to_lonlat([px_box(4, 6, 9, 13), px_box(20, 25, 31, 30)])).to_file(path)
    cg = read_class_geometries([path], ClassLabels(name="building"), UTM)
    mask = full(cg)
    expected = np.zeros(SHAPE, np.uint8)
    expected[4:9, 6:13] = 1
    expected[20:31, 25:30] = 1
    np.testing.assert_array_equal(mask, expected)
    # a window burns exactly its slice of the scene (its own affine transform)
    win = Window(3, 2, 24, 25)
    part = burn(cg, window_transform(win, T), (25, 24))
    np.testing.assert_array_equal(part, expected[2:27, 3:27])


def test_layer_selection_auto_single_layer_and_explicit(tmp_path):
    path = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"a": [1]}, geometry=[px_box(1, 1, 5, 5)], crs=UTM).to_file(path, layer="misnamed_123")
    cg = read_class_geometries([path], ClassLabels(name="building"), UTM)  # only layer: taken
    assert full(cg).sum() == 16
    gpd.GeoDataFrame({"a": [1]}, geometry=[px_box(10, 10, 12, 12)], crs=UTM).to_file(path, layer="other")
    with pytest.raises(ConfigError, match="misnamed_123, other"):
        read_class_geometries([path], ClassLabels(name="building"), UTM)
    cg = read_class_geometries([path], ClassLabels(name="building", layer="other"), UTM)
    assert full(cg).sum() == 4
    with pytest.raises(ConfigError, match="layer 'nope'"):
        read_class_geometries([path], ClassLabels(name="building", layer="nope"), UTM)


def test_field_value_selection(tmp_path):
    path = tmp_path / "landcover.gpkg"
    gpd.GeoDataFrame(
        {"Niveau_2": ["Building", "Road", "Vegetation", "building"]},
        geometry=[px_box(0, 0, 2, 2), px_box(10, 0, 12, 40), px_box(20, 20, 40, 40), px_box(5, 30, 8, 33)],
        crs=UTM,
    ).to_file(path, layer="landcover")
    cg = read_class_geometries([path], ClassLabels(name="building", field="Niveau_2", value="Building"), UTM)
    assert len(cg.geoms) == 2  # case-insensitive
    assert full(cg).sum() == 4 + 9
    cg = read_class_geometries([path], ClassLabels(name="x", field="Niveau_2", value=["Road", "Vegetation"]), UTM)
    assert full(cg).sum() == 80 + 400
    with pytest.raises(ConfigError, match="field 'Niveau_3'.*Niveau_2"):
        read_class_geometries([path], ClassLabels(name="building", field="Niveau_3", value="Building"), UTM)


def test_centerlines_are_buffered_by_their_width_in_metres(tmp_path):
    # a horizontal centerline through the middle of row 20's top edge (y of row 20), in EPSG:4326
    y = (T @ (0, 20))[1]
    line = shapely.LineString([(500000.0 - 5, y), (500020.0 + 5, y)])
    path = tmp_path / "roads.gpkg"
    gdf = gpd.GeoDataFrame({"width_m": [4.0]}, geometry=to_lonlat([line]))
    gdf.to_file(path, layer="road_centerlines")
    cg = read_class_geometries([path], ClassLabels(name="road", width_field="width_m"), UTM)
    rows = np.flatnonzero(full(cg).any(axis=1))
    assert rows.tolist() == list(range(16, 24))  # 4 m = 8 px of 0.5 m, centred on the line
    cg = read_class_geometries([path], ClassLabels(name="road", width_m=2.0), UTM)
    assert np.flatnonzero(full(cg).any(axis=1)).tolist() == list(range(18, 22))
    with pytest.raises(ConfigError, match="without a width"):
        read_class_geometries([path], ClassLabels(name="road"), UTM)


def test_centerline_width_on_a_geographic_raster(tmp_path):
    # raster in EPSG:4326: buffering must still be in metres (through the local UTM zone)
    deg = 0.5 / 111_320  # about 0.5 m north-south
    tg = Affine(deg, 0, 15.0, 0, -deg, 42.0)
    y = (tg @ (0, 20))[1]
    line = shapely.LineString([(15.0 - 10 * deg, y), (15.0 + 50 * deg, y)])
    path = tmp_path / "roads.geojson"
    gpd.GeoDataFrame({"w": [6.0]}, geometry=[line], crs="EPSG:4326").to_file(path)
    cg = read_class_geometries([path], ClassLabels(name="road", width_field="w"), "EPSG:4326")
    rows = np.flatnonzero(burn(cg, tg, SHAPE).any(axis=1))
    assert len(rows) in (11, 12, 13)  # 6 m = 12 px of ~0.5 m
    assert abs(rows.mean() - 19.5) <= 1


def test_touching_features_are_separated_by_one_pixel(tmp_path):
    path = tmp_path / "terrace.geojson"
    # three attached houses (shared walls) and one detached
    houses = [px_box(5, 5, 15, 12), px_box(5, 12, 15, 18), px_box(5, 18, 15, 26), px_box(25, 5, 30, 10)]
    gpd.GeoDataFrame({"id": range(4)}, geometry=houses, crs=UTM).to_file(path)
    plain = read_class_geometries([path], ClassLabels(name="building"), UTM)
    sep = read_class_geometries([path], ClassLabels(name="building", separate_touching=True), UTM)
    assert ndimage.label(full(plain))[1] == 2
    mask = full(sep)
    assert ndimage.label(mask)[1] == 4  # 4-connectivity (scipy default), as polygonization
    assert full(plain).sum() - mask.sum() == 2 * 10  # one column of 10 px per shared wall
    # the gap does not depend on the window grid
    win = Window(12, 3, 11, 20)
    part = burn(sep, window_transform(win, T), (20, 11))
    np.testing.assert_array_equal(part, mask[3:23, 12:23])


def test_two_pixel_separation_and_gap_weights(tmp_path):
    path = tmp_path / "pair.geojson"
    gpd.GeoDataFrame({"id": [0, 1]}, geometry=[px_box(5, 5, 15, 12), px_box(5, 12, 15, 18)], crs=UTM).to_file(path)
    cg = read_class_geometries([path], ClassLabels(name="building", separate_touching=True, separation_px=2), UTM)
    mask, gaps = burn_with_gaps(cg, T, SHAPE)
    assert ndimage.label(mask)[1] == 2
    assert np.flatnonzero(gaps.any(axis=0)).tolist() == [11, 12]  # one column on each side of the wall
    assert gaps.sum() == 20 and not (gaps & (mask > 0)).any()
    valid = np.ones(SHAPE, bool)
    valid[:, 12] = False
    w = pixel_weights(valid, gaps, 5.0)
    assert w[5, 11] == 5.0 and w[5, 12] == 0.0 and w[0, 0] == 1.0


def test_training_targets_are_separated_in_the_frame_the_model_sees(tmp_path):
    """The 1-pixel cut is directional (left/top member of a pair), so it is applied after flips."""
    from geounet.train.augment import flip_rotate
    from geounet.train.labels import cut_touching, id_stack, split_stack

    path = tmp_path / "pair.geojson"
    gpd.GeoDataFrame({"id": [0, 1]}, geometry=[px_box(5, 5, 15, 12), px_box(5, 12, 15, 18)], crs=UTM).to_file(path)
    cg = read_class_geometries([path], ClassLabels(name="building", separate_touching=True), UTM)
    ids = id_stack([cg], T, SHAPE)
    y, gaps = split_stack(ids, [cg])
    np.testing.assert_array_equal(y[0], burn(cg, T, SHAPE))  # unaugmented: same as the windowed burn
    assert np.flatnonzero(gaps.any(axis=0)).tolist() == [11]  # the left member of each pair
    image = np.zeros((1, *SHAPE), np.float32)
    _, flipped, _ = flip_rotate(image, ids, np.ones(SHAPE, bool), k=0, flip_x=True, flip_y=False)
    yf, gf = split_stack(flipped, [cg])
    # after a left-right flip column c becomes 39 - c: the wall lies between 27 and 28, and the
    # cut is again on its left member, 27 (a cut made before the flip would be at 28)
    cols = np.flatnonzero(gf.any(axis=0)).tolist()
    assert cols == [SHAPE[1] - 1 - 12]
    assert ndimage.label(yf[0])[1] == 2
    mask, cut = cut_touching(flipped[0])
    np.testing.assert_array_equal(mask, yf[0])
