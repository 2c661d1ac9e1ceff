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
from rasterio.windows import Window

from geounet.batch.run import run_scenes
from geounet.errors import SceneReadError
from geounet.scene.read import read_window
from geounet.scene.source import open_scene
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, write_tif
from tests.reliability._faults import (
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
        ("band(s) [3] requested", "only 2 band(s)"),
    ),
    "dangling-symlink": (lambda d, g: dangling_link(d / "link.tif"), ("dangling symbolic link",)),
    "directory": (_directory, ("is not a regular file",)),
    "mode-000": (_unreadable, ("not readable", "permission denied")),
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
