"""Batch runs over directories of scenes: ``geounet run WORKFLOW.yaml``.

A run, in order:

1. finds its scenes (a folder, a glob, a list file, GDAL URLs, or a list of these) and
   reads the checkpoint's header -- a bad model fails here, before anything else;
2. takes an exclusive lock on the output folder (``flock``: an overlapping cron job exits
   at once with code 3; the kernel releases the lock of a killed run);
3. checks that the output folder takes files: a read-only folder, a path that is no
   folder or a full disk fails here, before any computing, with exit code 4;
4. removes ``.partial-*`` leftovers of interrupted writes, then drives
   :func:`geounet.batch.run.run_scenes` on a Dask cluster that starts only if some scene
   needs work;
5. records everything in ``OUT/run.json`` (rewritten as scenes finish, at most every
   :data:`RUN_JSON_EVERY_S` seconds, and at the end) and ``OUT/geounet.log``.

SIGTERM and Ctrl-C stop the submission of work, leave nothing half-written and still
write ``run.json`` (``"interrupted": true``).
"""

from __future__ import annotations

import contextlib
import glob as globlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyogrio
import rasterio
from distributed import WorkerPlugin

from geounet import errors
from geounet.atomic import open_no_follow, remove_partials, write_json
from geounet.batch.engine import dashboard_link, dask_client
from geounet.batch.finalize import library_versions
from geounet.batch.outcomes import SceneOutcome
from geounet.batch.run import run_scenes, scene_bands, scene_grid, why_recompute
from geounet.checkpoint import read_metadata
from geounet.config import describe_decode_error, load_config
from geounet.errors import ConfigError, GeounetError, LockHeldError, OutputError, SceneError, brief
from geounet.export.layout import (
    LOCK_NAME,
    LOG_NAME,
    RUN_FILES,
    RUN_JSON,
    check_writable,
    holds_scene_record,
    unwritable_folder,
)
from geounet.scene.source import is_remote, open_scene, unique_stems
from geounet.scene.stac import StacScene, is_stac_document, read_stac
from geounet.settings import InferenceSettings, WorkflowSettings
from geounet.weights import resolve_model_name

# run.json is rewritten while scenes finish at most this often, seconds (and always at the end):
# rewriting it after each of 4,000 scenes took 373 of a 412 s run, and delayed SIGTERM by 88 s.
RUN_JSON_EVERY_S = 2.0
log = logging.getLogger(__name__)

SCENE_SUFFIXES = (".tif", ".tiff")
GDAL_LOGGERS = ("rasterio", "pyogrio")  # where rasterio and pyogrio log what GDAL says


# --------------------------------------------------------------------------- paths
def resolve_model(model: str, base: Path | None = None) -> str:
    """A shipped model's name (``default``) -> its weights; relative paths are taken from ``base``."""
    return resolve_model_name(model, base)


def resolve_out(out: str, base: Path | None = None) -> Path:
    """The output folder: relative paths (from the workflow file) are taken from ``base``."""
    p = Path(out)
    return base / p if not p.is_absolute() and base is not None else p


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _below(path: Path, folder: Path) -> bool:
    """True when ``path`` lies inside ``folder`` (both resolved)."""
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    fixed = parts[: next((i for i, q in enumerate(parts) if _is_glob(q)), len(parts))]
    return Path(*fixed) if fixed else Path(".")


