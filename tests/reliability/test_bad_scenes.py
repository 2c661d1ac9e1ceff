"""A bad scene in a batch fails alone: its error names the file and the cause, the other
scenes finish, and nothing finished-looking is left for it.

Every case runs the real pipeline in-process (``run_scenes`` on the shared Dask client)
with the probe model, on a batch of the bad scene and a good one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.windows import Window

from geounet.batch.run import run_scenes
from geounet.errors import SceneReadError
from geounet.scene.read import read_window
from geounet.scene.source import open_scene
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, write_tif
from tests.reliability._faults import (
    UTM33,
    assert_complete,
    assert_no_finished_output,
    bright_rect_scene,
    corrupt_tile,
    dangling_link,
    empty_file,
    html_file,
    multiblock_scene,
    no_partials,
    sparse_scene,
    text_file,
    truncated_after,
    vrt_named_tif,
)

SETTINGS = InferenceSettings(tile_size=64, halo=0, tiles_per_block=1)


@pytest.fixture(scope="module")
def probe_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("probe") / "probe.safetensors", arch="probe", width=1, depth=4)


def _img(bands: int = 3, dtype: str = "uint8") -> np.ndarray:
    return (np.arange(bands * 20 * 30) % 200).reshape(bands, 20, 30).astype(dtype)


def _unreadable(d: Path, good: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip(
            "running as root, which reads mode-000 files anyway; the unreadable file is "
            "tested through the CLI with CAP_DAC_OVERRIDE dropped (test_cli_faults.py)"
        )
    p = write_tif(d / "locked.tif", _img())
    p.chmod(0)
    return p


def _directory(d: Path, good: Path) -> Path:
    (d / "folder.tif").mkdir()
    return d / "folder.tif"


def _gcp_only(path: Path, crs: str | None) -> Path:
    """A scene placed by four ground control points (UTM 33N corners), with no geotransform."""
    p = write_tif(path, _img(), crs=None, transform=None)
    t = UTM33[1]
    gcps = [GroundControlPoint(r, c, *(t @ (c, r))) for r, c in ((0, 0), (0, 30), (20, 0), (20, 30))]
    with rasterio.open(p, "r+") as ds:
        ds.gcps = (gcps, CRS.from_user_input(crs) if crs else CRS())
    with rasterio.open(p) as ds:  # precondition: GCPs only; a CRS, if any, only on the GCPs
        assert ds.transform == Affine.identity() and len(ds.gcps[0]) == 4 and bool(ds.gcps[1]) == bool(crs)
    return p


def _nan_transform(d: Path, good: Path) -> Path:
    p = write_tif(d / "nan-transform.tif", _img(), transform=Affine(float("nan"), 0, 500000.0, 0, -0.5, 4650000.0))
    with rasterio.open(p) as ds:
        if all(np.isfinite(tuple(ds.transform))):
            pytest.skip(f"GDAL {rasterio.__gdal_version__} does not store a NaN geotransform coefficient")
    return p


def _paletted(d: Path, good: Path) -> Path:
    """A single uint8 band of colour-map indices (the model takes 3 bands)."""
    p = write_tif(d / "paletted.tif", _img(bands=1))
    with rasterio.open(p, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 199: (0, 0, 255, 255)})
    return p


LOCAL_CS = 'LOCAL_CS["arbitrary",UNIT["metre",1]]'


# name -> (builder(folder, good scene) -> bad path, words the error must contain)
REFUSED: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "zero-bytes": (lambda d, g: empty_file(d / "zero.tif"), ("empty (0 bytes)",)),
    "text": (lambda d, g: text_file(d / "table.tif"), ("cannot be opened as a GeoTIFF",)),
    "html": (lambda d, g: html_file(d / "login.tif"), ("cannot be opened as a GeoTIFF",)),
    "vrt-named-tif": (lambda d, g: vrt_named_tif(d / "innocent.tif", g), ("only GTiff/COG files are read",)),
    "declares-10^6-squared": (
        lambda d, g: sparse_scene(d / "huge.tif", 10**6, 10**6, block=16384),
        ("1000000 x 1000000", "above the pixel budget", "max_pixels"),
    ),
    "no-crs": (lambda d, g: write_tif(d / "nocrs.tif", _img(), crs=None), ("has no CRS",)),
    "no-geotransform": (
        lambda d, g: write_tif(d / "notransform.tif", _img(), transform=None),
        ("has no geotransform",),
    ),
    "complex-dtype": (lambda d, g: write_tif(d / "complex.tif", _img(dtype="complex64")), ("data type complex64",)),
    "two-bands-for-three": (
        lambda d, g: write_tif(d / "two.tif", _img(bands=2)),
        (
            "band(s) [3] of bands [1, 2, 3] requested",
            "only 2 band(s)",
            "the model takes 3 bands",
            "give the scene with its 3 image bands",
        ),
    ),
    "dangling-symlink": (lambda d, g: dangling_link(d / "link.tif"), ("dangling symbolic link",)),
    "directory": (_directory, ("is a folder", "geounet predict FOLDER/*.tif")),
    "mode-000": (_unreadable, ("not readable", "permission denied")),
    "gcp-only-with-crs": (
        lambda d, g: _gcp_only(d / "gcp-crs.tif", UTM33[0]),
        ("ground control points only", "gdalwarp -t_srs EPSG:XXXX in.tif out.tif", "assigning a CRS does not place it"),
    ),
    "gcp-only-without-crs": (
        lambda d, g: _gcp_only(d / "gcp.tif", None),
        ("ground control points only", "gdalwarp -t_srs EPSG:XXXX in.tif out.tif", "assigning a CRS does not place it"),
    ),
    "nan-geotransform": (_nan_transform, ("geotransform with non-finite coefficients (nan", "fix its georeferencing")),
    "local-cs": (
        lambda d, g: write_tif(d / "local.tif", _img(), crs=LOCAL_CS, transform=Affine(0.5, 0, 0, 0, -0.5, 100)),
        ("has a local CRS (arbitrary) with no link to the Earth", "lon/lat GeoJSON", "assign the real CRS"),
    ),
    "utm-origin-5e7": (
        lambda d, g: write_tif(d / "far.tif", _img(), transform=Affine(0.5, 0, 5e7, 0, -0.5, 4650000.0)),
        ("x 50000000..50000015", "EPSG:32633", "do not map to longitude/latitude", "check the geotransform and CRS"),
    ),
    "paletted-single-band": (
        _paletted,
        ("only 1 band(s)", "paletted (colour-map)", "gdal_translate -expand rgb in.tif out.tif"),
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_scene_fails_alone(tmp_path: Path, dask_local, probe_ckpt: Path, case: str) -> None:
    build, words = REFUSED[case]
    good = bright_rect_scene(tmp_path / "good.tif")
    bad = build(tmp_path, good)
    out = tmp_path / "out"
    res = run_scenes([str(bad), str(good)], probe_ckpt, out, SETTINGS, client=dask_local, progress=False)
    assert [r.status for r in res] == ["failed", "success"], [r.error for r in res]
    err = res[0].error or ""
    assert err.startswith(f"scene {bad}: "), err
    for w in words:
        assert w in err, err
    assert_no_finished_output(out / res[0].stem)
    assert_complete(out / "good")
    assert no_partials(out) == []


def test_vrt_would_read_its_target_if_allowed(tmp_path: Path) -> None:
    """The refused VRT is a working VRT: only the driver allowlist stops it."""
    good = bright_rect_scene(tmp_path / "good.tif")
    vrt = vrt_named_tif(tmp_path / "innocent.tif", good)
    with rasterio.open(vrt) as ds:
        assert ds.driver == "VRT" and ds.read(1).max() == 255


def test_huge_declared_size_is_refused_before_any_work(tmp_path: Path) -> None:
    p = sparse_scene(tmp_path / "huge.tif", 10**6, 10**6, block=16384)
    assert p.stat().st_size < 200_000
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="above the pixel budget"):
        open_scene(p, in_channels=3)
    assert time.perf_counter() - t0 < 2.0


def test_paletted_scene_without_band_metadata_gets_the_expand_advice(tmp_path: Path) -> None:
    p = _paletted(tmp_path, tmp_path)
    with pytest.raises(Exception, match=r"has 1 band\(s\) but the model takes 3; it is a paletted .* -expand rgb"):
        open_scene(p, in_channels=3)
    assert open_scene(p, in_channels=1).bands == (1,)  # a one-band model takes the indices as they are


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32660", Affine(0.5, 0, 833900.0, 0, -0.5, 1000000.0)),  # UTM 60N across the antimeridian
        ("EPSG:4326", Affine(0.001, 0, 359.99, 0, -0.001, 10.0)),  # a 0..360 degree grid
        ("EPSG:4326", Affine(0.001, 0, -180.0, 0, -0.001, 90.0)),  # touching the pole
    ],
)
def test_scenes_near_the_limits_of_lon_lat_still_open(tmp_path: Path, crs: str, transform: Affine) -> None:
    p = write_tif(tmp_path / "edge.tif", _img(), crs=crs, transform=transform)
    assert open_scene(p, in_channels=3).width == 30


# --------------------------------------------------------------------------- mid-read failures
def _truncated(d: Path) -> Path:
    return truncated_after(d / "truncated.tif", multiblock_scene(d / "whole.tif"), tile_row=2)


def _corrupt_start(d: Path) -> Path:
    return corrupt_tile(d / "corrupt-head.tif", multiblock_scene(d / "whole.tif"), 1, 2, where="start")


def _corrupt_middle(d: Path) -> Path:
    return corrupt_tile(d / "corrupt-mid.tif", multiblock_scene(d / "whole.tif"), 1, 2, where="middle")


MID_READ = {
    # name -> (builder, words the error must contain); block row 2 is the first that fails
    "truncated": (_truncated, ("got 100 bytes, expected", "truncated or corrupt")),
    "corrupt-zlib-header": (_corrupt_start, ("Decoding error", "truncated or corrupt")),
    "corrupt-deflate-stream": (_corrupt_middle, ("truncated or corrupt",)),
}


@pytest.mark.parametrize("case", list(MID_READ))
def test_scene_failing_mid_read_fails_alone(tmp_path: Path, dask_local, probe_ckpt: Path, case: str) -> None:
    build, words = MID_READ[case]
    bad = build(tmp_path)
    # Precondition: the header opens, the first row of blocks reads, row 2 does not.
    info = open_scene(bad, in_channels=3)
    for col in range(4):
        read_window(info, Window(col * 64, 0, 64, 64))
    with pytest.raises(SceneReadError):
        for col in range(4):
            read_window(info, Window(col * 64, 128, 64, 64))

    good = bright_rect_scene(tmp_path / "good.tif")
    out = tmp_path / "out"
    # One block at a time, in order: eight blocks succeed (and stream into the probability
    # raster) before the first failing one.
    res = run_scenes(
        [str(bad), str(good)], probe_ckpt, out, SETTINGS, client=dask_local, progress=False, max_in_flight=1
    )
    assert [r.status for r in res] == ["failed", "success"], [r.error for r in res]
    err = res[0].error or ""
    assert err.startswith(f"scene {bad}: reading columns "), err
    assert "rows 128-192" in err, err
    for w in words:
        assert w in err, err
    assert "See previous exception" not in err
    assert_no_finished_output(out / res[0].stem)
    assert_complete(out / "good")
    assert no_partials(out) == []
