"""Helpers for the batch-workflow tests: start ``geounet run`` in its own session, signal
it, find and end every process it started, and compare outputs between runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

GEOUNET = Path(sys.executable).parent / "geounet"
DASK = Path(sys.executable).parent / "dask"
STEMS = ("a", "sub1_b", "sub2_b")
SCENE_FILES = ("a.tif", "sub1/b.tif", "sub2/b.tif")
WORKFLOW = """\
scenes: scenes
model: model.safetensors
out: out
inference:
  tile_size: 192
  tiles_per_block: 1
  precision: fp32
  min_area_m2: 5
cluster:
  workers: 1
  threads_per_worker: 2
"""


@dataclass(frozen=True)
class Job:
    """A workflow folder: scenes/, model.safetensors, workflow.yaml, more/ (larger scenes)."""

    root: Path
    workflow: Path
    scenes: Path
    model: Path
    more: Path  # two 480 x 480 scenes (25 blocks each) for runs that must last a while


# --------------------------------------------------------------------------- processes
def start(job: Job, *args: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    """``geounet run WORKFLOW *args`` in a new session (its pgid is its pid)."""
    return subprocess.Popen(
        [str(GEOUNET), "run", str(job.workflow), *args],
        cwd=job.root,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    """Wait for ``proc``; on timeout kill its whole session and fail.

    A run that exits by itself must leave no process behind (its embedded cluster is closed).
    """
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, err = proc.communicate()
        pytest.fail(f"geounet run did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err[-4000:]}")
    if proc.returncode >= 0:
        wait_for(lambda: not session_pids(proc.pid), 30, "the run's worker processes to exit", interval=0.1)
    return proc.returncode, out, err


def run(job: Job, *args: str, timeout: float = 240, **kw: object) -> tuple[int, str, str]:
    return finish(start(job, *args, **kw), timeout)  # type: ignore[arg-type]


def session_pids(pgid: int) -> list[int]:
    """Live processes (not zombies) of process group ``pgid``."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                pids.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return pids


def kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL every process of the session started for ``proc`` (nothing else)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.02,
    proc: subprocess.Popen[str] | None = None,
) -> object:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` s or when ``proc`` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"geounet run ended (rc {proc.returncode}) before {what}\n{out}\n{err[-4000:]}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Reference:
    out: Path
    rc: int
    stdout: str
    stderr: str


def partials(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".partial-")]


def assert_clean(out: Path) -> None:
    """No temporary files, and no scene folder holds outputs without its scene.json."""
    assert not partials(out), partials(out)
    for folder in (p for p in out.iterdir() if p.is_dir()):
        names = {p.name for p in folder.iterdir()}
        assert not names or "scene.json" in names, f"{folder} holds {sorted(names)} without scene.json"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def scene_record(folder: Path, *, source: bool = True) -> dict:
    """scene.json without what legitimately differs between runs (timings, timestamps; the
    size of item.json, which holds its creation time); without ``source``, also without the
    STAC item the scene came from."""
    rec = read_json(folder / "scene.json")
    rec.pop("timings_s")
    rec.pop("finished")
    rec["outputs"].pop("item.json", None)
    if not source:
        rec.pop("stac")
    return rec


def assert_same_scene(got: Path, want: Path, *, source: bool = True) -> None:
    """Same GeoJSON and GeoPackage content, same probability and quicklook pixels, same
    scene.json except timings and timestamps (and, without ``source``, the STAC source)."""
    import numpy as np
    import pyogrio
    import rasterio
    from PIL import Image

    for name in ("buildings.geojson", "roads.geojson"):
        assert read_json(got / name) == read_json(want / name), f"{got / name} differs from {want / name}"
    layers = sorted(n for n, _ in pyogrio.list_layers(want / "polygons.gpkg"))
    assert sorted(n for n, _ in pyogrio.list_layers(got / "polygons.gpkg")) == layers
    for layer in layers:
        a = pyogrio.read_dataframe(got / "polygons.gpkg", layer=layer)
        b = pyogrio.read_dataframe(want / "polygons.gpkg", layer=layer)
        assert a.crs == b.crs
        assert list(a.geometry.to_wkb()) == list(b.geometry.to_wkb()), f"{layer} geometries differ"
        assert a.drop(columns="geometry").equals(b.drop(columns="geometry")), f"{layer} attributes differ"
    with rasterio.open(got / "probability.tif") as ga, rasterio.open(want / "probability.tif") as wa:
        assert ga.profile == wa.profile
        assert np.array_equal(ga.read(), wa.read())
    assert np.array_equal(np.asarray(Image.open(got / "quicklook.png")), np.asarray(Image.open(want / "quicklook.png")))
    a, b = scene_record(got, source=source), scene_record(want, source=source)
    assert a == b, {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


def assert_same_outputs(out: Path, ref: Path, stems: tuple[str, ...] = STEMS) -> None:
    for stem in stems:
        assert_same_scene(out / stem, ref / stem)


def digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder`` (to prove nothing was touched)."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
