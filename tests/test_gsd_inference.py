"""Inference at the model's pixel size: scenes resampled to a model grid, polygons back on the
scene's CRS, seam-free on the resampled grid, pixel sizes recorded and sanity-checked."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from rasterio.windows import Window

from geounet.batch.run import run_scenes
from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.compute import default_halo
from geounet.infer.block import infer_block, run_model
from geounet.scene.plan import GSD_TOLERANCE, ModelGrid, model_grid, plan_tiles
from geounet.scene.read import prepare_input, read_window
from geounet.scene.source import ground_pixel_size_m, open_scene
from geounet.settings import InferenceSettings
from tests.conftest import UTM_HALF_METRE, make_checkpoint, smooth_image, write_tif

SQUARE = (60, 40, 100, 80)  # col0, row0, col1, row1 of a bright 40 x 40 px (20 x 20 m) square


def _square_scene(path: Path, square: tuple[int, int, int, int] = SQUARE, **kw: object) -> Path:
    img = np.zeros((3, 150, 200), np.uint8)
    c0, r0, c1, r1 = square
    img[0, r0:r1, c0:c1] = 255
    img[1:] = 90
    return write_tif(path, img, **kw)  # type: ignore[arg-type]


def _world_square(transform: Affine, square: tuple[int, int, int, int] = SQUARE) -> shapely.Polygon:
    c0, r0, c1, r1 = square
    return shapely.Polygon([transform @ (c, r) for c, r in [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]])


@pytest.fixture(scope="module")
def probe_1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe model (probability ~1 where band 1 is bright) trained at 1 m pixels."""
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "probe.safetensors", arch="probe", width=1, depth=2, gsd_m=1.0
    )


def _run(scene: Path, ckpt: Path, out: Path, client: object, **settings: object) -> dict:
    s = InferenceSettings(tile_size=32, halo=0, tiles_per_block=1, **settings)  # type: ignore[arg-type]
    res = run_scenes([str(scene)], ckpt, out, s, client=client, progress=False)
    assert res[0].status == "success", res[0].error
    return json.loads((out / scene.stem / "scene.json").read_text())


def _buildings(out: Path, stem: str) -> list[shapely.Geometry]:
    return list(gpd.read_file(out / stem / "polygons.gpkg", layer="buildings").geometry)


# --------------------------------------------------------------------------- the grid, pure
def test_model_grid_scales_the_scene_and_keeps_it_within_the_tolerance() -> None:
    assert model_grid(200, 150, 0.5, 1.0) == ModelGrid(100, 75, 0.5, 0.5, 1.0)
    assert (model_grid(201, 151, 0.5, 1.0).width, model_grid(201, 151, 0.5, 1.0).height) == (101, 76)
    up = model_grid(200, 150, 0.5, 0.3)
    assert (up.width, up.height) == (334, 250) and up.scale == pytest.approx(5 / 3)
    # within 2 %: the scene's own grid, untouched; unknown sizes: no resampling
    for scene, model in [(0.5002, 0.5), (0.5, 0.5 * (1 + GSD_TOLERANCE)), (None, 1.0), (0.5, None)]:
        g = model_grid(200, 150, scene, model)
        assert not g.resampled and (g.width, g.height, g.scale) == (200, 150, 1.0)


def test_model_grid_windows_and_transform_map_back_to_the_scene() -> None:
    g = ModelGrid(100, 75, 0.5)
    w = g.scene_window(Window(10, 20, 30, 40))
    assert (w.col_off, w.row_off, w.width, w.height) == (20, 40, 60, 80)
    t = g.transform(UTM_HALF_METRE)
    assert (
        t.a == pytest.approx(1.0) and t.e == pytest.approx(-1.0) and (t.c, t.f) == (UTM_HALF_METRE.c, UTM_HALF_METRE.f)
    )
    assert ModelGrid(200, 150).transform(UTM_HALF_METRE) is UTM_HALF_METRE


def test_gsd_warning_beyond_four_times_either_way() -> None:
    assert ModelGrid(1, 1, 1.0, 0.5, 1.9).warning is None
    assert ModelGrid(1, 1, 1.0, 0.5, 0.13).warning is None
    small = ModelGrid(1, 1, 1.0, 0.1, 0.5).warning
    large = ModelGrid(1, 1, 1.0, 2.5, 0.5).warning
    assert small is not None and "5x smaller" in small and "--gsd" in small
    assert large is not None and "5x larger" in large
    assert ModelGrid(1, 1, 1.0, None, 0.5).warning is not None  # cannot measure, model needs it
    assert ModelGrid(1, 1, 1.0, 0.5, None).warning is None  # model's size unknown: nothing to compare


def test_settings_hash_counts_gsd_and_tta() -> None:
    base = InferenceSettings()
    hashes = {
        base.fingerprint(),
        InferenceSettings(gsd_m=0.3).fingerprint(),
        InferenceSettings(gsd_m=0.4).fingerprint(),
        InferenceSettings(tta=True).fingerprint(),
    }
    assert len(hashes) == 4


