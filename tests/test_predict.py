"""End to end: GeoTIFF -> Dask blocks -> stitched, merged, written, GIS-ready outputs."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.features import shapes

from geounet.batch.run import run_scenes
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, smooth_image, write_tif

RECT = (60, 40, 130, 80)  # col0, row0, col1, row1 of the bright rectangle


def _probe_scene(path: Path, crs: str, transform: Affine, bands: int = 3) -> Path:
    img = np.zeros((bands, 150, 200), np.uint8)
    c0, r0, c1, r1 = RECT
    img[0, r0:r1, c0:c1] = 255
    img[1:] = 90
    return write_tif(path, img, crs=crs, transform=transform)


def _expected_lonlat(crs: str, transform: Affine) -> shapely.Polygon:
    c0, r0, c1, r1 = RECT
    corners = [transform @ (c, r) for c, r in [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]]
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.Polygon([tr.transform(x, y) for x, y in corners])


def _no_partials(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith(".partial")]


CASES = {
    "utm-north": ("EPSG:32633", Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)),
    "utm-south": ("EPSG:32733", Affine(0.5, 0, 300000.0, 0, -0.5, 7400000.0)),
    "wgs84": ("EPSG:4326", Affine(0.000005, 0, 13.4, 0, -0.000005, 52.5)),
    "rotated": ("EPSG:32633", Affine(0.45, 0.2, 500000.0, 0.2, -0.45, 4650000.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forced_region_lands_at_the_right_lonlat(tmp_path: Path, dask_local, case: str) -> None:
    crs, transform = CASES[case]
    scene = _probe_scene(tmp_path / f"{case}.tif", crs, transform)
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    out = tmp_path / "out"
    res = run_scenes(
        [str(scene)],
        ckpt,
        out,
        InferenceSettings(tile_size=64, halo=0, tiles_per_block=1),
        client=dask_local,
        progress=False,
    )
    assert [r.status for r in res] == ["success"], res[0].error
    folder = out / case
    _no_partials(out)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "buildings.geojson",
            "roads.geojson",
            "road_centerlines.geojson",
            "polygons.gpkg",
            "probability.tif",
            "quicklook.png",
            "item.json",
            "scene.json",
        ]
    )

    # GeoJSON: RFC 7946 lon/lat, CCW exterior, properties
    doc = json.loads((folder / "buildings.geojson").read_text())
    assert "crs" not in doc and len(doc["features"]) == 1
    feat = doc["features"][0]
    props = feat["properties"]
    assert set(props) >= {"class", "score", "area_m2", "scene", "model"}
    assert props["class"] == "building" and props["scene"] == case and props["score"] > 0.99
    geom = shapely.geometry.shape(feat["geometry"])
    expected = _expected_lonlat(crs, transform)
    assert geom.is_valid and shapely.is_ccw(geom.exterior)
    assert geom.symmetric_difference(expected).area <= expected.area * 2e-3  # 7-decimal rounding
    assert shapely.hausdorff_distance(geom, expected) < 2e-7  # about 2 cm
    # area: 70 x 40 pixels of the transform's area
    px_area = abs(transform.determinant)
    if crs != "EPSG:4326":
        assert props["area_m2"] == pytest.approx(70 * 40 * px_area, rel=1e-6)
    else:
        from pyproj import Geod

        ref = abs(Geod(ellps="WGS84").geometry_area_perimeter(expected)[0])
        assert props["area_m2"] == pytest.approx(ref, rel=1e-3)

    # GeoPackage in the scene CRS, exact pixel outline; the regularized one is the same
    # rectangle (in degrees only nearly: its right angles are right on the ground)
    layers = {name for name, _ in pyogrio.list_layers(folder / "polygons.gpkg")}
    assert layers == {"buildings", "buildings_raw", "roads", "road_centerlines", "road_nodes"}
    c0, r0, c1, r1 = RECT
    want = shapely.Polygon([transform @ (c, r) for c, r in [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]])
    for layer, tolerance in (("buildings_raw", 1e-6), ("buildings", 1e-4 if crs == "EPSG:4326" else 1e-6)):
        gdf = gpd.read_file(folder / "polygons.gpkg", layer=layer)
        assert gdf.crs.to_epsg() == int(crs.split(":")[1])
        assert gdf.geometry.iloc[0].symmetric_difference(want).area < tolerance * want.area

    # COG on the scene grid
    with rasterio.open(folder / "probability.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.crs.to_string() == crs and ds.transform.almost_equals(transform)
        assert ds.count == 2 and ds.dtypes[0] == "uint8" and ds.block_shapes[0] == (512, 512)
        p = ds.read(1)
        assert p[r0:r1, c0:c1].min() == 255 and p[:r0].max() == 0

    rec = json.loads((folder / "scene.json").read_text())
    assert rec["status"] == "success" and rec["polygons"] == {"building": 1, "road": 1}
    from PIL import Image

    im = np.asarray(Image.open(folder / "quicklook.png"))
    assert im.shape == (150, 200, 3)
    # both classes share the probe's outline; roads are drawn last, in yellow
    c0, r0, c1, r1 = RECT
    assert tuple(im[r0, (c0 + c1) // 2]) == (255, 214, 0), "class outlines are drawn on the quicklook"
    assert tuple(im[(r0 + r1) // 2, (c0 + c1) // 2]) != (255, 214, 0)


def test_tiled_polygons_equal_whole_mask_polygons(tmp_path: Path, dask_local) -> None:
    """Blocks + seam merge == polygonizing the whole thresholded mask (same polygons and holes)."""
    import torch
    from rasterio.windows import Window

    from geounet.checkpoint import load_checkpoint, read_metadata
    from geounet.infer.block import run_model
    from geounet.scene.read import prepare_input, read_window
    from geounet.scene.source import open_scene

    t = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 250, 333), seed=7), transform=t)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", width=4, depth=3, seed=3)
    model = load_checkpoint(ckpt)
    info = open_scene(scene, in_channels=3)
    raw, valid = read_window(info, Window(0, 0, info.width, info.height))
    x = prepare_input(raw, valid, read_metadata(ckpt).normalization)
    whole = run_model(model, x, device=torch.device("cpu"), dtype=torch.float32).numpy()[0][0]
    thr = float(np.quantile(whole, 0.5))
    mask = whole >= thr
    expected = [
        shapely.geometry.shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=t)
    ]
    assert len(expected) > 10

    s = InferenceSettings(
        tile_size=160,
        tiles_per_block=1,
        precision="fp32",
        thresholds={"building": thr},
        min_building_m2=0.0,  # every piece of the mask, as polygonizing it whole gives
        formats=["gpkg"],
    )
    res = run_scenes([str(scene)], ckpt, tmp_path / "out", s, client=dask_local, progress=False)
    assert res[0].status == "success", res[0].error
    got = list(gpd.read_file(tmp_path / "out" / "s" / "polygons.gpkg", layer="buildings_raw").geometry)
    assert len(got) == len(expected)
    tree = shapely.STRtree(got)
    for e in expected:
        cands = [got[i] for i in tree.query(e)]
        assert any(c.equals(e) and len(c.interiors) == len(e.interiors) for c in cands)


def test_resume_skips_complete_scenes_and_force_recomputes(tmp_path: Path, dask_local) -> None:
    scene = _probe_scene(tmp_path / "a.tif", *CASES["utm-north"])
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    s = InferenceSettings(tile_size=64, halo=0, formats=["geojson"])
    out = tmp_path / "out"
    assert run_scenes([str(scene)], ckpt, out, s, client=dask_local, progress=False)[0].status == "success"
    first = (out / "a" / "scene.json").read_text()
    assert run_scenes([str(scene)], ckpt, out, s, client=dask_local, progress=False)[0].status == "skipped"
    assert (out / "a" / "scene.json").read_text() == first
    changed = s.model_copy(update={"min_area_m2": 1.0})
    assert run_scenes([str(scene)], ckpt, out, changed, client=dask_local, progress=False)[0].status == "success"
    assert (
        run_scenes([str(scene)], ckpt, out, changed, client=dask_local, progress=False, force=True)[0].status
        == "success"
    )


def test_bad_scene_fails_alone_and_leaves_no_finished_output(tmp_path: Path, dask_local) -> None:
    good = _probe_scene(tmp_path / "good.tif", *CASES["utm-north"])
    bad = tmp_path / "bad.tif"
    bad.write_text("<html>not a tiff</html>")
    nocrs = write_tif(tmp_path / "nocrs.tif", np.zeros((3, 20, 20), np.uint8), crs=None)
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    res = run_scenes(
        [str(bad), str(good), str(nocrs)],
        ckpt,
        tmp_path / "out",
        InferenceSettings(tile_size=64, halo=0),
        client=dask_local,
        progress=False,
    )
    assert [r.status for r in res] == ["failed", "success", "failed"]
    assert "bad.tif" in res[0].error and "GeoTIFF" in res[0].error
    assert "nocrs.tif" in res[2].error and "no CRS" in res[2].error
    assert not (tmp_path / "out" / "bad" / "scene.json").exists()
    assert (tmp_path / "out" / "good" / "scene.json").exists()


def test_all_nodata_scene_gives_empty_feature_collection(tmp_path: Path, dask_local) -> None:
    scene = write_tif(tmp_path / "empty.tif", np.full((3, 40, 50), 255, np.uint8), nodata=255)
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    res = run_scenes(
        [str(scene)], ckpt, tmp_path / "out", InferenceSettings(tile_size=64, halo=0), client=dask_local, progress=False
    )
    assert res[0].status == "success", res[0].error
    doc = json.loads((tmp_path / "out" / "empty" / "buildings.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == []


def test_nodata_collar_blocks_skip_the_model_and_have_probability_zero(tmp_path: Path, dask_local) -> None:
    img = np.zeros((3, 150, 256), np.uint8)
    img[0, 10:30, 10:40] = 255  # a bright patch inside the data area
    img[1:, :, :] = 90
    img[:, :, 64:] = 0  # everything right of column 64 is a nodata collar
    scene = write_tif(tmp_path / "collar.tif", img, nodata=0)
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    res = run_scenes(
        [str(scene)],
        ckpt,
        tmp_path / "out",
        InferenceSettings(tile_size=64, halo=0, tiles_per_block=1),
        client=dask_local,
        progress=False,
    )
    assert res[0].status == "success", res[0].error
    rec = json.loads((tmp_path / "out" / "collar" / "scene.json").read_text())
    # 64-px tiles without halo: 4 block columns (cores 64 px wide) x 3 block rows; the 3
    # columns right of x=64 are all collar
    assert rec["tiling"]["blocks_without_valid_pixels"] == 9
    assert rec["tiling"]["tile_shape"] == [64, 64] and rec["tiling"]["blocks"] == 12
    with rasterio.open(tmp_path / "out" / "collar" / "probability.tif") as ds:
        p = ds.read(1)
    assert p[:, 64:].max() == 0 and p[10:30, 10:40].min() == 255
    assert rec["polygons"]["building"] == 1


def test_worker_threads_keep_a_bounded_number_of_open_datasets(tmp_path: Path) -> None:
    """Thousands of scenes in a batch must not leave thousands of file handles open."""
    import os
    import threading

    from rasterio.windows import Window

    from geounet.scene import read as infer
    from geounet.scene.source import open_scene

    infer.close_datasets()

    def read(i: int) -> None:
        p = write_tif(tmp_path / f"s{i}.tif", np.full((3, 20, 20), i, np.uint8))
        infer.read_window(open_scene(p, in_channels=3), Window(0, 0, 20, 20))

    def scene_fds() -> int:
        """File descriptors of this process that point at the test's scenes: counted by target,
        not in total, since other threads and libraries (PROJ, logging) open files meanwhile."""
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed between listdir and readlink
                continue
            n += target.startswith(os.path.realpath(tmp_path))
        return n

    for i in range(12):
        read(i)
    assert len(infer._HANDLES[threading.get_ident()]) == infer.MAX_HANDLES
    assert 1 <= scene_fds() <= infer.MAX_HANDLES
    infer.close_datasets()
    assert scene_fds() == 0


def test_predict_runs_a_shipped_model_by_name(tmp_path: Path) -> None:
    """``geounet predict SCENE -m default -o OUT``: shipped model names resolve for predict
    as they do for run and info (geounet.weights.resolve_model_name, the one place)."""
    from click.testing import CliRunner

    from geounet.cli.main import cli
    from geounet.weights import default_weights, resolve_model_name, shipped_models

    assert resolve_model_name("default") == str(default_weights())
    assert "default" in shipped_models()
    scene = write_tif(
        tmp_path / "scene.tif",
        smooth_image((3, 96, 128), seed=3),
        crs="EPSG:32633",
        transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0),
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["predict", str(scene), "-m", "default", "-o", str(out), "--no-progress", "--workers", "1"]
    )
    assert res.exit_code == 0, res.output
    record = json.loads((out / "scene" / "scene.json").read_text())
    assert record["status"] == "success" and record["model"] == str(default_weights())
    assert (out / "scene" / "buildings.geojson").is_file()


def test_client_reads_the_checkpoint_once_per_run(tmp_path: Path, dask_local) -> None:
    """The client opens the checkpoint file once per run (facts, full check and the copy sent
    to the workers all come from those bytes); workers build the model from the bytes."""
    import sys

    scenes = [
        write_tif(
            tmp_path / f"s{i}.tif",
            smooth_image((3, 80, 90), seed=i),
            crs="EPSG:32633",
            transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0),
        )
        for i in range(2)
    ]
    ckpt = make_checkpoint(tmp_path / "model.safetensors", arch="unet", width=4, depth=2)
    target = str(Path(ckpt).resolve())
    opened: list[str] = []
    counting = [False]

    def hook(event: str, args: tuple) -> None:
        if counting[0] and event == "open" and isinstance(args[0], (str, bytes, Path)):
            path = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            if path and Path(path).resolve() == Path(target):
                opened.append(event)

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one counts only while on
    counting[0] = True
    try:
        res = run_scenes(
            [str(s) for s in scenes],
            ckpt,
            tmp_path / "out",
            InferenceSettings(tile_size=64, tiles_per_block=1),
            client=dask_local,
            progress=False,
        )
    finally:
        counting[0] = False
    assert [r.status for r in res] == ["success", "success"], [r.error for r in res]
    assert len(opened) == 1


@pytest.mark.parametrize("min_building_m2", [5.0, 0.0])
def test_building_speckle_below_min_building_m2_is_dropped_other_classes_kept(
    tmp_path: Path, dask_local, min_building_m2: float
) -> None:
    """Squares of 1, 4, 9 and 16 m2 (0.5 m pixels): buildings keep those >= min_building_m2,
    the road class (not named like buildings) keeps every one."""
    img = np.zeros((3, 120, 160), np.uint8)
    img[1:] = 90
    sides = [2, 4, 6, 8]  # pixels: 1, 4, 9, 16 m2
    for i, side in enumerate(sides):
        img[0, 20 : 20 + side, 10 + 35 * i : 10 + 35 * i + side] = 255
    scene = write_tif(tmp_path / "s.tif", img, crs=CASES["utm-north"][0], transform=CASES["utm-north"][1])
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    s = InferenceSettings(
        tile_size=64, halo=0, min_building_m2=min_building_m2, regularize={"enabled": False}, formats=["gpkg"]
    )
    res = run_scenes([str(scene)], ckpt, tmp_path / "out", s, client=dask_local, progress=False)
    assert res[0].status == "success", res[0].error
    gpkg = tmp_path / "out" / "s" / "polygons.gpkg"
    buildings = sorted(round(a, 3) for a in gpd.read_file(gpkg, layer="buildings")["area_m2"])
    roads = sorted(round(a, 3) for a in gpd.read_file(gpkg, layer="roads")["area_m2"])
    every = [side * side * 0.25 for side in sides]
    assert roads == every
    assert buildings == [a for a in every if a >= min_building_m2]
