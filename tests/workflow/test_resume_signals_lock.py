"""Resume, SIGKILL at arbitrary moments, SIGTERM and Ctrl-C, and the output lock -- each
through the real ``geounet run`` in a subprocess, with real signals."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.reliability.test_messages import console_noise
from tests.workflow._helpers import (
    STEMS,
    Job,
    Reference,
    assert_clean,
    assert_same_outputs,
    assert_same_scene,
    digest,
    finish,
    partials,
    read_json,
    run,
    session_pids,
    start,
    wait_for,
)


def test_uninterrupted_run_shows_progress_summary_and_records_everything(job: Job, reference: Reference) -> None:
    out = reference.out
    # progress: one bar over scenes, one over the current scene's blocks (tqdm, on stderr)
    assert re.search(r"scenes: 100%.*3/3", reference.stderr), reference.stderr[-2000:]
    assert re.search(r"blocks (a|sub1_b|sub2_b):", reference.stderr)
    # the summary table on stdout
    lines = reference.stdout.splitlines()
    assert lines[0].split() == ["scene", "status", "polygons", "seconds"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:4]}
    assert set(rows) == set(STEMS) and all(r[1] == "success" for r in rows.values())
    assert "3 scene(s): 3 done, 0 skipped (already complete), 0 failed" in reference.stdout
    # dashboard address printed and logged
    dash = re.search(r"Dask dashboard: (http://127\.0\.0\.1:\d+/status)", reference.stderr)
    assert dash, reference.stderr[-2000:]
    log_text = (out / "geounet.log").read_text()
    assert dash.group(1) in log_text and "starting embedded Dask cluster" in log_text
    assert " INFO " not in reference.stderr  # the log file gets INFO; the console keeps WARNING
    # run.json
    rec = read_json(out / "run.json")
    assert rec["status"] == "finished" and rec["interrupted"] is False and rec["error"] is None
    assert rec["counts"] == {"success": 3, "skipped": 0, "failed": 0}
    assert {s["stem"]: s["status"] for s in rec["scenes"]} == dict.fromkeys(STEMS, "success")
    for stem in STEMS:
        scene = read_json(out / stem / "scene.json")
        assert scene["status"] == "success" and scene["config_hash"] == rec["config_hash"]
        assert scene["input_fingerprint"] and scene["model_hash"]
        assert {p.name for p in (out / stem).iterdir()} == {
            "buildings.geojson",
            "roads.geojson",
            "road_centerlines.geojson",
            "polygons.gpkg",
            "probability.tif",
            "quicklook.png",
            "item.json",
            "scene.json",
        }
    assert_clean(out)


def test_complete_scenes_are_skipped_and_force_recomputes(job: Job, reference: Reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference.out, out)
    before = digest(out)
    rc, stdout, stderr = run(job, "--out", str(out), "--no-progress", timeout=120)
    assert rc == 0, stderr[-3000:]
    assert "0 done, 3 skipped" in stdout
    after = digest(out)
    assert {k: v for k, v in after.items() if "/" in k} == {k: v for k, v in before.items() if "/" in k}
    rec = read_json(out / "run.json")
    assert rec["counts"] == {"success": 0, "skipped": 3, "failed": 0}
    assert "no Dask cluster was started" in (out / "geounet.log").read_text()  # nothing to do: no cluster

    mtime = (out / "a" / "scene.json").stat().st_mtime_ns
    rc, stdout, stderr = run(
        job, "--out", str(out), "--scenes", str(job.scenes / "a.tif"), "--force", "--no-progress", timeout=180
    )
    assert rc == 0, stderr[-3000:]
    assert read_json(out / "run.json")["counts"] == {"success": 1, "skipped": 0, "failed": 0}
    assert (out / "a" / "scene.json").stat().st_mtime_ns > mtime  # really recomputed ...
    assert_same_scene(out / "a", reference.out / "a")  # ... to the same result
    assert digest(out / "sub1_b") == {k.split("/", 1)[1]: v for k, v in before.items() if k.startswith("sub1_b/")}


def _scene_jsons_newer_than(out: Path, t: float) -> list[Path]:
    return [p for p in out.glob("*/scene.json") if p.stat().st_mtime > t]


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(
    job: Job, reference: Reference, tmp_path: Path, sessions: list
) -> None:
    seed = int(os.environ.get("GEOUNET_TEST_SEED", "20261124"))
    rng = random.Random(seed)
    out = tmp_path / "out"
    # (moment, condition): start-up (imports, lock, cluster start), the first temporary
    # file (a scene's staging raster or an output being written), the first scene this
    # run finishes, and a random moment later on
    moments = [
        ("start-up", "delay", rng.uniform(0.5, 3.0)),
        ("first temporary file", "partial", None),
        ("first scene finished by this run", "scene", None),
        ("random moment", "delay", rng.uniform(2.0, 9.0)),
    ]
    killed = []
    for what, kind, delay in moments:
        t0_wall, t0 = time.time(), time.monotonic()
        proc = start(job, "--out", str(out), "--no-progress")
        sessions.append(proc)

        def due(kind: str = kind, delay: float | None = delay, t0: float = t0, t0_wall: float = t0_wall) -> bool:
            if kind == "delay":
                return time.monotonic() - t0 >= delay  # type: ignore[operator]
            if not out.is_dir():
                return False
            if kind == "partial":
                return any(not p.name.endswith("write-probe") for p in partials(out))
            return bool(_scene_jsons_newer_than(out, t0_wall))

        deadline = time.monotonic() + 180
        while not due() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(what)
        rc, _, err = finish(proc, timeout=60)
        if what != "random moment":  # the first three moments come before the run can end
            assert rc == -signal.SIGKILL, f"seed {seed}: run ended with {rc} before {what}\n{err[-3000:]}"
        # the embedded cluster's worker processes notice their parent is gone and exit
        wait_for(lambda pid=proc.pid: not session_pids(pid), 60, "the killed run's worker processes to exit")
    assert killed[:3] == [m[0] for m in moments[:3]], killed

    # a lock left by a SIGKILLed run blocks nothing; the restarted run finishes the job
    rc, stdout, stderr = run(job, "--out", str(out), "--no-progress")
    assert rc == 0, f"seed {seed}\n{stderr[-3000:]}"
    rec = read_json(out / "run.json")
    assert rec["counts"]["failed"] == 0 and rec["counts"]["success"] + rec["counts"]["skipped"] == 3
    assert "temporary file(s) left by an interrupted run" in (out / "geounet.log").read_text()
    assert_clean(out)
    assert_same_outputs(out, reference.out)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["SIGTERM", pytest.param("Ctrl-C", marks=pytest.mark.soak)])
def test_sigterm_and_ctrl_c_stop_cleanly_with_exit_130(job: Job, tmp_path: Path, sessions: list, how: str) -> None:
    out = tmp_path / "out"
    # two 480 x 480 scenes of 25 blocks each; the signal comes as the second one starts
    # (its staging raster appears before its first block is submitted)
    proc = start(job, "--out", str(out), "--scenes", str(job.more), "--no-progress")
    sessions.append(proc)
    wait_for(
        lambda: (out / "m2").is_dir() and any((out / "m2").glob(".partial-*stage*")),
        180,
        "the second scene to start",
        interval=0.005,
        proc=proc,
    )
    if how == "SIGTERM":
        os.kill(proc.pid, signal.SIGTERM)  # systemctl stop, kill
    else:
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    t = time.monotonic()
    rc, stdout, stderr = finish(proc, timeout=90)
    assert rc == 130, stderr[-3000:]
    assert time.monotonic() - t < 60
    assert f"received {'SIGTERM' if how == 'SIGTERM' else 'SIGINT'}" in stderr
    assert "KeyboardInterrupt" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert console_noise(stderr) == [], stderr[-3000:]  # no Dask CancelledError, no GDAL ERROR 1 lines
    rec = read_json(out / "run.json")
    assert rec["interrupted"] is True and rec["status"] == "interrupted"
    status = {s["stem"]: s for s in rec["scenes"]}
    # the first scene was finished (it may have been finalizing: that completes) or not
    assert status["m1"]["status"] == "success" or "interrupted" in status["m1"]["error"]
    assert status["m2"]["status"] == "failed" and "interrupted" in status["m2"]["error"]
    assert_clean(out)
    for stem, s in status.items():  # an unfinished scene's (empty) folder is removed
        assert (out / stem / "scene.json").exists() == (s["status"] == "success")
        assert (out / stem).exists() == (s["status"] == "success")
    # (finish() checked that the embedded cluster's processes are gone; resuming after an
    # interruption is covered, under harsher conditions, by the SIGKILL test)


@pytest.mark.timeout(300)
def test_overlapping_run_exits_3_and_a_killed_runs_lock_blocks_nothing(
    job: Job, tmp_path: Path, sessions: list
) -> None:
    out = tmp_path / "out"
    lock = out / ".geounet.lock"
    first = start(job, "--out", str(out), "--no-progress")
    sessions.append(first)
    wait_for(
        lambda: lock.exists() and f"pid {first.pid} " in lock.read_text(),
        120,
        "the first run to take the lock",
        proc=first,
    )
    os.kill(first.pid, signal.SIGSTOP)  # holds the lock for as long as the test needs
    try:
        t = time.monotonic()
        rc, stdout, stderr = run(job, "--out", str(out), "--no-progress", timeout=120)
        took = time.monotonic() - t
        assert rc == 3, stderr[-3000:]
        assert str(lock) in stderr and f"pid {first.pid}" in stderr and "locked by another geounet run" in stderr
        assert "Dask" not in stderr  # refused before starting anything
        assert took < 60
    finally:
        os.kill(first.pid, signal.SIGKILL)
    finish(first, timeout=60)
    wait_for(lambda: not session_pids(first.pid), 60, "the killed run's processes to exit")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, stdout, stderr = run(job, "--out", str(out), "--scenes", str(empty), "--no-progress", timeout=120)
    assert rc == 0, stderr[-3000:]  # the dead run's lock is gone with it
    rec = read_json(out / "run.json")
    assert rec["pid"] != first.pid and rec["total"] == 0 and rec["status"] == "finished"
    assert "no scenes" in stdout
    assert_clean(out)
