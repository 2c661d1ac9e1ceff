"""``geounet predict`` holds the output folder as ``geounet run`` does: the same lock (a second
command on the same -o exits 3 at once and creates nothing) and the same signal handling
(SIGTERM stops it cleanly, exit 130, no ``.partial-*`` files, no unfinished scene folders)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.workflow._helpers import GEOUNET, Job, assert_clean, finish, partials, session_pids, wait_for

FAST = ["--tile-size", "192", "--tiles-per-block", "1", "--precision", "fp32", "--workers", "1", "--no-progress"]


def start_predict(job: Job, out: Path, *scenes: Path) -> subprocess.Popen[str]:
    """``geounet predict SCENES -m MODEL -o OUT`` in a new session (its pgid is its pid)."""
    return subprocess.Popen(
        [str(GEOUNET), "predict", *map(str, scenes), "-m", str(job.model), "-o", str(out), *FAST],
        cwd=job.root,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.mark.soak  # `make test-soak`; run's lock (the same code) is tested in `make test`
@pytest.mark.timeout(300)
def test_second_predict_on_the_same_out_exits_3_and_creates_nothing(job: Job, tmp_path: Path, sessions: list) -> None:
    out = tmp_path / "out"
    lock = out / ".geounet.lock"
    first = start_predict(job, out, job.more / "m1.tif", job.more / "m2.tif")
    sessions.append(first)
    wait_for(
        lambda: lock.exists() and f"pid {first.pid} " in lock.read_text(),
        120,
        "the first predict to take the lock",
        proc=first,
    )
    os.kill(first.pid, signal.SIGSTOP)  # holds the lock for as long as the test needs
    try:
        before = sorted(p.name for p in out.iterdir())
        t = time.monotonic()
        second = start_predict(job, out, job.scenes / "a.tif", job.scenes / "sub1" / "b.tif")
        sessions.append(second)
        rc, stdout, stderr = finish(second, timeout=120)
        took = time.monotonic() - t
        assert rc == 3, stderr[-3000:]
        assert str(lock) in stderr and f"pid {first.pid}" in stderr and "locked by another geounet run" in stderr
        assert "Dask" not in stderr and "Traceback" not in stderr  # refused before starting anything
        assert took < 60
        # the second created no folder (no empty ones either) and removed nothing of the first's
        assert sorted(p.name for p in out.iterdir()) == before
        assert not (out / "a").exists() and not (out / "b").exists()
    finally:
        os.kill(first.pid, signal.SIGKILL)
    finish(first, timeout=60)
    wait_for(lambda: not session_pids(first.pid), 60, "the killed predict's processes to exit")
    # a killed predict's lock blocks nothing, and its leftovers are cleaned up by the next one
    rc, stdout, stderr = finish(start_predict(job, out, job.scenes / "a.tif"), timeout=180)
    assert rc == 0, stderr[-3000:]
    assert (out / "a" / "scene.json").exists()
    assert partials(out) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_stops_predict_cleanly_with_exit_130(job: Job, tmp_path: Path, sessions: list) -> None:
    out = tmp_path / "out"
    # two 480 x 480 scenes of 25 blocks each; the signal comes as the second one starts
    # (its staging raster appears before its first block is submitted)
    proc = start_predict(job, out, job.more / "m1.tif", job.more / "m2.tif")
    sessions.append(proc)
    wait_for(
        lambda: (out / "m2").is_dir() and any((out / "m2").glob(".partial-*stage*")),
        180,
        "the second scene to start",
        interval=0.005,
        proc=proc,
    )
    os.kill(proc.pid, signal.SIGTERM)
    t = time.monotonic()
    rc, stdout, stderr = finish(proc, timeout=90)
    assert rc == 130, stderr[-3000:]
    assert time.monotonic() - t < 60
    assert "received SIGTERM" in stderr and "interrupted" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert_clean(out)
    status = {line.split()[0]: line.split()[1] for line in stdout.splitlines()[1:3]}
    assert status["m2"] == "failed"
    for stem, s in status.items():  # an unfinished scene's folder is removed
        assert (out / stem / "scene.json").exists() == (s == "success")
        assert (out / stem).exists() == (s == "success")
