"""The worker heap setting removes the page faults Dask's malloc setting causes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from geounet.heap import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
np.ones(2_000_000)  # warm up numpy itself
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.ones(2_000_000)  # 16 MB, like one tile's activations; freed each time
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(probe: str, mode: str, env: dict[str, str]) -> int:
    """Page faults the probe script reports, run in a fresh process with ``env``."""
    out = subprocess.run([sys.executable, "-c", probe, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tuned_worker_heap_reuses_memory_instead_of_faulting_it_in() -> None:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # what Dask's nanny sets
    dask_default, tuned = _faults(PROBE, "plain", env), _faults(PROBE, "tuned", env)
    # plain: every 16 MB array is a fresh mmap whose pages fault in again (measured 6600
    # faults for 20 arrays here, numpy's huge-page advice included); tuned: reused, ~0
    assert dask_default > 20 * 100, dask_default
    assert tuned < dask_default / 10, (tuned, dask_default)


def test_trim_heap_reports_success_on_glibc() -> None:
    from geounet.heap import trim_heap

    assert trim_heap() is sys.platform.startswith("linux")


ARENAS = """
import ctypes, sys, threading
import numpy as np
from geounet.heap import _libc, limit_arenas
if sys.argv[1] == "limited":
    assert limit_arenas(1)
held = []
def work():
    held.append([np.ones(4_000) for _ in range(200)])  # 32 kB each: from an arena, not mmap
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
_libc().malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_client_threads_share_one_malloc_arena() -> None:
    def arenas(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True)
        return out.stderr.count("Arena ")

    # 4 threads allocating at once get arenas of their own (2 cores: up to 16 arenas)
    assert arenas("plain") >= 2
    assert arenas("limited") == 1


def _worker_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _trim_and_measure() -> float:
    from geounet.heap import trim_heap

    trim_heap()
    return _worker_rss_mb()


@pytest.mark.soak
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.timeout(240)
def test_a_run_gives_the_workers_freed_heap_back(tmp_path) -> None:
    """Workers keep freed activations for reuse during a run; a long-lived worker must not
    hold them once the run has ended: after the run there is next to nothing left to trim.
    (Measured without the end-of-run trim: 712 MB after this run, 497 MB after a trim.)"""
    from distributed import Client, LocalCluster

    from geounet.batch.engine import WorkerSetup
    from geounet.batch.run import run_scenes
    from geounet.settings import InferenceSettings
    from geounet.weights import synthetic_weights
    from tests.conftest import smooth_image, write_tif

    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 2048, 2048), seed=1))
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(WorkerSetup(1))  # the workers' malloc settings: keep freed heap
        res = run_scenes(
            [str(scene)], synthetic_weights(), tmp_path / "out", InferenceSettings(), client=client, progress=False
        )
        assert res[0].status == "success", res[0].error
        after_run = list(client.run(_worker_rss_mb).values())[0]
        after_trim = list(client.run(_trim_and_measure).values())[0]
    assert after_run - after_trim < 60, (after_run, after_trim)


WIDE_PROBE = """
import resource, sys
import numpy as np
from geounet.heap import keep_free, tune_malloc
assert tune_malloc()
if sys.argv[1] == "kept":
    assert keep_free(1 << 30)
    assert not keep_free(1 << 29)  # never lowered
n = 300 * 2**20 // 8  # 300 MB: a paper-width UNet's activations on one tile are 130-260 MB
np.ones(n)  # the heap reaches its peak once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    a = np.ones(n)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_wide_activations_are_kept_for_reuse() -> None:
    """Above the worker heap's trim threshold freed memory went back to the OS after every
    forward pass and was faulted in again; keep_free (raised per model by process_block)
    keeps it. Run with the embedded workers' malloc environment (one arena, no mmap)."""
    from geounet.batch.engine import WORKER_MALLOC_ENV
    from geounet.heap import ACTIVATIONS_KEPT, MALLOC_TRIM_THRESHOLD_BYTES, activation_bytes

    # numpy's own huge-page advice off: torch's tensors take none, and 4 KiB faults count bytes
    env = {**os.environ, **{k: str(v) for k, v in WORKER_MALLOC_ENV.items()}, "NUMPY_MADVISE_HUGEPAGE": "0"}
    trimmed, kept = _faults(WIDE_PROBE, "tuned", env), _faults(WIDE_PROBE, "kept", env)
    # trimmed: each 300 MB array faults most of its 76,800 pages in again; kept: ~0
    assert trimmed > 5 * 20_000, trimmed
    assert kept < trimmed / 10, (kept, trimmed)
    # what process_block asks for: the paper-width UNet on a 1008^2 bf16 tile is well above
    # the default threshold, the shipped width-8 model below it
    assert ACTIVATIONS_KEPT * activation_bytes(64, (1008, 1008), 2) > 1.5e9
    assert ACTIVATIONS_KEPT * activation_bytes(8, (1008, 1008), 2) < MALLOC_TRIM_THRESHOLD_BYTES