def test_a_degree_scene_gets_its_pixel_size_in_metres_at_its_centre() -> None:
    # 0.000005 degrees at 52.5 N: ~0.34 m east-west, ~0.56 m north-south
    t = Affine(0.000005, 0, 13.4, 0, -0.000005, 52.5)
    gsd = ground_pixel_size_m(rasterio.crs.CRS.from_epsg(4326).to_wkt(), tuple(t)[:6], 200, 150)
    ew = 0.000005 * 111_320 * math.cos(math.radians(52.5))  # metres per pixel east-west
    ns = 0.000005 * 111_267  # metres per pixel north-south (a degree of latitude at 52.5 N)
    assert gsd == pytest.approx(math.sqrt(ew * ns), rel=5e-3)


# --------------------------------------------------------------------------- end to end
def test_polygons_of_a_half_metre_scene_for_a_one_metre_model_land_in_place(
    tmp_path: Path, dask_local, probe_1m: Path
) -> None:
    """0.5 m scene (0.5002 m on the ground: UTM's scale factor), 1 m model: the model sees a
    grid of 101 x 76 px; the square comes back on the scene's CRS, within one model pixel."""
    scene = _square_scene(tmp_path / "s.tif")
    rec = _run(scene, probe_1m, tmp_path / "out", dask_local)
    assert rec["scene_gsd_m"] == pytest.approx(0.5002, abs=1e-4) and rec["model_gsd_m"] == 1.0
    assert rec["gsd_warning"] is None
    assert rec["model_grid"]["resampled"] and (rec["model_grid"]["width"], rec["model_grid"]["height"]) == (101, 76)
    [got] = _buildings(tmp_path / "out", "s")
    want = _world_square(UTM_HALF_METRE)
    assert shapely.hausdorff_distance(got, want) <= 1.0  # one model pixel
    assert got.area == pytest.approx(want.area, rel=0.1)
    # probability.tif is on the model grid, with that grid's transform
    with rasterio.open(tmp_path / "out" / "s" / "probability.tif") as ds:
        assert (ds.width, ds.height) == (101, 76)
        assert ds.transform.almost_equals(UTM_HALF_METRE @ Affine.scale(1 / rec["model_grid"]["scale"]))
        assert ds.crs.to_epsg() == 32633


def test_gsd_override_sets_the_scene_pixel_size(tmp_path: Path, dask_local, probe_1m: Path) -> None:
    """--gsd 0.5: exactly half-size model pixels, so an even-aligned square comes back exactly.
    --gsd 1.0 (the model's): no resampling, the square's odd edges come back exactly.
    --gsd 0.25: model pixels of 4 scene pixels; the square is still in place."""
    scene = _square_scene(tmp_path / "s.tif")
    want = _world_square(UTM_HALF_METRE)
    rec = _run(scene, probe_1m, tmp_path / "half", dask_local, gsd_m=0.5)
    assert rec["scene_gsd_m"] == 0.5 and rec["model_grid"]["scale"] == 0.5
    [got] = _buildings(tmp_path / "half", "s")
    assert got.symmetric_difference(want).area < 1e-6

    odd = (61, 41, 101, 81)
    scene_odd = _square_scene(tmp_path / "odd.tif", odd)
    rec = _run(scene_odd, probe_1m, tmp_path / "same", dask_local, gsd_m=1.0)
    assert not rec["model_grid"]["resampled"] and rec["model_grid"]["width"] == 200
    [got] = _buildings(tmp_path / "same", "odd")
    assert got.symmetric_difference(_world_square(UTM_HALF_METRE, odd)).area < 1e-6

    rec = _run(scene, probe_1m, tmp_path / "quarter", dask_local, gsd_m=0.25)
    assert rec["scene_gsd_m"] == 0.25 and (rec["model_grid"]["width"], rec["model_grid"]["height"]) == (50, 38)
    [got] = _buildings(tmp_path / "quarter", "s")
    assert shapely.hausdorff_distance(got, want) <= 2.0  # one model pixel: 4 scene pixels of 0.5 m


def test_a_changed_gsd_is_not_resumed_as_finished(tmp_path: Path, dask_local, probe_1m: Path) -> None:
    scene = _square_scene(tmp_path / "s.tif")
    s = InferenceSettings(tile_size=32, halo=0, formats=["geojson"])
    out = tmp_path / "out"
    assert run_scenes([str(scene)], probe_1m, out, s, client=dask_local, progress=False)[0].status == "success"
    assert run_scenes([str(scene)], probe_1m, out, s, client=dask_local, progress=False)[0].status == "skipped"
    other = s.model_copy(update={"gsd_m": 0.25})
    assert run_scenes([str(scene)], probe_1m, out, other, client=dask_local, progress=False)[0].status == "success"
    assert json.loads((out / "s" / "scene.json").read_text())["scene_gsd_m"] == 0.25


