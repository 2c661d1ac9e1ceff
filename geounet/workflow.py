"""Batch runs over directories of scenes: ``geounet run WORKFLOW.yaml``.

A run finds its scenes (a folder, a glob, a list file or GDAL URLs), takes a lock on the
output folder (an overlapping cron job exits at once; a lock left by a killed run is
released by the kernel with the process), cleans leftovers of interrupted writes, drives
:func:`geounet.pipeline.run_scenes` on a Dask cluster, and records everything in
``OUT/run.json`` and ``OUT/geounet.log``. SIGTERM and Ctrl-C stop the submission of work,
leave nothing half-written and still write ``run.json``.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pydantic import Field

from geounet.config import StrictModel, load_config
from geounet.errors import ConfigError, LockHeldError
from geounet.export import PARTIAL_PREFIX, write_json
from geounet.pipeline import SceneOutcome, library_versions, run_scenes
from geounet.scenes import is_remote
from geounet.settings import InferenceSettings

log = logging.getLogger(__name__)

LOCK_NAME = ".geounet.lock"
RUN_JSON = "run.json"
LOG_NAME = "geounet.log"
SCENE_SUFFIXES = (".tif", ".tiff")


class ClusterSettings(StrictModel):
    """Where the work runs."""

    scheduler: str | None = None
    """Address of an existing Dask scheduler (tcp://host:8786); null: an embedded LocalCluster."""
    workers: int | None = Field(None, ge=1)
    """Embedded cluster: worker processes; null: one per GPU, else 1."""
    threads_per_worker: int | None = Field(None, ge=1)
    """Embedded cluster: task threads per worker; null: cores / workers."""
    processes: bool = True
    """Embedded cluster: workers are processes (true, robust to crashes) or threads (false)."""


class WorkflowSettings(StrictModel):
    """A job definition (see workflows/segment-scenes.yaml)."""

    scenes: str | list[str]
    """A folder, a glob, a text file of paths (one per line), or a list of paths/URLs."""
    pattern: str = "*.tif"
    """File pattern for folders (case-insensitive suffix match on .tif/.tiff when default)."""
    recursive: bool = True
    """Search sub-folders of a scene folder."""
    model: str
    """Checkpoint (.safetensors); 'default' for the weights shipped with geounet."""
    out: str
    """Output folder; each scene gets OUT/<stem>/."""
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    """Inference settings (keys as in configs/inference.yaml)."""
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    """Dask cluster settings."""


def resolve_model(model: str, base: Path | None = None) -> str:
    """'default' -> the shipped weights; relative paths are taken from ``base``."""
    if model == "default":
        from geounet.weights import default_weights

        return str(default_weights())
    p = Path(model)
    if not p.is_absolute() and base is not None and not p.exists():
        cand = base / p
        if cand.exists():
            return str(cand)
    return str(p)


def discover_scenes(spec: str | list[str], *, pattern: str = "*.tif", recursive: bool = True,
                    base: Path | None = None) -> list[str]:
    """Scene paths from a folder, glob, list file, URL, or a list of any of these.

    Sorted within each source; order of sources is kept; duplicates are dropped.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    found: list[str] = []
    for s in specs:
        if is_remote(s):
            found.append(s)
            continue
        p = Path(s)
        if not p.is_absolute() and base is not None and not p.exists() and (base / p).exists():
            p = base / p
        if p.is_dir():
            it = p.rglob("*") if recursive else p.glob("*")
            if pattern == "*.tif":
                hits = [q for q in it if q.suffix.lower() in SCENE_SUFFIXES and (q.is_file() or q.is_symlink())]
            else:
                hits = [q for q in (p.rglob(pattern) if recursive else p.glob(pattern))]
            found += sorted(str(q) for q in hits)
        elif p.is_file() and p.suffix.lower() not in SCENE_SUFFIXES:
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = line if is_remote(line) or os.path.isabs(line) else str(p.parent / line)
                    found.append(q)
        elif any(ch in s for ch in "*?["):
            found += sorted(globlib.glob(s, recursive=True))
        else:
            found.append(str(p))  # a single file (or a missing one: reported per scene)
    seen: set[str] = set()
    return [x for x in found if not (x in seen or seen.add(x))]


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run; fail at once if another run holds it."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockHeldError(
            f"output folder {out} is locked by another geounet run ({out / LOCK_NAME}); "
            "wait for it to finish or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def clean_partials(out: Path) -> int:
    """Remove temporary files left by interrupted runs anywhere under ``out``."""
    n = 0
    for p in out.rglob(f"{PARTIAL_PREFIX}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


@contextlib.contextmanager
def run_log(out: Path, level: int = logging.INFO) -> Iterator[None]:
    """Append this run's log records to OUT/geounet.log."""
    handler = logging.FileHandler(out / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    root = logging.getLogger("geounet")
    old = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        handler.close()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or the first Ctrl-C; a second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        log.warning("received %s: finishing nothing new, cleaning up", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def load_workflow(path: str | Path | None, overrides: dict[str, Any]) -> WorkflowSettings:
    return load_config(WorkflowSettings, path, overrides)


def run_workflow(
    wf: WorkflowSettings,
    *,
    base: Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    client: Any = None,
) -> tuple[list[SceneOutcome], dict[str, Any]]:
    """Run a workflow; returns the outcomes and the run record written to run.json."""
    from geounet.engine import dask_client

    out = Path(wf.out)
    if not out.is_absolute() and base is not None:
        out = base / out
    model = resolve_model(wf.model, base)
    scenes = discover_scenes(wf.scenes, pattern=wf.pattern, recursive=wf.recursive, base=base)
    if not scenes:
        raise ConfigError(f"no scenes found for {wf.scenes!r} (pattern {wf.pattern!r})")
    from geounet.checkpoint import read_metadata

    read_metadata(model)  # a bad model fails before any scene
    if dry_run:
        return _dry_run(scenes, model, out, wf), {}
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    with output_lock(out), run_log(out), stop_on_signals() as stop:
        removed = clean_partials(out)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run", removed)
        log.info("run started: %d scene(s), model %s, output %s", len(scenes), model, out)
        outcomes: list[SceneOutcome] = []
        record: dict[str, Any] = {}

        def write_record(final: bool, error: str | None = None) -> None:
            record.clear()
            record.update({
                "status": "finished" if final else "running",
                "started": started.isoformat(timespec="seconds"),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if final else None,
                "wall_s": round(time.perf_counter() - t0, 3),
                "model": model,
                "config_hash": wf.inference.fingerprint(),
                "interrupted": stop.is_set(),
                "error": error,
                "counts": {s: sum(o.status == s for o in outcomes) for s in ("success", "skipped", "failed")},
                "scenes": [o.to_dict() for o in outcomes],
                "versions": library_versions(),
            })
            write_json(record, out / RUN_JSON)

        def on_outcome(o: SceneOutcome) -> None:
            outcomes.append(o)
            write_record(False)

        ctx = contextlib.nullcontext(client) if client is not None else dask_client(
            wf.cluster.scheduler, device=wf.inference.device, workers=wf.cluster.workers,
            threads_per_worker=wf.cluster.threads_per_worker, processes=wf.cluster.processes)
        try:
            with ctx as c:
                link = getattr(c, "dashboard_link", None)
                if link:
                    log.warning("Dask dashboard: %s", link)
                final = run_scenes(scenes, model, out, wf.inference, client=c, force=force,
                                   progress=progress, stop=stop, on_outcome=on_outcome)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                write_record(True, error=f"{type(exc).__name__}: {exc}")
            raise
        outcomes[:] = final
        write_record(True)
        log.info("run finished: %s", record["counts"])
        return final, record


def _dry_run(scenes: list[str], model: str, out: Path, wf: WorkflowSettings) -> list[SceneOutcome]:
    from geounet.errors import SceneError
    from geounet.pipeline import ModelInfo, is_complete
    from geounet.scenes import open_scene, unique_stems

    mi = ModelInfo.from_checkpoint(model)
    res = []
    for path, stem in zip(scenes, unique_stems(scenes)):
        try:
            info = open_scene(path, in_channels=mi.in_channels, bands=wf.inference.bands or mi.bands,
                              max_pixels=wf.inference.max_pixels, stem=stem)
            done = is_complete(out / stem, info, mi, wf.inference.fingerprint())
            res.append(SceneOutcome(scene=path, stem=stem, status="skipped" if done else "success",
                                    out_dir=str(out / stem), pixels=info.pixels,
                                    error=None))
        except SceneError as exc:
            res.append(SceneOutcome(scene=path, stem=stem, status="failed", out_dir=str(out / stem), error=str(exc)))
    return res
