"""GeoJSON writers: the fast path (pyproj + GEOS) writes what GDAL's RFC 7946 mode writes."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from shapely.geometry import Polygon, box

from geounet.export.vectors import GEOJSON_DECIMALS, write_geojson


def _layer(crs: str, x0: float, y0: float, step: float) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(3)
    geoms = []
    for i in range(40):
        x, y = x0 + i * 3 * step, y0 + (i % 7) * 2 * step
        outer = box(x, y, x + 2 * step, y + 1.5 * step)
        if i % 3 == 0:  # a hole
            outer = outer.difference(box(x + 0.5 * step, y + 0.5 * step, x + step, y + step))
        if i % 4 == 0:  # written clockwise on purpose: the writer must turn it
            outer = shapely.orient_polygons(outer, exterior_cw=True)
        geoms.append(outer)
    return gpd.GeoDataFrame(
        {
            "class": ["building"] * 40,
            "score": np.round(rng.random(40), 4),
            "area_m2": np.round(rng.random(40) * 100, 2),
            "scene": ["s"] * 40,
            "model": ["abc123"] * 40,
        },
        geometry=geoms,
        crs=crs,
    )


def _gdal(gdf: gpd.GeoDataFrame, path: Path) -> None:
    pyogrio.write_dataframe(
        gdf,
        path,
        layer=path.stem,
        driver="GeoJSON",
        geometry_type="Unknown",
        layer_options={"RFC7946": "YES", "WRITE_BBOX": "YES"},
    )


@pytest.mark.parametrize(
    ("crs", "x0", "y0", "step"),
    [
        ("EPSG:32633", 500_000.0, 4_650_000.0, 10.0),  # UTM 33N
        ("EPSG:32733", 300_000.0, 7_400_000.0, 10.0),  # UTM 33S
        ("EPSG:4326", 12.0, -33.0, 1e-4),  # geographic
    ],
)
def test_fast_geojson_equals_gdal_rfc7946(tmp_path: Path, crs: str, x0: float, y0: float, step: float) -> None:
    gdf = _layer(crs, x0, y0, step)
    ours, gdal = tmp_path / "buildings.geojson", tmp_path / "gdal" / "buildings.geojson"
    gdal.parent.mkdir()
    write_geojson(gdf, ours)
    _gdal(gdf, gdal)
    a, b = json.loads(ours.read_text()), json.loads(gdal.read_text())
    assert a["type"] == "FeatureCollection" and a["name"] == "buildings" and "crs" not in a
    np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1.5 * 10**-GEOJSON_DECIMALS)
    assert len(a["features"]) == len(b["features"]) == 40
    for fa, fb in zip(a["features"], b["features"]):
        assert fa["properties"] == fb["properties"]
        np.testing.assert_allclose(fa["bbox"], fb["bbox"], atol=1.5 * 10**-GEOJSON_DECIMALS)
        ga, gb = shapely.geometry.shape(fa["geometry"]), shapely.geometry.shape(fb["geometry"])
        assert ga.geom_type == "Polygon" and ga.is_valid
        assert ga.exterior.is_ccw and all(not r.is_ccw for r in ga.interiors), "RFC 7946 3.1.6 winding"
        assert len(ga.interiors) == len(gb.interiors)
        assert ga.equals_exact(gb, tolerance=1.5 * 10**-GEOJSON_DECIMALS) or ga.normalize().equals_exact(
            gb.normalize(), tolerance=1.5 * 10**-GEOJSON_DECIMALS
        )
        coords = np.asarray(ga.exterior.coords)
        assert np.array_equal(coords, np.round(coords, GEOJSON_DECIMALS)), "coordinates rounded to 7 decimals"
    # it opens as a layer in EPSG:4326 with the same columns
    back = gpd.read_file(ours)
    assert back.crs.to_epsg() == 4326 and list(back.columns[:-1]) == ["class", "score", "area_m2", "scene", "model"]


def test_layer_crossing_the_antimeridian_is_cut_by_gdal(tmp_path: Path) -> None:
    # UTM zone 60N near its eastern edge: a polygon straddling 180 deg east
    gdf = gpd.GeoDataFrame(
        {"class": ["building"], "score": [0.9]},
        geometry=[Polygon([(179.999, 10.0), (180.001, 10.0), (180.001, 10.001), (179.999, 10.001)])],
        crs="EPSG:4326",
    ).to_crs("EPSG:32660")
    out = tmp_path / "buildings.geojson"
    write_geojson(gdf, out)
    feature = json.loads(out.read_text())["features"][0]
    assert feature["geometry"]["type"] == "MultiPolygon", "cut into an eastern and a western part"
    lons = [x for poly in feature["geometry"]["coordinates"] for ring in poly for x, _ in ring]
    assert min(lons) >= -180 and max(lons) <= 180 and (180.0 in lons or -180.0 in lons)


def test_empty_layer_is_a_valid_empty_collection(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame({"class": [], "score": []}, geometry=[], crs="EPSG:32633")
    out = tmp_path / "roads.geojson"
    write_geojson(gdf, out)
    data = json.loads(out.read_text())
    assert data["type"] == "FeatureCollection" and data["features"] == [] and data["name"] == "roads"


def test_steps_of_few_features_write_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing in steps (bounded features and vertices) gives the same bytes as one step."""
    import geounet.export.vectors as ex

    gdf = _layer("EPSG:32733", 300_000.0, 7_400_000.0, 10.0)
    whole = tmp_path / "a" / "buildings.geojson"
    whole.parent.mkdir()
    write_geojson(gdf, whole)
    monkeypatch.setattr(ex, "GEOJSON_CHUNK", 3)
    monkeypatch.setattr(ex, "GEOJSON_CHUNK_VERTICES", 12)  # below one holed box: one feature a step
    assert len(ex._steps(np.asarray(gdf.geometry.array, dtype=object))) > 20
    steps = tmp_path / "b" / "buildings.geojson"
    steps.parent.mkdir()
    write_geojson(gdf, steps)
    assert steps.read_bytes() == whole.read_bytes()


def test_antimeridian_polygon_in_a_later_step_sends_the_whole_layer_to_gdal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geounet.export.vectors as ex

    monkeypatch.setattr(ex, "GEOJSON_CHUNK", 1)  # steps before it are written first
    near = [
        Polygon(
            [(179.9, 10.0 + i / 100), (179.91, 10.0 + i / 100), (179.91, 10.005 + i / 100), (179.9, 10.005 + i / 100)]
        )
        for i in range(3)
    ]
    across = Polygon([(179.999, 10.0), (180.001, 10.0), (180.001, 10.001), (179.999, 10.001)])
    gdf = gpd.GeoDataFrame({"class": ["building"] * 4}, geometry=[*near, across], crs="EPSG:4326").to_crs("EPSG:32660")
    out = tmp_path / "buildings.geojson"
    write_geojson(gdf, out)
    data = json.loads(out.read_text())
    assert [f["geometry"]["type"] for f in data["features"]] == ["Polygon"] * 3 + ["MultiPolygon"]
    assert not list(tmp_path.glob(".partial-*")), "no temporary file left behind"