def discover_scenes(
    spec: str | list[str],
    *,
    pattern: str = "*.tif",
    recursive: bool = True,
    base: Path | None = None,
    exclude: Path | None = None,
    stac: dict[str, StacScene] | None = None,
    stac_asset: str = "auto",
    stac_bands: Sequence[str] | None = None,
) -> list[str]:
    """Scene paths from a folder, glob, list file, URL, STAC document, or a list of any of these.

    * a folder is searched (recursively unless ``recursive`` is false) for ``pattern``;
      the default ``*.tif`` matches ``.tif`` and ``.tiff`` in any case;
    * a glob (``*``, ``?``, ``[``; ``**`` crosses folders) is expanded; a relative glob
      that matches nothing from the current folder is tried from ``base``;
    * any other existing file that is not a GeoTIFF is a list file: one path or URL per
      line, ``#`` comments; relative paths are taken from the list file's folder;
    * a STAC Item, ItemCollection or static Catalog/Collection (``.json``/``.geojson``, a file
      or URL) gives one scene per item: its asset ``stac_asset`` (bands ``stac_bands``), see
      :mod:`geounet.scene.stac`; each scene's :class:`StacScene` is put in ``stac`` under the
      scene's path;
    * GDAL URLs (``/vsis3/...``, ``https://...``) and paths that do not exist are passed
      through (a missing file is then reported as a failed scene, not silently dropped).

    Hidden files (``.name``) are skipped, and so are files under ``exclude`` (the output
    folder, whose ``probability.tif`` files are not scenes) when it lies inside the
    searched folder, and files in folders that hold a geounet ``scene.json`` (outputs of
    earlier runs, anywhere in the searched folder, or the folder itself). Local paths are made
    absolute (symbolic links are kept). Sorted within each source; the order of sources is
    kept; duplicates are dropped.

    Raises:
        ConfigError: a list file that is not UTF-8 text (a PNG, JP2 or other binary file); a
            STAC document that cannot be read or is not STAC.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    skip = exclude.resolve() if exclude is not None else None
    outputs: dict[Path, bool] = {}  # folder -> holds a geounet scene.json
    skipped: list[str] = []

    def in_outputs(q: Path, root: Path) -> bool:
        """True when the folder of ``q``, or one above it up to ``root``, holds scene.json."""
        folder, top = Path(os.path.abspath(q)).parent, Path(os.path.abspath(root))
        while True:
            if folder not in outputs:
                outputs[folder] = holds_scene_record(folder)
            if outputs[folder]:
                return True
            if folder == top or folder.parent == folder:
                return False
            folder = folder.parent

    def select(hits: Iterable[Path], root: Path) -> list[str]:
        r = root.resolve()
        out_inside = skip is not None and skip != r and _below(skip, r)
        kept = []
        for q in hits:
            if q.name.startswith(".") or not q.is_file() or (out_inside and _below(q.resolve(), skip)):  # type: ignore[arg-type]
                continue
            if in_outputs(q, root):
                skipped.append(str(q))
                continue
            kept.append(str(q))
        return sorted(kept)

    found: list[str] = []
    for s in specs:
        p = Path(s)
        if not is_remote(s) and not p.is_absolute() and base is not None and not p.exists() and (base / p).exists():
            p = base / p
        if is_stac_document(s):
            for item in read_stac(s if is_remote(s) else str(p), asset=stac_asset, bands=stac_bands):
                found.append(item.href)
                if stac is not None:
                    stac.setdefault(item.href, item)
            continue
        if is_remote(s):
            found.append(s)
            continue
        if p.is_dir():
            if pattern == "*.tif":
                hits = (q for q in (p.rglob("*") if recursive else p.glob("*")) if q.suffix.lower() in SCENE_SUFFIXES)
            else:
                hits = p.rglob(pattern) if recursive else p.glob(pattern)
            found += select(hits, p)
        elif p.is_file() and p.suffix.lower() not in SCENE_SUFFIXES:
            for line in read_list_file(p):
                line = line.strip()
                if line and not line.startswith("#"):
                    q = line if is_remote(line) or os.path.isabs(line) else str(p.parent / line)
                    found.append(q)
        elif _is_glob(s):
            pat = s
            if not os.path.isabs(s) and base is not None and not globlib.glob(s, recursive=True):
                pat = str(base / s)
            found += select((Path(q) for q in globlib.glob(pat, recursive=True)), _glob_root(pat))
        else:
            found.append(str(p))  # a single file (or a missing one: reported per scene)
    if skipped:
        log.info(
            "skipped %d file(s) in folders holding geounet outputs (scene.json), e.g. %s",
            len(skipped),
            brief(skipped[0]),
        )
    # absolute paths: records name the file unambiguously, and workers (possibly on an
    # external cluster, in another working folder) open exactly that file
    found = [x if is_remote(x) else os.path.abspath(x) for x in found]
    return list(dict.fromkeys(found))  # first occurrence of each, in order


def read_list_file(path: Path) -> list[str]:
    """The lines of a list file of scenes (UTF-8 text, one path or URL per line).

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 or holds NUL bytes (an image or
            other binary file given where a folder, glob or list was expected).
    """
    fix = (
        "a list file must be UTF-8 text with one scene path per line; to segment a folder of "
        "scenes pass the folder (or a glob), and scenes must be GeoTIFFs (.tif, .tiff)"
    )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"scene list file {brief(str(path))} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"scene list file {brief(str(path))} is not UTF-8 text ({describe_decode_error(exc)}); {fix}"
        ) from None
    if "\0" in text:
        offset = text.index("\0")
        raise ConfigError(f"scene list file {brief(str(path))} is not text (a NUL byte at character {offset}); {fix}")
    return text.splitlines()


# --------------------------------------------------------------------------- run folder
@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run; fail at once if another run holds it.

    The lock is an ``flock`` on ``OUT/.geounet.lock``: the kernel drops it when the
    holding process ends, however it ends (SIGKILL, the OOM killer, a crash), so a
    dead run never blocks the next one. The file records the holder
    (pid, host, start time) for the message a second run prints.

    Raises:
        LockHeldError: another process holds the lock.
        OutputError: the folder or the lock file cannot be created (read-only, not a folder).
    """
    import fcntl

    path = out / LOCK_NAME
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
    except OutputError:
        raise
    except OSError as exc:
        raise unwritable_folder(out, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            raise LockHeldError(
                f"output folder {out} is locked by another geounet run (lock {path}"
                + (f", held by {holder}" if holder else "")
                + "); wait for it to finish or choose another --out"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def clean_partials(out: Path) -> int:
    """Remove temporary files left by interrupted runs anywhere under ``out``.

    Only called while holding the output lock, so no other run is writing them.
    """
    return remove_partials(out, recursive=True)


def remove_empty_scene_folders(outcomes: list[SceneOutcome]) -> None:
    """Remove the folders of scenes that failed or were interrupted, when nothing but
    ``.partial-*`` leftovers is in them (only called while holding the output lock)."""
    for o in outcomes:
        if o.status == "failed":
            with contextlib.suppress(OSError):
                remove_partials(o.out_dir)
                Path(o.out_dir).rmdir()  # only succeeds when empty


class _Forward(logging.Handler):
    """Passes records on to another handler."""

    def __init__(self, target: logging.Handler, level: int) -> None:
        super().__init__(level)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


@contextlib.contextmanager
def run_log(out: Path, level: int = logging.INFO) -> Iterator[None]:
    """Append this run's log records (and Dask's warnings) to OUT/geounet.log.

    GDAL's messages, as rasterio and pyogrio log them (:data:`GDAL_LOGGERS`), go to the file
    only: next to geounet's own message on the same failure they are noise on the console.
    The console keeps the verbosity the user chose: handlers already attached to the
    root logger are pinned to the previous level while the file takes ``level``. Dask's
    records reach the file through a forwarding handler that is not a StreamHandler,
    because LocalCluster lowers every StreamHandler on the ``distributed`` logger to
    WARNING for the cluster's lifetime (``silence_logs``).
    """
    stream = os.fdopen(open_no_follow(out / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a", encoding="utf-8")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("geounet")
    dask_log = logging.getLogger("distributed")
    console_level = root.getEffectiveLevel()
    file_level = min(level, console_level)
    handler.setLevel(file_level)
    pinned = [h for h in logging.getLogger().handlers if h.level == logging.NOTSET]
    for h in pinned:
        h.setLevel(console_level)
    old = root.level
    forward = _Forward(handler, logging.WARNING)
    root.addHandler(handler)
    dask_log.addHandler(forward)
    root.setLevel(file_level)
    gdal = [logging.getLogger(name) for name in GDAL_LOGGERS]
    gdal_before = [(g.level, g.propagate) for g in gdal]
    for g in gdal:  # what GDAL says through rasterio and pyogrio: the file only, not the console
        g.addHandler(handler)
        g.setLevel(file_level)
        g.propagate = False
    try:
        yield
    finally:
        for g, (lvl, propagate) in zip(gdal, gdal_before):
            g.removeHandler(handler)
            g.setLevel(lvl)
            g.propagate = propagate
        root.removeHandler(handler)
        dask_log.removeHandler(forward)
        root.setLevel(old)
        for h in pinned:
            h.setLevel(logging.NOTSET)
        handler.close()
        stream.close()


@contextlib.contextmanager
def gdal_messages(path: Path | None) -> Iterator[None]:
    """Send what GDAL prints itself to ``path`` (the run's log) instead of the console; without a
    path, drop it unless the console shows INFO (``-v``).

    GDAL prints a message (``ERROR 1: sqlite3_exec(COMMIT) failed: database or disk is full``)
    where neither rasterio nor pyogrio installed their handler to Python logging: in the thread
    that finalizes scenes, when a GeoTIFF is flushed at close or a GeoPackage committed. geounet's
    own error says the same in words the user can act on. Set for both GDAL libraries (rasterio's
    and pyogrio's own copy) through GDAL's ``CPL_LOG``; GDAL opens the file at its first such
    message and keeps it for the rest of the process (the command line runs one command per
    process). libtiff's ``_tiffWriteProc: No space left on device.`` bypasses GDAL and still
    reaches the console.
    """
    if path is None and logging.getLogger("geounet").getEffectiveLevel() <= logging.INFO:
        yield
        return
    options = {"CPL_LOG": str(path) if path is not None else os.devnull, "CPL_LOG_APPEND": "YES"}
    before = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(options)
    try:
        with rasterio.Env(**options):
            yield
    finally:
        pyogrio.set_gdal_config_options(before)


class _TaskNoise(logging.Filter):
    """Drops a worker's ``Compute Failed`` report of an error geounet raised on purpose (the scene
    is reported failed with that message; any other error keeps Dask's report and traceback) and
    its ``... ended with CancelledError`` (a task cancelled as the cluster closes: a stopped run)."""

    OWN_ERRORS = tuple(f"{n}(" for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, GeounetError))

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Compute Failed") and len(record.args or ()) >= 4:
            return not str(record.args[3]).startswith(self.OWN_ERRORS)  # type: ignore[index]
        return "CancelledError" not in record.getMessage()


class QuietTaskNoise(WorkerPlugin):
    """Keeps Dask's per-task noise (:class:`_TaskNoise`) off the console of an embedded cluster's
    workers, whose output is the user's terminal. An external cluster's workers are left alone."""

    name = "geounet-quiet-task-noise"

    def setup(self, worker: Any) -> None:
        for name in ("distributed.worker", "distributed.worker.state_machine"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _TaskNoise) for f in logger.filters):
                logger.addFilter(_TaskNoise())


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
        log.warning("received %s: submitting nothing new, cleaning up", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def claimed_output(out: Path, *, keep_log: bool = False) -> Iterator[threading.Event]:
    """Hold ``out`` for one command (``run`` and ``predict`` alike); yields the event that
    SIGTERM or the first Ctrl-C sets.

    In order: the output lock (:func:`output_lock`: a second command on the same folder exits
    at once with code 3, before it creates anything); a check that the folder takes files;
    with ``keep_log``, OUT/geounet.log (:func:`run_log`), where GDAL's own messages go too
    (:func:`gdal_messages`; without a log they are dropped); the signal handlers
    (:func:`stop_on_signals`); the removal of ``.partial-*`` leftovers of interrupted writes,
    before the command and again after it, however it ends.

    Raises:
        LockHeldError: another command holds the folder.
        OutputError: the folder cannot take files.
    """
    with output_lock(out):
        check_writable(out)  # a full disk fails here, before any cluster starts
        with (
            run_log(out) if keep_log else contextlib.nullcontext(),
            gdal_messages(out / LOG_NAME if keep_log else None),
            stop_on_signals() as stop,
        ):
            removed = clean_partials(out)
            if removed:
                log.info("removed %d temporary file(s) left by an interrupted run", removed)
            try:
                yield stop
            finally:
                n = clean_partials(out)
                if n:
                    log.warning("removed %d temporary file(s) after the run", n)


def load_workflow(path: str | Path | None, overrides: dict[str, Any]) -> WorkflowSettings:
    return load_config(WorkflowSettings, path, overrides)


# --------------------------------------------------------------------------- the run
def run_workflow(
    wf: WorkflowSettings,
    *,
    base: Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    client: Any = None,
    announce: Callable[[str], None] | None = None,
) -> tuple[list[SceneOutcome], dict[str, Any]]:
    """Run a workflow; returns the outcomes and the run record written to run.json.

    ``client``: an existing Dask client to use instead of the workflow's cluster settings.
    ``announce``: receives one-line messages for the user (the dashboard address).

    Raises:
        CheckpointError, ConfigError: bad model or settings; nothing was written.
        OutputError: the output folder cannot take files (before any computing), or
            became full during the run (the run stops; finished scenes stay intact).
        LockHeldError: another run holds the output folder.
    """
    out = resolve_out(wf.out, base)
    model = resolve_model(wf.model, base)
    read_metadata(model)  # a bad model fails before anything else
    stac: dict[str, StacScene] = {}
    scenes = discover_scenes(
        wf.scenes,
        pattern=wf.pattern,
        recursive=wf.recursive,
        base=base,
        exclude=out,
        stac=stac,
        stac_asset=wf.inference.stac_asset,
        stac_bands=wf.inference.stac_bands,
    )
    if not scenes:
        log.warning("no scenes found for %r (pattern %r): nothing to do", wf.scenes, wf.pattern)
    if dry_run:
        return _dry_run(scenes, model, out, wf, force, stac), {}
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    with claimed_output(out, keep_log=True) as stop:
        return _run_locked(wf, scenes, stac, model, out, force, progress, client, announce, stop, started, t0)


def _run_locked(
    wf: WorkflowSettings,
    scenes: list[str],
    stac: dict[str, StacScene],
    model: str,
    out: Path,
    force: bool,
    progress: bool,
    client: Any,
    announce: Callable[[str], None] | None,
    stop: threading.Event,
    started: datetime,
    t0: float,
) -> tuple[list[SceneOutcome], dict[str, Any]]:
    """The run proper, holding the output lock, logging to OUT/geounet.log, with ``stop``
    set by SIGTERM / Ctrl-C (see :func:`claimed_output`)."""
    log.info("run started: %d scene(s), model %s, output %s", len(scenes), model, out)
    outcomes: list[SceneOutcome] = []
    record: dict[str, Any] = {}
    last_write = [-math.inf]  # perf_counter of the last run.json written while running

    def write_record(status: str, error: str | None = None) -> None:
        final = status != "running"
        if not final and time.perf_counter() - last_write[0] < RUN_JSON_EVERY_S:
            return  # thousands of scenes finishing (or refused) at once: not one rewrite each
        record.clear()
        record.update(
            {
                "status": "interrupted" if final and stop.is_set() else status,
                "started": started.isoformat(timespec="seconds"),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds") if final else None,
                "wall_s": round(time.perf_counter() - t0, 3),
                "pid": os.getpid(),
                "model": model,
                "out": str(out),
                "config_hash": wf.inference.fingerprint(),
                "force": force,
                "interrupted": stop.is_set(),
                "error": error,
                "total": len(scenes),
                "counts": {s: sum(o.status == s for o in outcomes) for s in ("success", "skipped", "failed")},
                "scenes": [o.to_dict() for o in outcomes],
                "versions": library_versions(),
            }
        )
        write_json(record, out / RUN_JSON)
        last_write[0] = time.perf_counter()

    def on_outcome(o: SceneOutcome) -> None:
        outcomes.append(o)
        write_record("running")

    def on_connect(c: Any) -> None:
        if not wf.cluster.scheduler:
            c.register_plugin(QuietTaskNoise())
        link = dashboard_link(c)
        msg = f"Dask dashboard: {link}" if link else "Dask dashboard: not served by this scheduler"
        log.info("%s", msg)
        if announce is not None:
            announce(msg)

    ctx = (
        contextlib.nullcontext(client)
        if client is not None
        else dask_client(
            wf.cluster.scheduler,
            device=wf.inference.device,
            workers=wf.cluster.workers,
            threads_per_worker=wf.cluster.threads_per_worker,
            processes=wf.cluster.processes,
            lazy=True,
            on_connect=on_connect,
        )
    )
    try:
        with ctx as c:
            final = run_scenes(
                scenes,
                model,
                out,
                wf.inference,
                client=c,
                force=force,
                progress=progress,
                stop=stop,
                on_outcome=on_outcome,
                stac=stac,
            )
            if not getattr(c, "started", True):
                log.info("no scene needed computing; no Dask cluster was started")
    except Exception as exc:
        if not stopped_by_signal(exc, stop):
            with contextlib.suppress(Exception):
                write_record("stopped", error=f"{type(exc).__name__}: {exc}")
            raise
        final = list(outcomes)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            write_record("stopped", error=f"{type(exc).__name__}: {exc}")
        raise
    outcomes[:] = final
    remove_empty_scene_folders(final)
    write_record("finished")
    log.info("run %s: %s", record["status"], record["counts"])
    return final, record


def stopped_by_signal(exc: Exception, stop: threading.Event) -> bool:
    """True when ``exc``, which ended a command, is part of an interruption: the signal also
    reached the worker processes (a terminal's Ctrl-C, systemd's stop), so what failed after
    it is no error of its own. A geounet error is always reported. Logs the case."""
    if not stop.is_set() or isinstance(exc, GeounetError):
        return False
    log.warning("stopped by a signal (%s: %s)", type(exc).__name__, exc)
    return True


def predict_scenes(
    scenes: list[str],
    model: str,
    out: Path,
    settings: InferenceSettings,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[list[SceneOutcome], bool]:
    """``geounet predict``: segment ``scenes`` into ``out`` holding the folder as ``run``
    does (:func:`claimed_output`: the lock, signals, ``.partial-*`` leftovers), on a Dask
    cluster started only if some scene needs work. Returns the outcomes and whether SIGTERM or
    Ctrl-C stopped it (unfinished scenes are then failed and removed).

    Raises:
        CheckpointError: a bad model, before the folder is locked or created (the full check
            of the weights follows inside, before any scene starts).
        LockHeldError: another ``run`` or ``predict`` holds ``out``.
        OutputError: ``out`` cannot take files.
    """
    read_metadata(model)  # a bad model fails before anything else
    stac: dict[str, StacScene] = {}
    scenes = expand_stac(scenes, settings, stac)
    outcomes: list[SceneOutcome] = []
    with claimed_output(out) as stop:
        try:
            # lazy: the cluster starts on first use, after run_scenes has checked the model in
            # full, so a bad or unsafe checkpoint exits 2 without starting any worker
            with dask_client(
                scheduler,
                device=settings.device,
                workers=workers,
                lazy=True,
                on_connect=None if scheduler else lambda c: c.register_plugin(QuietTaskNoise()),
            ) as client:
                final = run_scenes(
                    scenes,
                    model,
                    out,
                    settings,
                    client=client,
                    force=force,
                    progress=progress,
                    stop=stop,
                    on_outcome=outcomes.append,
                    stac=stac,
                )
        except Exception as exc:
            if not stopped_by_signal(exc, stop):
                raise
            final = list(outcomes)
        remove_empty_scene_folders(final)
        return final, stop.is_set()


def expand_stac(scenes: Sequence[str], settings: InferenceSettings, stac: dict[str, StacScene]) -> list[str]:
    """``scenes`` with each STAC document replaced by its items' scenes (recorded in ``stac``);
    other paths and URLs stay as they are. Raises ConfigError for an unreadable document."""
    out: list[str] = []
    for s in scenes:
        if not is_stac_document(s):
            out.append(s)
            continue
        for item in read_stac(s, asset=settings.stac_asset, bands=settings.stac_bands):
            out.append(item.href)
            stac.setdefault(item.href, item)
    return list(dict.fromkeys(out))


def _dry_run(
    scenes: list[str], model: str, out: Path, wf: WorkflowSettings, force: bool, stac: dict[str, StacScene]
) -> list[SceneOutcome]:
    """What a run would do, per scene: run, skip (complete) or refuse. Reads headers only."""
    meta = read_metadata(model)
    res = []
    names = [stac[p].item_id if p in stac else None for p in scenes]
    for path, stem in zip(scenes, unique_stems(scenes, reserved=RUN_FILES, names=names)):
        item = stac.get(path)
        try:
            if item is not None and item.error:
                raise SceneError(path, item.error)
            info = open_scene(
                path,
                in_channels=meta.spec.in_channels,
                bands=scene_bands(wf.inference, meta, item),
                max_pixels=wf.inference.max_pixels,
                use_nodata=wf.inference.use_nodata,
                stem=stem,
            )
            scene_grid(info, meta, wf.inference)  # a resampled grid over the pixel budget is refused
            done = not force and why_recompute(out / stem, info, meta, wf.inference) is None
            res.append(
                SceneOutcome(
                    scene=path,
                    stem=stem,
                    status="skipped" if done else "success",
                    out_dir=str(out / stem),
                    pixels=info.pixels,
                )
            )
        except SceneError as exc:
            res.append(SceneOutcome(scene=path, stem=stem, status="failed", out_dir=str(out / stem), error=str(exc)))
    return res
