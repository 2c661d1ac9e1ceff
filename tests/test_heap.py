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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tuned_worker_heap_reuses_memory_instead_of_faulting_it_in() -> None:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # what Dask's nanny sets

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True,
                             check=True)
        return int(out.stdout.strip())

    dask_default, tuned = faults("plain"), faults("tuned")
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
