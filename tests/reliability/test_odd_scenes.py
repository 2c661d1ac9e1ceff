"""Scenes that are valid but unusual succeed with correct, valid outputs.

The probe model (probability ~1 exactly where band 1 is bright) forces known regions, so
each test can say where the polygons must be.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer

from geounet.batch.run import run_scenes
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, write_tif
from tests.reliability._faults import SCENE_OUTPUTS, assert_complete, bright_rect_scene, no_partials

SETTINGS = InferenceSettings(tile_size=64, halo=0, tiles_per_block=1, min_building_m2=0.0)  # every pixel counts here


@pytest.fixture(scope="module")
def probe_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("probe") / "probe.safetensors", arch="probe", width=1, depth=4)


def _run(scenes: list[Path], ckpt: Path, out: Path, dask_local, settings: InferenceSettings = SETTINGS):
    res = run_scenes([str(s) for s in scenes], ckpt, out, settings, client=dask_local, progress=False)
    assert [r.status for r in res] == ["success"] * len(scenes), [r.error for r in res]
    assert no_partials(out) == []
    return res


def _features(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    return doc["features"]


def _pixel_outline(transform: Affine, rect: tuple[int, int, int, int]) -> shapely.Polygon:
    c0, r0, c1, r1 = rect
    return shapely.Polygon([transform @ (c, r) for c, r in [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]])


def _rings(geometry: dict) -> list[list[list[float]]]:
    polys = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    return [ring for poly in polys for ring in poly]


def _no_constant(name: str) -> None:
    raise AssertionError(f"JSON output holds {name}")


def _validate(path: Path) -> dict:
    from geojson_validator import validate_geometries

    report = validate_geometries(str(path))
    assert report["invalid"] == {}, report["invalid"]
    return report


# --------------------------------------------------------------------------- geometry
def test_rotated_geotransform_places_polygons_correctly(tmp_path: Path, dask_local, probe_ckpt: Path) -> None:
    """A 30-degree rotation (with shear-free 0.5 m pixels): the forced rectangle lands on the
    rotated pixel footprint, in the GeoPackage (scene CRS) and in the GeoJSON (lon/lat)."""
    rect = (20, 12, 50, 36)
    a = np.deg2rad(30)
    t = Affine(0.5 * np.cos(a), -0.5 * np.sin(a), 500000.0, -0.5 * np.sin(a), -0.5 * np.cos(a), 4650000.0)
    scene = bright_rect_scene(tmp_path / "rot.tif", rect, shape=(80, 96), transform=t)
    out = tmp_path / "out"
    _run([scene], probe_ckpt, out, dask_local)
    want = _pixel_outline(t, rect)
    got = gpd.read_file(out / "rot" / "polygons.gpkg", layer="buildings").geometry
    assert len(got) == 1 and got.iloc[0].symmetric_difference(want).area < 1e-6 * want.area
    feats = _features(out / "rot" / "buildings.geojson")
    geom = shapely.geometry.shape(feats[0]["geometry"])
    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    want_ll = shapely.transform(want, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    assert shapely.hausdorff_distance(geom, want_ll) < 2e-7  # ~2 cm
    assert feats[0]["properties"]["area_m2"] == pytest.approx(30 * 24 * 0.25, rel=1e-6)


def test_antimeridian_polygon_is_split_and_valid(tmp_path: Path, dask_local, probe_ckpt: Path) -> None:
    """UTM zone 60N at 65 N: a forced region straddling 180 degrees is cut there (RFC 7946)."""
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32660", always_xy=True)
    x180, y180 = to_utm.transform(180.0, 65.0)
    t = Affine(10.0, 0, x180 - 95 * 10.0, 0, -10.0, y180 + 60 * 10.0)
    rect = (60, 40, 130, 80)  # 180 degrees passes through columns ~93-97
    scene = bright_rect_scene(tmp_path / "dateline.tif", rect, shape=(150, 200), crs="EPSG:32660", transform=t)
    out = tmp_path / "out"
    _run([scene], probe_ckpt, out, dask_local)
    for name in ("buildings", "roads"):
        path = out / "dateline" / f"{name}.geojson"
        doc = json.loads(path.read_text())
        assert doc.get("name") == name  # not the temporary file's name
        report = _validate(path)
        assert "outside_lat_lon_boundaries" not in report["problematic"], report
        feats = doc["features"]
        assert len(feats) == 1
        geom = shapely.geometry.shape(feats[0]["geometry"])
        assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
        xs = shapely.get_coordinates(geom)[:, 0]
        assert xs.min() >= -180 and xs.max() <= 180
        # No edge jumps across the antimeridian (RFC 7946 3.1.9: cut, with vertices on +-180).
        for ring in _rings(feats[0]["geometry"]):
            assert np.abs(np.diff(np.asarray(ring)[:, 0])).max() < 180
        # geojson-validator 0.7 normalizes +180 to -180 and so flags every correctly cut
        # eastern part ("crosses_antimeridian"); with +180 nudged by 1e-7 nothing is left.
        assert "[ 180.0," in path.read_text()
        nudged = json.loads(path.read_text().replace("[ 180.0,", "[ 179.9999999,"))
        from geojson_validator import validate_geometries

        assert "crosses_antimeridian" not in validate_geometries(nudged)["problematic"]
        assert {g.centroid.x > 0 for g in geom.geoms} == {True, False}
        # Put the western part back beside the eastern one: the union is the forced region.
        east = shapely.union_all(
            [g if g.centroid.x > 0 else shapely.transform(g, lambda xy: xy + [360.0, 0.0]) for g in geom.geoms]
        )
        to_ll = Transformer.from_crs("EPSG:32660", "EPSG:4326", always_xy=True)
        want = shapely.segmentize(_pixel_outline(t, rect), 10.0)
        want_ll = shapely.transform(want, lambda xy, tr=to_ll: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        want_ll = shapely.transform(want_ll, lambda xy: np.where(xy < 0, xy + [360.0, 0.0], xy))
        assert east.symmetric_difference(want_ll).area < 2e-3 * want_ll.area
        assert feats[0]["properties"]["area_m2"] == pytest.approx(70 * 40 * 100.0, rel=1e-6)
    layer = gpd.read_file(out / "dateline" / "polygons.gpkg", layer="buildings")
    assert layer.crs.to_epsg() == 32660 and layer.geometry.iloc[0].equals(_pixel_outline(t, rect))


def test_checkerboard_gives_only_valid_geometries(tmp_path: Path, dask_local, probe_ckpt: Path) -> None:
    """1-px and 3-px checkerboards across block seams: squares that touch only at corners
    stay separate (4-connectivity) and every geometry is valid, in every output."""
    from scipy.ndimage import label

    h, w = 80, 80
    rows, cols = np.indices((h, w))
    bright = np.where(cols < 40, (rows + cols) % 2 == 0, (rows // 3 + cols // 3) % 2 == 0)
    img = np.full((3, h, w), 90, np.uint8)
    img[0] = np.where(bright, 255, 0)
    scene = write_tif(tmp_path / "checker.tif", img)
    out = tmp_path / "out"
    _run([scene], probe_ckpt, out, dask_local, SETTINGS.model_copy(update={"formats": ["geojson", "gpkg"]}))
    n_expected = label(bright)[1]  # 4-connected components
    for name in ("buildings", "roads"):
        feats = _features(out / "checker" / f"{name}.geojson")
        assert len(feats) == n_expected
        geoms = [shapely.geometry.shape(f["geometry"]) for f in feats]
        assert all(g.is_valid for g in geoms)
        _validate(out / "checker" / f"{name}.geojson")
        layer = gpd.read_file(out / "checker" / "polygons.gpkg", layer=name)
        assert len(layer) == n_expected and layer.geometry.is_valid.all()
        assert set(layer.geometry.geom_type) == {"Polygon"}
        # Exactly the bright pixels, nothing else: total area = bright pixel count * 0.25 m2.
        assert layer.geometry.area.sum() == pytest.approx(bright.sum() * 0.25, rel=1e-9)


# --------------------------------------------------------------------------- pixel values
def test_all_nodata_scene_succeeds_with_empty_collections(tmp_path: Path, dask_local, probe_ckpt: Path) -> None:
    scene = write_tif(tmp_path / "void.tif", np.full((3, 40, 50), 255, np.uint8), nodata=255)
    out = tmp_path / "out"
    res = _run([scene], probe_ckpt, out, dask_local)
    assert res[0].polygons == {"building": 0, "road": 0}
    assert_complete(out / "void")
    for name in ("buildings", "roads"):
        assert _features(out / "void" / f"{name}.geojson") == []
    with rasterio.open(out / "void" / "probability.tif") as ds:
        assert ds.read().max() == 0


@pytest.mark.parametrize("declared", [True, False], ids=["nodata=nan", "undeclared-nan"])
def test_nan_pixels_are_never_in_polygons(tmp_path: Path, dask_local, probe_ckpt: Path, declared: bool) -> None:
    """Float scene with NaN holes. With a building threshold of 0 every valid pixel is a
    building, so the polygons must be exactly the non-NaN pixels; no output holds a NaN."""
    h, w = 60, 70
    img = np.full((3, h, w), 90.0, np.float32)
    img[0, 10:50, 10:60] = 255.0
    nan = np.zeros((h, w), bool)
    nan[20:30, 25:40] = True  # a hole inside the bright region
    nan[:, 65:] = True  # a NaN stripe along the right edge
    nan[55:, :] = True  # and one along the bottom, across a block seam
    img[:, nan] = np.nan
    scene = write_tif(tmp_path / "floaty.tif", img, nodata=np.nan if declared else None)
    out = tmp_path / "out"
    s = SETTINGS.model_copy(update={"thresholds": {"building": 0.0}})
    res = _run([scene], probe_ckpt, out, dask_local, s)
    folder = out / "floaty"
    assert_complete(folder)
    t = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)
    layer = gpd.read_file(folder / "polygons.gpkg", layer="buildings")
    covered = shapely.union_all(layer.geometry.values)
    assert covered.area == pytest.approx((~nan).sum() * 0.25, rel=1e-9)
    nan_area = shapely.union_all([_pixel_outline(t, (c, r, c + 1, r + 1)) for r, c in zip(*np.nonzero(nan))])
    assert covered.intersection(nan_area).area == pytest.approx(0.0, abs=1e-9)
    roads = gpd.read_file(folder / "polygons.gpkg", layer="roads")
    assert shapely.union_all(roads.geometry.values).equals(
        shapely.union_all([_pixel_outline(t, (10, 10, 60, 50))]).difference(nan_area)
    )
    for name in ("buildings.geojson", "roads.geojson", "scene.json"):
        json.loads((folder / name).read_text(), parse_constant=_no_constant)  # NaN/Infinity refused
    for f in _features(folder / "buildings.geojson"):
        assert np.isfinite(f["properties"]["score"]) and 0 <= f["properties"]["score"] <= 1
    with rasterio.open(folder / "probability.tif") as ds:
        p = ds.read(2)  # road probability x 255
    assert p[nan].max() == 0 and p[15, 15] == 255
    assert res[0].polygons["building"] >= 1


def test_three_by_three_scene(tmp_path: Path, dask_local, probe_ckpt: Path) -> None:
    img = np.full((3, 3, 3), 90, np.uint8)
    img[0] = 255
    scene = write_tif(tmp_path / "tiny.tif", img)
    out = tmp_path / "out"
    _run([scene], probe_ckpt, out, dask_local)
    rec = assert_complete(out / "tiny")
    assert rec["size"] == {"width": 3, "height": 3, "bands": [1, 2, 3]}
    t = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)
    layer = gpd.read_file(out / "tiny" / "polygons.gpkg", layer="buildings")
    assert len(layer) == 1 and layer.geometry.iloc[0].equals(_pixel_outline(t, (0, 0, 3, 3)))
    with rasterio.open(out / "tiny" / "probability.tif") as ds:
        assert (ds.width, ds.height) == (3, 3) and ds.read().min() == 255


# --------------------------------------------------------------------------- names
def test_same_stem_in_two_folders_does_not_collide(tmp_path: Path, dask_local, probe_ckpt: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ra, rb = (4, 4, 20, 16), (30, 20, 60, 40)
    sa = bright_rect_scene(tmp_path / "a" / "x.tif", ra)
    sb = bright_rect_scene(tmp_path / "b" / "x.tif", rb)
    out = tmp_path / "out"
    res = _run([sa, sb], probe_ckpt, out, dask_local)
    assert [r.stem for r in res] == ["a_x", "b_x"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a_x", "b_x"]
    t = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)
    for stem, scene, rect in (("a_x", sa, ra), ("b_x", sb, rb)):
        rec = assert_complete(out / stem, SCENE_OUTPUTS)
        assert rec["scene"] == str(scene) and rec["stem"] == stem
        layer = gpd.read_file(out / stem / "polygons.gpkg", layer="buildings")
        assert len(layer) == 1 and layer.geometry.iloc[0].equals(_pixel_outline(t, rect))
        assert {f["properties"]["scene"] for f in _features(out / stem / "buildings.geojson")} == {stem}
