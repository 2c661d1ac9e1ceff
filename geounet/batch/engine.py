"""The Dask distributed engine: an embedded LocalCluster sized to the machine, or an
existing scheduler given by address.

Sizing (embedded cluster, :func:`plan_cluster`):

* one worker process per visible GPU, each with ``resources={"GPU": 1}`` and that GPU pinned
  through ``CUDA_VISIBLE_DEVICES``;
* otherwise CPU workers, with torch's intra-op threads set explicitly so that
  ``workers x threads_per_worker x torch_threads <= cores``: parallelism comes from
  task threads (reading, polygonizing and the forward pass overlap), not from torch
  threads competing with them.

The cluster starts lazily (:class:`LazyClient`): a run whose scenes are all complete or
refused never starts one. Nothing assumes the workers share the client's memory: tasks
receive their inputs as arguments and the checkpoint is scattered once per run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster, Nanny, SpecCluster, Worker, WorkerPlugin
from rasterio.env import set_gdal_config

from geounet.errors import ConfigError
from geounet.heap import limit_arenas, tune_malloc
from geounet.scene.read import WORKER_GDAL_CACHE_BYTES

log = logging.getLogger(__name__)

# CPU task threads per worker process when the number of workers is not given. Parts of a
# block task hold the GIL (building polygon objects, Python glue), so one process with many
# threads is expected to stop scaling; a few threads per process keep that contention low
# while the model is still loaded once per process, not once per thread. (A design choice:
# not yet measured on a machine with more than 2 cores.)
THREADS_PER_CPU_WORKER = 4

# Embedded cluster: a task whose worker dies is retried on another worker this many times
# before its scene is reported failed ("a worker died ...").
ALLOWED_FAILURES = 2

# Dask's periodic housekeeping in an embedded cluster, slowed where Dask's defaults poll
# faster than a batch of long tasks needs. Each costs CPU on the cores the model runs on: an
# idle 1 x 2-thread cluster used 0.8 CPU-s per 20 s with Dask's defaults and 0.4 with these
# (benchmarks/RESULTS.md, "Dask's housekeeping"). A value the user configured (YAML file or
# DASK_* environment variable) is left alone.
QUIET_DASK = {
    # the workers' statistical profiler (the dashboard's Profile page) samples every thread's
    # stack, holding the GIL; milliseconds between samples (Dask's default: 10 ms)
    "distributed.worker.profile.interval": "50ms",
    # event-loop responsiveness check; milliseconds between ticks (default 20 ms)
    "distributed.admin.tick.interval": "200ms",
    # workers' memory check (pause, spill, restart thresholds); milliseconds (default 100 ms)
    "distributed.worker.memory.monitor-interval": "500ms",
    # the dashboard's CPU/memory/network graphs; seconds between samples (default 0.5 s)
    "distributed.admin.system-monitor.interval": "2s",
}


# glibc malloc environment of embedded worker processes, set before they start (mallopt later,
# as heap.tune_malloc does, cannot move threads that already have an arena). One arena and no
# mmap for large blocks: every thread's activation tensors come from one heap and are reused
# by the next forward pass instead of being mapped, faulted in and zeroed afresh each time
# (activations above 32 MiB -- glibc's largest mmap threshold -- always were). Forward passes
# alone, 2 threads x 1 torch thread, bf16, 1008^2 px tiles, on this project's machine:
# 0.36 -> 0.29 s per tile (width 16), 0.166 -> 0.145 s (width 8), 2.67 -> 2.40 s (width 64);
# kernel time 1.5 -> 0.15 CPU-s per 24 width-16 tiles (benchmarks/RESULTS.md).
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": 1, "MALLOC_MMAP_MAX_": 0}


def quiet_dask_config() -> dict[str, Any]:
    """The :data:`QUIET_DASK` settings whose current value is still Dask's own default."""
    defaults = dask.config.merge(*dask.config.defaults)
    return {
        k: v for k, v in QUIET_DASK.items() if dask.config.get(k, None) == dask.config.get(k, None, config=defaults)
    }


