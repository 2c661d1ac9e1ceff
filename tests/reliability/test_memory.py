"""Decompression bombs and huge scenes: refused by the pixel budget, or run in bounded memory.

The bomb is a real one: a 40000 x 40000 x 3 GeoTIFF whose every 512 px tile is a DEFLATE
stream of zeros, 5 MB on disk for 4.8 GB of pixels. Memory is measured, not inferred.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from geounet.batch.run import make_plan, run_scenes
from geounet.checkpoint import read_metadata
from geounet.errors import SceneError
from geounet.scene.source import open_scene
from geounet.settings import InferenceSettings
from tests.conftest import REPO, make_checkpoint
from tests.reliability._faults import bright_rect_scene, geounet_cmd, sparse_scene

MB = 1e6


def test_bomb_is_small_on_disk_and_refused_by_a_lower_budget(tmp_path: Path) -> None:
    bomb = sparse_scene(tmp_path / "bomb.tif", 40000, 40000, block=512, sparse=False)
    assert bomb.stat().st_size < 8 * MB
    t0 = time.perf_counter()
    with pytest.raises(SceneError, match=r"40000 x 40000 = 1,600,000,000 pixels, above the pixel budget"):
        open_scene(bomb, in_channels=3, max_pixels=10**9)
    assert time.perf_counter() - t0 < 2.0
    # With the budget raised it is accepted, and its plan reads bounded windows only.
    info = open_scene(bomb, in_channels=3, max_pixels=2 * 10**9)
    ckpt = make_checkpoint(tmp_path / "unet.safetensors", width=2, depth=2)
    plan = make_plan(info, read_metadata(ckpt), InferenceSettings(tile_size=1024))
    biggest = max(int(b.read.width) * int(b.read.height) for b in plan.blocks)
    assert biggest <= (2 * 1024) ** 2 and len(plan.blocks) > 300


def _rss_peak_during(fn, proc: psutil.Process) -> tuple[float, object]:
    """(peak RSS increase in bytes while ``fn`` runs, fn's result), sampled every 20 ms."""
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        result = fn()
    finally:
        done.set()
        th.join()
    return peak[0] - base, result


def test_memory_does_not_grow_with_the_scene(tmp_path: Path, dask_local) -> None:
    """Bombs of 4096^2 and 12288^2 px (9x the pixels) through the whole pipeline in small
    blocks: the peak growth is the same up to noise (GDAL's capped block cache, allocator
    arenas), and far below the large scene's probability raster (302 MB) or pixels (453 MB),
    which a step holding a whole-scene array (or every block's result) would need."""
    small = sparse_scene(tmp_path / "small.tif", 4096, 4096, block=512, sparse=False)
    bomb = sparse_scene(tmp_path / "bomb.tif", 12288, 12288, block=512, sparse=False)
    warm = bright_rect_scene(tmp_path / "warm.tif")
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    s = InferenceSettings(tile_size=256, halo=0, tiles_per_block=1, batch_size=1)
    out = tmp_path / "out"
    run_scenes([str(warm)], ckpt, out, s, client=dask_local, progress=False)  # model cache, imports
    grown_small, res_small = _rss_peak_during(
        lambda: run_scenes([str(small)], ckpt, out, s, client=dask_local, progress=False), psutil.Process()
    )
    grown, res = _rss_peak_during(
        lambda: run_scenes([str(bomb)], ckpt, out, s, client=dask_local, progress=False), psutil.Process()
    )
    assert res_small[0].status == "success" and res[0].status == "success", res[0].error
    assert res[0].blocks == 48 * 48
    assert grown - grown_small < 100 * MB, (
        f"peak RSS grew by {grown_small / MB:.0f} MB at 4096^2 but {grown / MB:.0f} MB at 12288^2"
    )
    assert grown < 302 * MB, f"peak RSS grew by {grown / MB:.0f} MB"


def _predict_peak_rss(scene: Path, ckpt: Path, out: Path) -> tuple[float, float, float]:
    """Run ``geounet predict`` on ``scene``; (wall s, peak RSS of the process tree, peak RSS of
    its largest process), sampled every 0.1 s."""
    cmd = geounet_cmd(
        "predict",
        str(scene),
        "-m",
        str(ckpt),
        "-o",
        str(out),
        "--workers",
        "1",
        "--max-pixels",
        str(2 * 10**9),
        "--tile-size",
        "1024",
        "--no-progress",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_tree = peak_one = 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [proc, *proc.children(recursive=True)]]
        except psutil.Error:
            continue
        peak_tree, peak_one = max(peak_tree, sum(rss)), max(peak_one, max(rss))
        time.sleep(0.1)
    log = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, log
    return time.perf_counter() - t0, peak_tree, peak_one


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_40000_squared_bomb_runs_in_bounded_memory(tmp_path: Path) -> None:
    """The full bomb through ``geounet predict`` (real UNet width 2, depth 2, tile 1024), next to
    a 4096^2 bomb with the same settings: 95 times the pixels, yet no process comes near one
    full uint8 band of the scene (1.6 GB) and the process tree (client with the scheduler,
    worker) grows by less than 0.6 GB (the client's GDAL block cache, capped at 64 MiB, and
    the COG overview buffers, which scale with the width only). The tree's own baseline is
    ~1.35 GB: two processes with torch, and the activations of a batch of 1024 px tiles.
    Measured on 2 cores: 126 s; 1.19 GB -> 1.37 GB (tree), 0.70 GB largest (1.86 GB and 1.12 GB
    while the seam merge still cut every seam edge of the scene-wide polygon into 1-pixel
    edges)."""
    ckpt = make_checkpoint(tmp_path / "unet.safetensors", width=2, depth=2, tile_size=1024)
    small = sparse_scene(tmp_path / "small.tif", 4096, 4096, block=512, sparse=False)
    _, small_tree, _ = _predict_peak_rss(small, ckpt, tmp_path / "out-small")
    bomb = sparse_scene(tmp_path / "bomb.tif", 40000, 40000, block=512, sparse=False)
    out = tmp_path / "out"
    wall, peak_tree, peak_one = _predict_peak_rss(bomb, ckpt, out)
    rec = json.loads((out / "bomb" / "scene.json").read_text())
    print(
        f"40000^2 bomb: {wall:.0f} s, peak RSS {peak_tree / MB:.0f} MB (tree; 4096^2: "
        f"{small_tree / MB:.0f} MB), {peak_one / MB:.0f} MB (largest process); "
        f"timings {rec['timings_s']}"
    )
    assert rec["size"]["width"] == 40000 and rec["tiling"]["blocks"] >= 400
    assert peak_one < 1.6e9, f"a process reached {peak_one / MB:.0f} MB"
    assert peak_tree - small_tree < 0.6e9, (peak_tree, small_tree)
