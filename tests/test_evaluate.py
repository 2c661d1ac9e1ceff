"""geounet.evaluate and ``geounet evaluate``: metrics with answers you can read off the inputs."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import CRS
from shapely.geometry import LineString, MultiPolygon, Polygon, box

from geounet.atomic import is_partial, remove_partials
from geounet.errors import ConfigError, OutputError
from geounet.evaluate import (
    EvaluationResult,
    EvaluationSettings,
    MatchResult,
    PixelCounts,
    RasterGrid,
    SceneFailure,
    SceneResult,
    TopologyParams,
    Totals,
    building_f1,
    evaluate_many,
    evaluate_scene,
    format_table,
    pair_scenes,
    pixel_counts,
    pixel_metrics,
    read_vectors,
    road_topology,
    skeletonize,
    windowed_pixel_counts,
    write_result_json,
)

REAL = Path("../shared/data/real")  # relative to the repository root, see PROVENANCE.md
GDL = REAL / "geo-deep-learning"
UTM = "EPSG:32633"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data file {path} is missing (see ../shared/data/real/PROVENANCE.md)")
    return path


def write_tif(
    path: Path,
    width: int,
    height: int,
    transform: Affine,
    crs: str = UTM,
    nodata_box: tuple[int, int, int, int] | None = None,
) -> Path:
    """A 1-band uint8 GeoTIFF; pixels in ``nodata_box`` (row0, row1, col0, col1) are nodata."""
    data = np.ones((1, height, width), dtype="uint8")
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        data[0, r0:r1, c0:c1] = 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=0,
    ) as ds:
        ds.write(data)
    return path


# --- buildings: the SpaceNet F1 --------------------------------------------------------


def test_identical_sets_give_f1_one() -> None:
    polys = [box(0, 0, 10, 10), box(20, 0, 30, 12), box(0, 20, 5, 25)]
    r = building_f1(polys, polys)
    assert (r.tp, r.fp, r.fn) == (3, 0, 0)
    assert r.precision == r.recall == r.f1 == r.mean_iou == 1.0


def test_merge_rate_counts_touching_buildings_predicted_as_one() -> None:
    truth = [box(0, 0, 10, 10), box(10, 0, 20, 10), box(40, 0, 50, 10), box(60, 0, 70, 10)]
    # the first two come out as one polygon, the third on its own, the fourth missed
    pred = [box(0, 0, 20, 10), box(41, 0, 50, 10)]
    r = building_f1(pred, truth)
    assert (r.merged, r.overlapped) == (2, 3)
    assert r.merge_rate == pytest.approx(2 / 3)
    assert r.to_dict()["merge_rate"] == pytest.approx(2 / 3)
    # split: nothing merged; a prediction grazing a neighbour (< half of it) is no merge
    r = building_f1([box(0, 0, 10, 10), box(10, 0, 20, 10), box(40, 0, 52, 10)], truth)
    assert (r.merged, r.overlapped) == (0, 3)
    assert MatchResult.combine([building_f1(pred, truth), r]).merge_rate == pytest.approx(2 / 6)
    assert math.isnan(building_f1([], truth).merge_rate)


def test_iou_04_is_not_a_match_but_05_is() -> None:
    truth = [box(0, 0, 10, 10)]
    r = building_f1([box(0, 0, 4, 10)], truth)  # IoU 40/100
    assert (r.tp, r.fp, r.fn, r.f1) == (0, 1, 1, 0.0)
    r = building_f1([box(0, 0, 5, 10)], truth)  # IoU exactly 0.5: matches (>=)
    assert (r.tp, r.fp, r.fn) == (1, 0, 0)
    assert r.matches == ((0, 0, 0.5),)
    r = building_f1([box(0, 0, 4, 10)], truth, iou_threshold=0.4)
    assert r.tp == 1


def test_matching_is_one_to_one_and_greedy_by_iou() -> None:
    truth = [box(0, 0, 10, 10)]
    pred = [box(0, 0, 10, 8), box(0, 0, 10, 9)]  # IoU 0.8 and 0.9 with the same truth
    r = building_f1(pred, truth)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.matches == ((1, 0, pytest.approx(0.9)),)
    assert r.precision == 0.5 and r.recall == 1.0 and r.f1 == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("pred", "truth", "expected"),
    [
        ([], [], (0, 0, 0, math.nan, math.nan, math.nan)),
        ([], [box(0, 0, 1, 1)] * 3, (0, 0, 3, 0.0, 0.0, 0.0)),
        ([box(0, 0, 1, 1)] * 2, [], (0, 2, 0, 0.0, 0.0, 0.0)),
    ],
    ids=["both-empty", "no-predictions", "no-truth"],
)
def test_empty_inputs(pred: list, truth: list, expected: tuple) -> None:
    r = building_f1(pred, truth)
    got = (r.tp, r.fp, r.fn, r.precision, r.recall, r.f1)
    np.testing.assert_equal(got, expected)


def test_invalid_and_multipart_geometries() -> None:
    two_lobes = MultiPolygon([box(0, 0, 1, 1), box(3, 0, 4, 1)])
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # self-intersecting
    r = building_f1([two_lobes, bowtie, None], [two_lobes, bowtie])
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)  # a MultiPolygon is one object; the bow-tie is repaired
    r = building_f1([box(0, 0, 1, 1)], [two_lobes])  # one lobe of two: IoU 0.5
    assert r.tp == 1


def test_zero_area_prediction_is_a_false_positive() -> None:
    r = building_f1([Polygon([(0, 0), (1, 1), (2, 2)])], [box(0, 0, 1, 1)])
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)


def test_mismatched_crs_and_bad_threshold_are_config_errors() -> None:
    a = gpd.GeoSeries([box(0, 0, 1, 1)], crs="EPSG:4326")
    b = gpd.GeoSeries([box(0, 0, 1, 1)], crs=UTM)
    with pytest.raises(ConfigError, match="reproject"):
        building_f1(a, b)
    with pytest.raises(ConfigError, match="iou_threshold"):
        building_f1([], [], iou_threshold=0)


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(6))))
def test_result_does_not_depend_on_input_order(order: list[int]) -> None:
    truth = [box(i * 10, 0, i * 10 + 8, 8) for i in range(6)]
    pred = [shapely.affinity.translate(t, xoff=i * 0.7) for i, t in enumerate(truth)]
    base = building_f1(pred, truth)
    r = building_f1([pred[i] for i in order], truth)
    assert (r.tp, r.fp, r.fn) == (base.tp, base.fp, base.fn)
    assert r.iou_sum == pytest.approx(base.iou_sum)


def test_combine_is_a_micro_average() -> None:
    a = MatchResult(tp=1, fp=0, fn=0, iou_sum=0.9)
    b = MatchResult(tp=0, fp=3, fn=1)
    c = MatchResult.combine([a, b, MatchResult(0, 0, 0)])
    assert (c.tp, c.fp, c.fn) == (1, 3, 1) and c.f1 == pytest.approx(2 / 6)


# --- CRS handling ------------------------------------------------------------------------


def test_truth_26986_and_predictions_4326_give_the_same_result(tmp_path: Path) -> None:
    truth = gpd.GeoDataFrame(
        geometry=[box(230000 + 30 * i, 894000, 230000 + 30 * i + 20, 894015) for i in range(6)], crs="EPSG:26986"
    )
    shifts = [0, 2, 4, 8, 12, 30]  # metres along x: IoU 1, .82, .67, .43, .25, 0
    pred = gpd.GeoDataFrame(
        geometry=[shapely.affinity.translate(g, xoff=s) for g, s in zip(truth.geometry, shifts)], crs="EPSG:26986"
    )
    projected = building_f1(pred, truth)
    assert (projected.tp, projected.fp, projected.fn) == (3, 3, 3)

    tfile = tmp_path / "scene_truth.gpkg"
    truth.to_file(tfile, layer="buildings", driver="GPKG")
    pfile = tmp_path / "buildings.geojson"
    pred.to_crs("EPSG:4326").to_file(pfile, driver="GeoJSON")
    objects_only = EvaluationSettings(pixel_size_m=None, topology=None)
    r = evaluate_scene(pfile, tfile, objects_only)
    assert r.crs.to_string() == "EPSG:26986"
    b = r.buildings
    assert (b.tp, b.fp, b.fn) == (3, 3, 3)
    assert b.mean_iou == pytest.approx(projected.mean_iou, abs=1e-6)

    # Both sides geographic: evaluated in the local UTM zone (19N for Massachusetts).
    both_wgs84 = evaluate_scene(pfile, truth.to_crs("EPSG:4326"), objects_only)
    assert both_wgs84.crs.to_string() == "EPSG:32619"
    assert both_wgs84.buildings.tp == 3
    assert both_wgs84.buildings.mean_iou == pytest.approx(projected.mean_iou, rel=1e-3)


# --- pixels ------------------------------------------------------------------------------


def test_pixel_metrics_on_tiny_arrays() -> None:
    pred = np.array([[1, 1, 0, 0]], dtype=bool)
    truth = np.array([[1, 0, 1, 0]], dtype=bool)
    m = pixel_metrics(pred, truth)["foreground"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert m["iou"] == pytest.approx(1 / 3) and m["dice"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5
    valid = np.array([[1, 0, 1, 1]], dtype=bool)  # ignore the false positive pixel
    assert pixel_counts(pred, truth, valid) == PixelCounts(tp=1, fp=0, fn=1, tn=1)

    labels_pred = np.array([[1, 1, 2, 0], [2, 2, 0, 0]])
    labels_true = np.array([[1, 2, 2, 0], [2, 2, 0, 1]])
    by_class = pixel_metrics(labels_pred, labels_true, classes={"building": 1, "road": 2})
    assert by_class["building"]["iou"] == pytest.approx(1 / 3)  # tp 1, fp 1, fn 1
    assert by_class["road"]["iou"] == pytest.approx(3 / 4)  # tp 3, fn 1
    assert math.isnan(pixel_metrics(np.zeros(3, bool), np.zeros(3, bool))["foreground"]["iou"])
    with pytest.raises(ConfigError, match="shape"):
        pixel_counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_windowed_accumulation_equals_whole_array() -> None:
    rng = np.random.default_rng(3)
    grid = RasterGrid(CRS.from_user_input(UTM), Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0), width=37, height=23)

    def blobs(n: int) -> list:
        xy = rng.uniform([1000, 1988.5], [1018.5, 2000], size=(n, 2))
        return [shapely.Point(x, y).buffer(rng.uniform(0.5, 3)) for x, y in xy]

    pred, truth = blobs(12), blobs(9)
    whole = {}
    for name, geoms in (("pred", pred), ("truth", truth)):
        whole[name] = rasterio.features.rasterize(
            ((g, 1) for g in geoms), out_shape=(23, 37), transform=grid.transform, dtype="uint8"
        ).astype(bool)
    expected = pixel_counts(whole["pred"], whole["truth"])
    assert expected.tp > 0 and expected.fp > 0 and expected.fn > 0
    for size in (5, 7, 16, 1024):
        got = windowed_pixel_counts({"building": (pred, truth)}, grid, window_size=size)["building"]
        assert got == expected, size


def test_nodata_pixels_of_the_raster_are_not_counted(tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "s.tif", 10, 10, Affine(1, 0, 0, 0, -1, 10), nodata_box=(0, 10, 0, 5))
    grid = RasterGrid.from_raster(tif)
    counts = windowed_pixel_counts({"b": ([box(0, 0, 10, 10)], [])}, grid, window_size=4)["b"]
    assert counts == PixelCounts(tp=0, fp=50, fn=0, tn=0)  # only the right half is valid


# --- roads -------------------------------------------------------------------------------


def test_road_pixel_iou_against_buffered_centerlines(tmp_path: Path) -> None:
    # Scene 10..90 m x 0..20 m at 0.5 m; the truth centerline runs past both edges so its
    # round caps are outside and the buffered surface is exactly y in [8, 12].
    tif = write_tif(tmp_path / "s.tif", 160, 40, Affine(0.5, 0, 10, 0, -0.5, 20))
    truth = gpd.GeoDataFrame(geometry=[LineString([(0, 10), (100, 10)])], crs=UTM)
    full = gpd.GeoDataFrame(geometry=[box(0, 8, 100, 12)], crs=UTM)
    half = gpd.GeoDataFrame(geometry=[box(0, 8, 100, 10)], crs=UTM)
    tfile, ffile, hfile = (
        tmp_path / "t_road_centerlines.gpkg",
        tmp_path / "full_roads.gpkg",
        tmp_path / "half_roads.gpkg",
    )
    truth.to_file(tfile)
    full.to_file(ffile)
    half.to_file(hfile)
    four_m = EvaluationSettings(road_width_m=4.0)
    r = evaluate_scene(ffile, tfile, four_m, raster=tif)
    assert r.buildings is None  # the truth does not label buildings: not scored
    assert r.pixels["road"].iou == 1.0 and r.pixels["road"].tp == 160 * 8
    r = evaluate_scene(hfile, tfile, four_m, raster=tif)
    assert r.pixels["road"].iou == 0.5
    r = evaluate_scene(ffile, tfile, EvaluationSettings(road_width_m=8.0), raster=tif)  # truth 8 m, prediction 4 m
    assert r.pixels["road"].iou == 0.5


def _plus(gap: float = 0.0) -> gpd.GeoSeries:
    """Two 200 m roads crossing at (100, 100); ``gap`` cuts the east-west road west of the junction."""
    if gap:
        ew = [LineString([(0, 100), (80 - gap, 100)]), LineString([(80, 100), (200, 100)])]
    else:
        ew = [LineString([(0, 100), (200, 100)])]
    return gpd.GeoSeries([*ew, LineString([(100, 0), (100, 200)])], crs=UTM)


def test_topology_is_one_for_identical_networks_and_drops_when_a_road_is_cut() -> None:
    same = road_topology(_plus(), _plus())
    assert same.apls == 1.0 and same.completeness == 1.0 and same.correctness == 1.0
    cut = road_topology(_plus(gap=20), _plus())
    assert cut.apls_pred_to_truth == pytest.approx(1.0)  # what is predicted is right...
    assert cut.apls_truth_to_pred < 0.75  # ...but paths across the gap are missing
    assert cut.apls < 0.85
    assert cut.completeness > 0.9  # a length-based score barely notices the cut
    shifted = road_topology(gpd.GeoSeries(_plus().translate(1.0, 1.0), crs=UTM), _plus())
    assert shifted.apls > 0.95  # a 1 m offset is within the snapping distance
    nothing = road_topology(gpd.GeoSeries([], crs=UTM), _plus())
    assert nothing.apls == 0.0 and nothing.completeness == 0.0
    assert math.isnan(road_topology([], []).apls)


def test_skeletonize_thins_a_bar_to_its_midline() -> None:
    bar = np.zeros((9, 16), dtype=bool)
    bar[2:7, 2:14] = True
    sk = skeletonize(bar)
    assert sk[4].sum() >= 6 and sk.sum() == sk[4].sum()  # one row, the middle one
    assert not skeletonize(np.zeros((3, 3), bool)).any()


def test_topology_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="pixel size"):
        TopologyParams(pixel_m=0)


def test_spacenet_road_centerlines_against_themselves() -> None:
    apls_dir = need(REAL / "apls")
    geo = need(apls_dir / "AOI_2_Vegas_img0.geojson")
    r = evaluate_scene(geo, geo, raster=need(apls_dir / "RGB-PanSharpen_AOI_2_Vegas_img0.tif"))
    assert r.crs.to_string() == "EPSG:32611"  # WGS84 data on a WGS84 raster: measured in UTM 11N
    assert r.roads.apls == 1.0 and r.pixels["road"].iou == 1.0


# --- reading real files ----------------------------------------------------------------


def test_real_massachusetts_buildings_against_themselves() -> None:
    gpkg = need(GDL / "22978945_15.gpkg")
    tif = need(GDL / "22978945_15.tif")
    r = evaluate_scene(gpkg, gpkg, raster=tif)
    b = r.buildings
    assert b.f1 == 1.0 and b.fp == b.fn == 0
    assert b.tp == 405  # the polygons that intersect the image (PROVENANCE.md)
    assert r.pixels["building"].iou == 1.0
    without_raster = evaluate_scene(gpkg, gpkg, EvaluationSettings(pixel_size_m=None))
    assert without_raster.buildings.tp == 441


def test_misnamed_single_layer_is_read_as_buildings() -> None:
    v = read_vectors(need(GDL / "23429155_15.gpkg"))  # its only layer is named 22978945_15
    assert len(v.buildings) == 651 and v.roads is None and v.road_centerlines is None


def test_baker_lake_class_field_selects_buildings_and_roads() -> None:
    gpkg = need(GDL / "BakerLake_2017_clipped.gpkg")
    df = gpd.read_file(gpkg)
    v = read_vectors(gpkg, class_field="Niveau_2", classes={"building": "Building", "road": "Road"})
    assert len(v.buildings) == (df.Niveau_2 == "Building").sum() == 28
    assert len(v.roads) == (df.Niveau_2 == "Road").sum() == 4
    assert v.buildings.area.sum() == pytest.approx(df[df.Niveau_2 == "Building"].area.sum())
    swapped = read_vectors(gpkg, class_field="Niveau_2", classes={"building": "Road", "road": "Building"})
    assert len(swapped.buildings) == 4 and len(swapped.roads) == 28
    with pytest.raises(ConfigError, match="values present: Building"):
        read_vectors(gpkg, class_field="Niveau_2", classes={"building": "House"})
    with pytest.raises(ConfigError, match="no field 'Niveau_9'"):
        read_vectors(gpkg, class_field="Niveau_9")
    r = evaluate_scene(
        gpkg, gpkg, EvaluationSettings(class_field="Niveau_2"), raster=need(GDL / "23322E759967N_clipped_1m_2of2.tif")
    )
    assert r.buildings.tp == 5 and r.buildings.f1 == 1.0  # 5 buildings intersect the image
    assert r.pixels["road"].iou == 1.0 and r.roads.apls == 1.0


def test_unknown_layer_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_vectors(tmp_path / "nope.gpkg")
    gpkg = need(GDL / "22978945_15.gpkg")
    with pytest.raises(ConfigError, match="its layers are 22978945_15_good"):
        read_vectors(gpkg, layer="buildings")


# --- scenes, folders, the command ------------------------------------------------------


def _synthetic_scene(tmp_path: Path, stem: str = "tile1") -> tuple[Path, Path]:
    """Truth folder (``<stem>_truth.gpkg`` + ``<stem>.tif``) and a geounet-style prediction folder."""
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    (pred_dir / stem).mkdir(parents=True)
    x0, y0 = 500000.0, 4650000.0
    write_tif(truth_dir / f"{stem}.tif", 200, 200, Affine(1, 0, x0, 0, -1, y0 + 200))
    buildings = [box(x0 + 10 + 30 * i, y0 + 150, x0 + 30 + 30 * i, y0 + 170) for i in range(4)]
    centerlines = [
        LineString([(x0, y0 + 100), (x0 + 200, y0 + 100)]),
        LineString([(x0 + 100, y0), (x0 + 100, y0 + 100)]),
    ]
    gpath = truth_dir / f"{stem}_truth.gpkg"
    gpd.GeoDataFrame(geometry=buildings, crs=UTM).to_file(gpath, layer="buildings")
    gpd.GeoDataFrame(geometry=[c.buffer(3, cap_style="flat") for c in centerlines], crs=UTM).to_file(
        gpath, layer="roads"
    )
    gpd.GeoDataFrame(geometry=centerlines, crs=UTM).to_file(gpath, layer="road_centerlines")
    # Predictions as geounet writes them: WGS84 GeoJSON with a class column. Three buildings
    # found (one shifted by 12 m of 20: IoU 0.25, a miss), one false alarm; roads exact.
    pb = buildings[:2] + [shapely.affinity.translate(buildings[2], xoff=12), box(x0 + 150, y0 + 20, x0 + 160, y0 + 30)]
    gpd.GeoDataFrame({"class": ["building"] * 4}, geometry=pb, crs=UTM).to_crs("EPSG:4326").to_file(
        pred_dir / stem / "buildings.geojson", driver="GeoJSON"
    )
    gpd.GeoDataFrame(
        {"class": ["road"] * 2}, geometry=[c.buffer(3, cap_style="flat") for c in centerlines], crs=UTM
    ).to_crs("EPSG:4326").to_file(pred_dir / stem / "roads.geojson", driver="GeoJSON")
    # and the road graph, as geounet writes it for linear classes (what APLS scores)
    gpd.GeoDataFrame({"class": ["road"] * 2}, geometry=centerlines, crs=UTM).to_crs("EPSG:4326").to_file(
        pred_dir / stem / "road_centerlines.geojson", driver="GeoJSON"
    )
    return pred_dir, truth_dir


def test_pair_scenes_by_stem_and_missing_predictions(tmp_path: Path) -> None:
    pred_dir, truth_dir = _synthetic_scene(tmp_path)
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs=UTM).to_file(truth_dir / "tile2_buildings.geojson")
    (pred_dir / "tile9").mkdir()
    (pred_dir / "tile9" / "buildings.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    pairs, unmatched = pair_scenes(pred_dir, truth_dir)
    by_name = {p.name: p for p in pairs}
    assert set(by_name) == {"tile1", "tile2"} and unmatched == ["tile9"]
    assert by_name["tile1"].raster == truth_dir / "tile1.tif"
    assert by_name["tile2"].pred == ()
    result = evaluate_many(pairs, EvaluationSettings(topology=None), unmatched_predictions=unmatched)
    tile2 = next(s for s in result.scenes if s.scene == "tile2")
    assert tile2.missing_prediction and tile2.buildings.fn == 1
    total = result.total.buildings
    assert (total.tp, total.fp, total.fn) == (2, 2, 3)
    assert "tile9" in format_table(result)


def test_cli_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    from geounet.cli.evaluate import command

    pred_dir, truth_dir = _synthetic_scene(tmp_path)
    out = tmp_path / "eval.json"
    args = ["--pred", str(pred_dir), "--truth", str(truth_dir), "--json", str(out)]
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    assert "tile1" in result.output and "F1" in result.output
    data = json.loads(out.read_text())
    scene = data["scenes"][0]
    b = scene["buildings"]
    assert (b["tp"], b["fp"], b["fn"]) == (2, 2, 2) and b["f1"] == pytest.approx(0.5)
    assert scene["crs"] == UTM and scene["raster"].endswith("tile1.tif")
    assert scene["pixels"]["road"]["iou"] == pytest.approx(1.0, abs=0.02)  # WGS84 round trip of the outlines
    assert scene["roads"]["apls"] == pytest.approx(1.0, abs=0.02)
    assert data["total"]["buildings"]["f1"] == pytest.approx(0.5)

    again = CliRunner().invoke(command, args)
    assert isinstance(again.exception, ConfigError) and "--overwrite" in str(again.exception)
    assert CliRunner().invoke(command, [*args, "--overwrite", "--no-topology"]).exit_code == 0
    assert json.loads(out.read_text())["scenes"][0]["roads"] is None


def test_cli_help_documents_every_option() -> None:
    from geounet.cli.evaluate import command

    text = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    for opt in command.params:
        assert opt.help, f"--{opt.name} has no help"
    for flag in (
        "--pred",
        "--truth",
        "--raster",
        "--truth-layer",
        "--class-field",
        "--building-value",
        "--road-value",
        "--road-width-m",
        "--iou",
        "--json",
        "--overwrite",
    ):
        assert flag in text
    assert "default: 6.0" in text and "metres" in text


def _nothing_scored(scene: str = "s") -> SceneResult:
    """A scene result with building counts 0/0/0 (every ratio undefined) and nothing else scored."""
    return SceneResult(scene, CRS.from_user_input(UTM), buildings=MatchResult(0, 0, 0))


def test_format_table_aligns_columns_and_marks_undefined_values() -> None:
    lines = format_table(_nothing_scored()).splitlines()
    assert lines[0].startswith("scene") and set(lines[1]) <= {"-", " "}
    assert lines[2].split()[1:4] == ["0", "0", "0"] and lines[2].split()[4] == "-"
    assert len(lines[0]) == len(lines[1])


def test_format_table_of_many_scenes_has_failures_a_total_and_unmatched_predictions() -> None:
    result = EvaluationResult(
        (_nothing_scored("a"), SceneFailure("b", "cannot be read")),
        Totals.combine([_nothing_scored("a")]),
        unmatched_predictions=("c",),
    )
    lines = format_table(result).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["a", "b", "TOTAL", "predictions"]
    assert "error: cannot be read" in lines[3]
    assert lines[-1] == "predictions without truth (not scored): c"
    assert result.failed == ["b"] and result.to_dict()["failed"] == ["b"]


def test_settings_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="iou_threshold must be in"):
        EvaluationSettings(iou_threshold=0)
    with pytest.raises(ConfigError, match="road width must be > 0 m, got -1"):
        EvaluationSettings(road_width_m=-1)
    with pytest.raises(ConfigError, match="classes keys"):
        EvaluationSettings(classes={"house": "House"})
    s = EvaluationSettings(classes={"building": "Batiment"})
    assert dict(s.classes) == {"building": "Batiment"}
    with pytest.raises(TypeError):
        s.classes["road"] = "Route"  # type: ignore[index]  # settings are read-only


def test_json_is_strict_and_not_replaced_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    write_result_json(_nothing_scored(), out)
    data = json.loads(out.read_text())
    assert data["crs"] == UTM and data["buildings"]["tp"] == 0 and data["buildings"]["f1"] is None
    with pytest.raises(ConfigError, match="--overwrite"):
        write_result_json(_nothing_scored(), out)


def test_a_failed_json_write_leaves_the_previous_file_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "eval.json"
    out.write_text("previous\n")

    def disk_full(src: str, dst: str) -> None:
        assert is_partial(src) and Path(src).exists()  # the new file was written beside the old one
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OutputError, match="no space left"):
        write_result_json(_nothing_scored(), out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
    assert out.read_text() == "previous\n"


def test_a_killed_json_write_leaves_the_previous_file_and_only_a_partial_name(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    out.write_text("previous\n")
    killed_before_rename = textwrap.dedent(f"""
        import os, signal, sys
        from pyproj import CRS
        from geounet.evaluate import MatchResult, SceneResult, write_result_json
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        result = SceneResult("s", CRS.from_user_input("{UTM}"), buildings=MatchResult(0, 0, 0))
        write_result_json(result, sys.argv[1], overwrite=True)
    """)
    proc = subprocess.run([sys.executable, "-c", killed_before_rename, str(out)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = [p for p in tmp_path.iterdir() if p != out]
    assert left and all(is_partial(p) for p in left)
    assert out.read_text() == "previous\n"
    assert remove_partials(tmp_path) == len(left)


def test_truth_folder_with_gpkg_and_geojson_copies_counts_each_object_once(tmp_path: Path) -> None:
    """The synthetic layout writes <stem>_truth.gpkg *and* per-class GeoJSON copies."""
    truth = tmp_path / "truth"
    truth.mkdir()
    boxes = [shapely.box(500000 + 20 * i, 4650000, 500010 + 20 * i, 4650010) for i in range(5)]
    b = gpd.GeoDataFrame(geometry=boxes, crs="EPSG:32633")
    b.to_file(truth / "s_truth.gpkg", layer="buildings")
    b.to_file(truth / "s_buildings.geojson")
    pred = tmp_path / "pred" / "s"
    pred.mkdir(parents=True)
    b.iloc[:3].to_file(pred / "buildings.geojson")
    pairs, _ = pair_scenes(tmp_path / "pred", truth)
    res = evaluate_many(pairs)
    for b in (res.scenes[0].buildings, res.total.buildings):
        assert (b.tp, b.fn) == (3, 2), b