def test_a_degree_scene_is_resampled_from_its_metre_pixel_size(tmp_path: Path, dask_local, probe_1m: Path) -> None:
    t = Affine(0.000005, 0, 13.4, 0, -0.000005, 52.5)
    scene = _square_scene(tmp_path / "deg.tif", crs="EPSG:4326", transform=t)
    rec = _run(scene, probe_1m, tmp_path / "out", dask_local)
    gsd = ground_pixel_size_m(rasterio.crs.CRS.from_epsg(4326).to_wkt(), tuple(t)[:6], 200, 150)
    assert rec["scene_gsd_m"] == pytest.approx(gsd, rel=1e-6) and 0.4 < rec["scene_gsd_m"] < 0.47
    assert rec["model_grid"]["width"] == math.ceil(200 * rec["model_grid"]["scale"])
    [got] = _buildings(tmp_path / "out", "deg")
    want = _world_square(t)
    # within one model pixel (1 m: ~1.4e-5 degrees east-west at 52.5 N)
    assert shapely.hausdorff_distance(got, want) <= 1.0 / rec["scene_gsd_m"] * 0.000005 * 1.01


def test_scene_pixels_more_than_four_times_off_are_warned_and_recorded(
    tmp_path: Path, dask_local, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = make_checkpoint(tmp_path / "probe4.safetensors", arch="probe", width=1, depth=2, gsd_m=4.0)
    scene = _square_scene(tmp_path / "s.tif")
    with caplog.at_level(logging.WARNING, logger="geounet.batch.run"):
        rec = _run(scene, ckpt, tmp_path / "out", dask_local)
    assert rec["gsd_warning"] and "8x smaller than the model's 4 m" in rec["gsd_warning"]
    assert any("8x smaller" in r.getMessage() and str(scene) in r.getMessage() for r in caplog.records)
    assert rec["model_grid"]["width"] == 26  # still run, at the model's pixel size


def test_a_model_grid_over_the_pixel_budget_is_refused(tmp_path: Path, dask_local) -> None:
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=2, gsd_m=0.25)
    scene = _square_scene(tmp_path / "s.tif")  # 30,000 px; ~120,000 on the 0.25 m grid
    s = InferenceSettings(tile_size=32, halo=0, max_pixels=50_000)
    res = run_scenes([str(scene)], ckpt, tmp_path / "out", s, client=dask_local, progress=False)
    assert res[0].status == "failed" and "above the pixel budget of 50,000" in (res[0].error or "")


# --------------------------------------------------------------------------- seam-free
def _tiled_and_whole_resampled(
    scene: Path, ckpt: Path, *, model_gsd: float, tile: int, k: int
) -> tuple[np.ndarray, np.ndarray, ModelGrid]:
    """As tests/test_seamless.py, on the model grid: each block read resampled from its own
    fractional scene window, against one resampled read of the whole grid."""
    model = load_checkpoint(ckpt)
    mi = read_metadata(ckpt)
    info = open_scene(scene, in_channels=model.spec.in_channels)
    grid = model_grid(
        info.width, info.height, ground_pixel_size_m(info.crs_wkt, info.transform, info.width, info.height), model_gsd
    )
    assert grid.resampled
    device, dtype = torch.device("cpu"), torch.float32
    halo = default_halo(model.receptive_field_radius, model.spec.multiple)
    plan = plan_tiles(
        grid.width, grid.height, tile_size=tile, halo=halo, multiple=model.spec.multiple, tiles_per_block=k, grid=grid
    )
    assert len(plan.blocks) > 1
    tiled = np.full((model.spec.out_channels, grid.height, grid.width), np.nan, np.float32)
    for b in plan.blocks:
        raw, valid = read_window(info, grid.scene_window(b.read), out_shape=(int(b.read.height), int(b.read.width)))
        x = prepare_input(raw, valid, mi.normalization)
        p = infer_block(model, x, b, batch_size=3, device=device, dtype=dtype)
        c = b.core
        tiled[:, int(c.row_off) : int(c.row_off + c.height), int(c.col_off) : int(c.col_off + c.width)] = p
    raw, valid = read_window(
        info, grid.scene_window(Window(0, 0, grid.width, grid.height)), out_shape=(grid.height, grid.width)
    )
    x = prepare_input(raw, valid, mi.normalization)
    whole = run_model(model, x, device=device, dtype=dtype).numpy()[0]
    return tiled, whole, grid


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", width=4, depth=3)


@pytest.mark.parametrize(
    "model_gsd,tile,k",
    [(0.8, 160, 1), (0.8, 160, 2), (0.3, 160, 2)],  # scene 0.5 m: downsampled (scale 0.63), upsampled (1.67)
)
def test_tiled_equals_whole_scene_on_a_resampled_grid(
    tmp_path: Path, unet: Path, model_gsd: float, tile: int, k: int
) -> None:
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 250, 333), seed=5))
    tiled, whole, grid = _tiled_and_whole_resampled(scene, unet, model_gsd=model_gsd, tile=tile, k=k)
    assert tiled.shape[1:] == (grid.height, grid.width) != (250, 333)
    assert not np.isnan(tiled).any(), "every model-grid pixel must be covered by exactly one core"
    assert np.abs(tiled - whole).max() <= 1e-3
