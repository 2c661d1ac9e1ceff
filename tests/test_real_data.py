"""Every real scene in ../shared/data/real runs through `geounet predict` (random model).

The outputs must open with geopandas, the GeoJSON must pass an independent RFC 7946
validator (geojson-validator), and probability.tif must validate as a COG (rio-cogeo).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

from tests.conftest import make_checkpoint

SCENES = {
    "RGB-PanSharpen_AOI_2_Vegas_img0": "apls/RGB-PanSharpen_AOI_2_Vegas_img0.tif",  # 4 bands, EPSG:4326
    "22978945_15": "geo-deep-learning/22978945_15.tif",  # uint8, nodata 255, EPSG:26986
    "23429155_15": "geo-deep-learning/23429155_15.tif",  # uint16 holding 0-255
    "23322E759967N_clipped_1m_2of2": "geo-deep-learning/23322E759967N_clipped_1m_2of2.tif",  # EPSG:2953
    "RGB.byte": "rasterio/RGB.byte.tif",  # Landsat, EPSG:32618, nodata 0
}


@pytest.fixture(scope="module")
def predicted(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    ckpt = make_checkpoint(tmp / "random.safetensors", width=4, depth=3, seed=11)
    out = tmp / "out"
    cmd = [
        sys.executable,
        "-m",
        "geounet.cli",
        "predict",
        *[str(real_data / p) for p in SCENES.values()],
        "-m",
        str(ckpt),
        "-o",
        str(out),
        "--bands",
        "1,2,3",
        "--tile-size",
        "512",
        "--min-area-m2",
        "2",
        "--threshold",
        "building=0.6",
        "--threshold",
        "road=0.6",
        "--workers",
        "1",
        "--no-progress",
        # a random model calls most of a scene road: a speckled mask whose graph (tested on
        # synthetic and real roads elsewhere) took a minute of this test on its own
        "--no-centerlines",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.mark.parametrize("stem", list(SCENES))
def test_real_scene_outputs_are_valid(predicted: Path, real_data: Path, stem: str) -> None:
    from geojson_validator import validate_geometries
    from rio_cogeo.cogeo import cog_validate

    folder = predicted / stem
    rec = json.loads((folder / "scene.json").read_text())
    assert rec["status"] == "success"
    with rasterio.open(real_data / SCENES[stem]) as src:
        crs = src.crs
        bounds = src.bounds
        size = (src.width, src.height)
    for cls in ("buildings", "roads"):
        gdf = gpd.read_file(folder / f"{cls}.geojson")
        assert gdf.crs.to_epsg() == 4326
        assert len(gdf) == rec["polygons"][cls[:-1]]
        assert gdf.geometry.is_valid.all()
        report = validate_geometries(str(folder / f"{cls}.geojson"))
        assert report["invalid"] == {}, report["invalid"]
        assert "crosses_antimeridian" not in report["problematic"]
        assert "outside_lat_lon_boundaries" not in report["problematic"]
        layer = gpd.read_file(folder / "polygons.gpkg", layer=cls)
        assert layer.crs == crs and len(layer) == len(gdf)
        if len(layer):
            minx, miny, maxx, maxy = layer.total_bounds
            eps = 1e-6 * max(abs(bounds.right - bounds.left), 1)
            assert minx >= bounds.left - eps and maxx <= bounds.right + eps
            assert miny >= bounds.bottom - eps and maxy <= bounds.top + eps
    valid, errors, _warnings = cog_validate(str(folder / "probability.tif"), quiet=True)
    assert valid, errors
    with rasterio.open(folder / "probability.tif") as ds:
        assert ds.crs == crs and (ds.width, ds.height) == size and ds.count == 2
