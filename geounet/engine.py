"""The Dask distributed engine: an embedded LocalCluster sized to the machine, or an
existing scheduler given by address.

Sizing (embedded cluster):

* one worker process per visible GPU, each with ``resources={"GPU": 1}`` and that GPU pinned
  through ``CUDA_VISIBLE_DEVICES``;
* otherwise CPU workers whose torch threads are set so that
  ``workers x threads_per_worker x torch_threads <= cores``.

Nothing assumes the workers share the client's memory: tasks receive their inputs as
arguments and the checkpoint is scattered once per run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import dask
from distributed import Client, LocalCluster, Nanny, SpecCluster, Worker, WorkerPlugin

from geounet.errors import ConfigError

log = logging.getLogger(__name__)


class TorchThreads(WorkerPlugin):
    """Sets torch's intra-op threads on every worker (before any task runs)."""

    name = "geounet-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Worker) -> None:  # noqa: D401
        import torch

        torch.set_num_threads(self.threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)


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


def plan_cluster(device: str = "auto", workers: int | None = None, cores: int | None = None,
                 gpus: int | None = None) -> ClusterShape:
    """Pure sizing rule for the embedded cluster (see module docstring)."""
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
        threads = max(2, cores // n)  # reading/polygonizing threads beside the GPU stream
        return ClusterShape(workers=n, threads_per_worker=threads, torch_threads=1, gpus=n)
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    n = workers or 1
    threads = max(1, cores // n)
    return ClusterShape(workers=n, threads_per_worker=threads, torch_threads=1, gpus=0)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    device: str = "auto",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool = True,
    dashboard: bool = True,
) -> Iterator[Client]:
    """A connected client: to ``scheduler`` if given, else to a fresh embedded cluster.

    The embedded cluster is closed on exit; an external cluster is left running.
    """
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        try:
            client.register_plugin(TorchThreads(1))
            yield client
        finally:
            client.close()
        return
    shape = plan_cluster(device, workers)
    if threads_per_worker:
        shape = ClusterShape(shape.workers, threads_per_worker, shape.torch_threads, shape.gpus)
    log.info("starting embedded Dask cluster: %s", shape.describe())
    dash = ":0" if dashboard else None
    with dask.config.set({"distributed.scheduler.allowed-failures": 2,
                          "distributed.worker.daemon": False,
                          "distributed.admin.tick.limit": "30s"}):
        if shape.gpus:
            specs = {
                f"gpu-{i}": {
                    "cls": Nanny,
                    "options": {"nthreads": shape.threads_per_worker, "resources": {"GPU": 1},
                                "env": {"CUDA_VISIBLE_DEVICES": str(i)}},
                }
                for i in range(shape.gpus)
            }
            cluster = SpecCluster(workers=specs, scheduler={"cls": _scheduler_cls(),
                                  "options": {"dashboard_address": dash}}, silence_logs=logging.WARNING)
        else:
            cluster = LocalCluster(
                n_workers=shape.workers, threads_per_worker=shape.threads_per_worker,
                processes=processes, dashboard_address=dash, silence_logs=logging.WARNING,
            )
        client = Client(cluster)
        try:
            client.register_plugin(TorchThreads(shape.torch_threads))
            yield client
        finally:
            client.close()
            cluster.close()


def _scheduler_cls() -> type:
    from distributed import Scheduler

    return Scheduler
