"""Fixtures for the batch-workflow tests (``geounet run``).

Every run goes through the real command line in a subprocess (its own session, so the
test can signal it and find every process it started), with a real ``unet`` of width 4,
depth 3 and random weights on three tiny GeoTIFFs, two of which share a file name in
different sub-folders. One uninterrupted run is the reference the other runs must equal.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # `pytest tests/workflow` without `python -m`
    sys.path.insert(0, str(_REPO))

from tests.conftest import make_checkpoint, smooth_image, write_tif  # noqa: E402
from tests.workflow._helpers import SCENE_FILES, WORKFLOW, Job, Reference, kill_session, run  # noqa: E402


@pytest.fixture(scope="session")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    root = tmp_path_factory.mktemp("workflow")
    for rel, (h, w), seed in zip(SCENE_FILES, [(240, 320), (200, 200), (180, 260)], (1, 2, 3)):
        (root / "scenes" / rel).parent.mkdir(parents=True, exist_ok=True)
        write_tif(root / "scenes" / rel, smooth_image((3, h, w), seed=seed))
    (root / "more").mkdir()
    for name, seed in (("m1.tif", 4), ("m2.tif", 5)):
        write_tif(root / "more" / name, smooth_image((3, 480, 480), seed=seed))
    make_checkpoint(root / "model.safetensors", width=4, depth=3)
    (root / "workflow.yaml").write_text(WORKFLOW)
    return Job(root, root / "workflow.yaml", root / "scenes", root / "model.safetensors", root / "more")


@pytest.fixture
def sessions() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; every one of their sessions is killed at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        kill_session(p)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


@pytest.fixture(scope="session")
def reference(job: Job, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """One uninterrupted run with progress bars: the outputs every other run must equal."""
    out = tmp_path_factory.mktemp("reference") / "out"
    rc, stdout, stderr = run(job, "--out", str(out), "--progress")
    assert rc == 0, stderr[-4000:]
    return Reference(out, rc, stdout, stderr)
