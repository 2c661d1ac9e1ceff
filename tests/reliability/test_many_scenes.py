"""A batch of 10,000 refused scenes: each fails alone, and run.json is not rewritten per scene
(rewriting it after each of 4,000 scenes once took 373 of a 412 s run and delayed SIGTERM)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import geounet.batch.workflow as workflow
from geounet.batch.workflow import RUN_JSON_EVERY_S, load_workflow, run_workflow
from geounet.export.layout import RUN_JSON
from tests.conftest import make_checkpoint

N = 10_000


@pytest.mark.timeout(600)
def test_ten_thousand_refused_scenes_write_run_json_a_few_times(
    tmp_path: Path, dask_local, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(N):
        (scenes / f"s{i:05d}.tif").touch()  # 0 bytes: refused from its size, before any work
    model = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    out = tmp_path / "out"
    wf = load_workflow(None, {"scenes": str(scenes), "model": str(model), "out": str(out)})

    writes: list[dict] = []
    real = workflow.write_json

    def counting(record: dict, path: Path) -> None:
        if Path(path).name == RUN_JSON:
            writes.append({"status": record["status"], "scenes": len(record["scenes"])})
        real(record, path)

    monkeypatch.setattr(workflow, "write_json", counting)
    t0 = time.perf_counter()
    outcomes, record = run_workflow(wf, client=dask_local, progress=False)
    elapsed = time.perf_counter() - t0

    assert len(outcomes) == N and all(o.status == "failed" for o in outcomes)
    assert all("empty (0 bytes)" in (o.error or "") for o in outcomes)
    rec = json.loads((out / RUN_JSON).read_text())
    assert rec["status"] == "finished" and rec["total"] == N and rec["counts"]["failed"] == N
    assert len(rec["scenes"]) == N
    # one write when the first scene is reported, then at most one per RUN_JSON_EVERY_S, and the
    # final one; not N
    assert writes[-1] == {"status": "finished", "scenes": N}
    assert len(writes) <= 2 + elapsed / RUN_JSON_EVERY_S, (len(writes), elapsed)
    assert not any(out.glob("s*")), "refused scenes leave no folders"


@pytest.mark.timeout(300)
def test_sigterm_while_checking_thousands_of_scenes_acts_at_once(tmp_path: Path) -> None:
    """SIGTERM during the checks of 30,000 scenes (about 10 s of work) stops the run at the next
    scene: exit 130, run.json interrupted with the scenes checked so far."""
    import os
    import signal
    import subprocess
    import sys

    from tests.workflow._helpers import finish, kill_session, wait_for

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(30_000):
        (scenes / f"s{i:05d}.tif").touch()
    model = make_checkpoint(tmp_path / "unet.safetensors", width=2, depth=2)  # the CLI knows no probe
    out = tmp_path / "out"
    wf = tmp_path / "workflow.yaml"
    wf.write_text(f"scenes: {scenes}\nmodel: {model}\nout: {out}\n")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "geounet"), "run", str(wf), "--no-progress"],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (out / ".geounet.lock").exists(), 120, "the run to take its lock", 0.01)
        time.sleep(1.0)  # inside the checks (signal handlers installed with the lock)
        os.kill(proc.pid, signal.SIGTERM)
        t = time.monotonic()
        rc, _, stderr = finish(proc, timeout=60)
        waited = time.monotonic() - t
    finally:
        kill_session(proc)
    assert rc == 130, stderr[-3000:]
    rec = json.loads((out / RUN_JSON).read_text())
    assert rec["status"] == "interrupted" and rec["total"] == 30_000
    assert 0 < len(rec["scenes"]) < 30_000, len(rec["scenes"])
    assert waited < 30, waited  # it stopped at the next scene, not after the remaining checks