class WorkerSetup(WorkerPlugin):
    """Prepares every worker before its first task: torch's intra-op threads, GDAL's block
    cache, and glibc malloc's thresholds (:func:`tune_malloc`)."""

    name = "geounet-worker-setup"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Worker) -> None:
        import torch

        torch.set_num_threads(self.threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        if "GDAL_CACHEMAX" not in os.environ:  # an explicit environment variable wins
            set_gdal_config("GDAL_CACHEMAX", WORKER_GDAL_CACHE_BYTES)
        if not tune_malloc():
            log.debug("mallopt unavailable; worker keeps the C library's malloc settings")


class IgnoreSigint(WorkerPlugin):
    """Embedded worker processes ignore SIGINT; the client alone handles Ctrl-C.

    A terminal sends Ctrl-C to its whole process group, the embedded cluster's worker
    processes included. Left alone, each would die of it and turn an orderly stop (the
    client stops submitting and cleans up) into crashed tasks and restarted workers.
    Plugins are applied again to restarted workers. Workers running as threads of the
    client process are left alone (``signal.signal`` only works in a main thread).
    """

    name = "geounet-ignore-sigint"

    def __init__(self) -> None:
        self.client_pid = os.getpid()

    def setup(self, worker: Worker) -> None:
        import threading

        if os.getpid() != self.client_pid and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


HEARTBEAT_LOST = "Failed to communicate with scheduler during heartbeat"


class DropHeartbeatLoss(logging.Filter):
    """Drops Dask's ``Failed to communicate with scheduler during heartbeat`` record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(HEARTBEAT_LOST)


class QuietTeardown(WorkerPlugin):
    """Embedded worker processes do not log the heartbeat their closing scheduler misses.

    The embedded scheduler lives in the client process and goes away only when the client
    closes the cluster (or the client process ends, and the nanny ends its worker). A worker
    whose heartbeat is in flight at that moment logs "Failed to communicate with scheduler
    during heartbeat" with two tracebacks (seen under load after SIGTERM): noise on an orderly
    stop, and the worker retries at the next heartbeat anyway. Only that record is dropped, only
    in embedded worker processes; an external cluster's workers keep every message.
    """

    name = "geounet-quiet-teardown"

    def __init__(self) -> None:
        self.client_pid = os.getpid()

    def setup(self, worker: Worker) -> None:
        if os.getpid() != self.client_pid:
            logger = logging.getLogger("distributed.worker")
            if not any(isinstance(f, DropHeartbeatLoss) for f in logger.filters):
                logger.addFilter(DropHeartbeatLoss())


@dataclass(frozen=True)
class ClusterShape:
    """How an embedded cluster is laid out."""

    workers: int
    threads_per_worker: int
    torch_threads: int
    gpus: int

    def describe(self) -> str:
        kind = f"{self.gpus} GPU worker(s)" if self.gpus else f"{self.workers} CPU worker(s)"
        return f"{kind}, {self.threads_per_worker} thread(s) each, torch threads {self.torch_threads}"


def available_cores() -> int:
    """Cores this process may use (respects CPU affinity / cgroup-limited sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def plan_cluster(
    device: str = "auto",
    workers: int | None = None,
    cores: int | None = None,
    gpus: int | None = None,
    *,
    threads_per_worker: int | None = None,
) -> ClusterShape:
    """Pure sizing rule for the embedded cluster (see the module docstring).

    CPU: ``workers`` defaults to one process per :data:`THREADS_PER_CPU_WORKER` cores;
    task threads default to ``cores // workers``; torch gets the cores left over, at
    least 1. Requests that would oversubscribe the cores (more workers than cores, or
    more threads than a worker's share) are reduced, with a warning, so that
    ``workers x threads_per_worker x torch_threads <= cores`` always holds.

    GPU: one worker per GPU (at most ``workers``), ``max(2, cores // gpus)`` task threads
    each so reading and polygonizing overlap the GPU's work, torch threads 1.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    cores = cores or available_cores()
    if gpus is None:
        gpus = 0
        if device in ("auto", "cuda"):
            import torch

            gpus = torch.cuda.device_count()
    if device == "cpu":
        gpus = 0
    if gpus:
        n = min(workers or gpus, gpus)
        threads = threads_per_worker or max(2, cores // n)
        return ClusterShape(workers=n, threads_per_worker=threads, torch_threads=1, gpus=n)
    n = workers or max(1, cores // THREADS_PER_CPU_WORKER)
    if n > cores:
        log.warning("%d CPU workers requested but only %d core(s) are available; using %d", n, cores, cores)
        n = cores
    share = cores // n
    threads = threads_per_worker or share
    if threads > share:
        log.warning(
            "%d threads per worker x %d worker(s) exceed %d core(s); using %d thread(s) per worker",
            threads,
            n,
            cores,
            share,
        )
        threads = share
    torch_threads = max(1, cores // (n * threads))
    return ClusterShape(workers=n, threads_per_worker=threads, torch_threads=torch_threads, gpus=0)


def dashboard_link(client: Client, *, timeout_s: float = 2.0) -> str | None:
    """The dashboard's address as the scheduler reports it, or None when it serves none.

    A scheduler started with ``--no-dashboard`` still lists its HTTP service (health and
    metrics) under the dashboard's name, so the address is only returned once its status
    page answers (one HTTP request of at most ``timeout_s`` seconds)."""
    info = client.scheduler_info()
    if "dashboard" not in (info.get("services") or {}):
        return None
    link = client.dashboard_link
    try:
        with urllib.request.urlopen(link, timeout=timeout_s) as response:
            return link if response.status == 200 else None
    except (OSError, ValueError):  # refused, 404 (HTTPError is an OSError), timeout, bad URL
        return None


class LazyClient:
    """Stands in for a :class:`distributed.Client` and connects on first use.

    Any attribute access (``submit``, ``scatter``, ``run`` ...) starts the cluster or
    connects to the scheduler, then forwards to the real client. ``on_connect`` is called
    once with the real client (to log the dashboard address, for instance).
    """

    def __init__(self, connect: Callable[[], Client], on_connect: Callable[[Client], None] | None = None) -> None:
        self._connect = connect
        self._on_connect = on_connect
        self._client: Client | None = None

    @property
    def started(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._connect()
            if self._on_connect is not None:
                self._on_connect(self._client)
        return self._client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # probes for private or special attributes start nothing
            raise AttributeError(name)
        return getattr(self.client, name)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    device: str = "auto",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    dashboard: bool = True,
    lazy: bool = False,
    on_connect: Callable[[Client], None] | None = None,
) -> Iterator[Client]:
    """A connected client: to ``scheduler`` if given, else to a fresh embedded cluster.

    With ``lazy=True`` a :class:`LazyClient` is yielded and nothing starts until it is
    used. The embedded cluster is closed on exit; an external cluster is left running.
    """
    stack = contextlib.ExitStack()

    def connect() -> Client:
        if scheduler:
            return stack.enter_context(_external(scheduler))
        return stack.enter_context(_embedded(device, workers, threads_per_worker, processes, dashboard))

    with stack:
        if lazy:
            yield LazyClient(connect, on_connect)  # type: ignore[misc]
        else:
            client = connect()
            if on_connect is not None:
                on_connect(client)
            yield client


@contextlib.contextmanager
def _external(scheduler: str) -> Iterator[Client]:
    limit_arenas()  # this process runs no model: its threads can share one malloc arena
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        n = len(client.scheduler_info().get("workers", {}))
        log.info("connected to Dask scheduler %s with %d worker(s)", scheduler, n)
        if not n:
            log.warning("the Dask scheduler at %s has no workers yet; tasks wait until one joins", scheduler)
        client.register_plugin(WorkerSetup(1))
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _embedded(
    device: str, workers: int | None, threads_per_worker: int | None, processes: bool, dashboard: bool
) -> Iterator[Client]:
    shape = plan_cluster(device, workers, threads_per_worker=threads_per_worker)
    log.info("starting embedded Dask cluster: %s", shape.describe())
    if processes:  # the model runs in the worker processes, not here
        limit_arenas()
    # the scheduler's HTTP server (health, metrics, and the dashboard when wanted) always
    # takes a free port: the default, 8787, is often held by another cluster or run
    dash = ":0"
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC_ENV}
    with dask.config.set(
        {
            **quiet_dask_config(),
            "distributed.nanny.pre-spawn-environ": environ,
            "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
            "distributed.worker.daemon": False,
            "distributed.admin.tick.limit": "30s",
        }
    ):
        if shape.gpus:
            specs = {
                f"gpu-{i}": {
                    "cls": Nanny,
                    "options": {
                        "nthreads": shape.threads_per_worker,
                        "resources": {"GPU": 1},
                        "env": {"CUDA_VISIBLE_DEVICES": str(i)},
                    },
                }
                for i in range(shape.gpus)
            }
            cluster = SpecCluster(
                workers=specs,
                scheduler={"cls": _scheduler_cls(), "options": {"dashboard_address": dash, "dashboard": dashboard}},
                silence_logs=logging.WARNING,
            )
        else:
            cluster = LocalCluster(
                n_workers=shape.workers,
                threads_per_worker=shape.threads_per_worker,
                processes=processes,
                dashboard_address=dash,
                silence_logs=logging.WARNING,
                scheduler_kwargs={"dashboard": dashboard},
            )
    try:
        client = Client(cluster)
        try:
            client.register_plugin(WorkerSetup(shape.torch_threads))
            client.register_plugin(IgnoreSigint())
            if processes:
                client.register_plugin(QuietTeardown())
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _scheduler_cls() -> type:
    from distributed import Scheduler

    return Scheduler
