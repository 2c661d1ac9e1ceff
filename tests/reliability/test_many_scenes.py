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
