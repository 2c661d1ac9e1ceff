"""glibc heap settings: reuse of freed memory on workers, returning it on the client and
sharing one arena among the client's threads.

Both are no-ops (returning False) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # find_library runs `ldconfig -p` in a subprocess: look it up once per process, not per trim
    name = ctypes.util.find_library("c")
    if not name:  # pragma: no cover - no C library found
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:  # pragma: no cover
        return None


# mallopt parameters, from <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def _mallopt(param: int, value: int) -> bool:
    """glibc ``mallopt(param, value)``; False where the C library has no ``mallopt``."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # pragma: no cover - musl, macOS
        return False
    return bool(mallopt(param, value))


# glibc malloc on workers (see :func:`tune_malloc`): allocations up to this size come from
# the heap and are reused, and up to this much free heap is kept before it is returned to
# the OS. Bytes. 32 MiB is glibc's largest allowed mmap threshold; one 1024^2 px tile's
# activations (width 8-16, bf16) are 16-32 MiB each.
MALLOC_MMAP_THRESHOLD_BYTES = 32 * 2**20
MALLOC_TRIM_THRESHOLD_BYTES = 256 * 2**20


def tune_malloc() -> bool:
    """Let this process reuse freed memory for the model's activations (glibc only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes
    glibc's mmap threshold at 128 KiB: every activation tensor of every forward pass is then
    a fresh ``mmap`` whose pages are faulted in and zeroed by the kernel, and handed back on
    free. Measured on this project's 2-core machine (UNet width 8, 36 tiles of 1024^2 px,
    bf16): 13.3-14.1 s of forward time and 14.5 s of kernel time with Dask's setting,
    7.5-7.8 s and 2.5 s with this one. Memory stays bounded by one task's activations plus
    ``MALLOC_TRIM_THRESHOLD_BYTES``. The embedded cluster's workers also start with one arena
    and no mmap for large blocks (``engine.WORKER_MALLOC_ENV``, from their environment: glibc
    reads those settings when a process starts). Returns False where ``mallopt`` is unavailable.
    """
    return _mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) and _mallopt(
        _M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES
    )


# Free heap kept per widest activation of a forward pass (see :func:`keep_free`): two worker
# threads, each with about three such tensors alive at its peak.
ACTIVATIONS_KEPT = 6

_kept = MALLOC_TRIM_THRESHOLD_BYTES


def keep_free(nbytes: int) -> bool:
    """Keep at least ``nbytes`` of freed heap for reuse instead of returning it to the OS
    (raises glibc's trim threshold; never lowers it). False where nothing changed.

    :func:`tune_malloc`'s threshold suits models whose activations are tens of MB; a UNet of
    the paper's width has 130-260 MB tensors on a 1008^2 px tile in bf16, so the heap's free
    top passed the threshold after every forward pass, was handed back, and was faulted in
    again by the next one: 1.0-1.3 M page faults and 3.5-5.6 s of kernel time per 4096^2 px
    scene on this project's 2-core machine, 0.6-0.7 M and 2-3 s with 1.5 GB kept. Memory
    stays bounded by the workers' peak; it is given back at the end of each run
    (``infer.tasks.release_worker``).
    """
    global _kept
    if nbytes <= _kept:
        return False
    value = min(int(nbytes), 2**31 - 1)  # mallopt takes an int
    if not _mallopt(_M_TRIM_THRESHOLD, value):
        return False
    _kept = value
    return True


def activation_bytes(width: int, tile_shape: tuple[int, int], itemsize: int) -> int:
    """Bytes of the widest full-resolution tensor of a UNet-family forward pass on one tile:
    the first decoder step's concatenation, ``2 * width`` channels."""
    return 2 * int(width) * int(tile_shape[0]) * int(tile_shape[1]) * int(itemsize)


# glibc malloc arenas of a client process (see :func:`limit_arenas`).
CLIENT_MALLOC_ARENAS = 1


def limit_arenas(count: int = CLIENT_MALLOC_ARENAS) -> bool:
    """Share at most ``count`` malloc arenas among this process's threads (glibc only).

    For the client process of a cluster whose workers are other processes: it runs Dask's
    event loop, the finalization thread and the COG writer, and with one arena per thread
    each kept its own freed-but-resident pages. Client peak for a 12000^2 px scene on this
    project's machine: about 70-100 MB lower with one arena. Not for processes that run the
    model (its threads would contend for one arena's lock). Affects threads started after
    the call. Returns False where ``mallopt`` is unavailable.
    """
    return _mallopt(_M_ARENA_MAX, int(count))


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); False elsewhere.

    Used by the client between a scene's finalization steps: each step's temporaries (the
    GeoJSON text of 30 k polygons, a road network's 1.5 M vertices) are freed but stayed
    resident, so the steps' peaks added up: 867 -> 1239 MB over the writers of a 12000^2 px
    scene; trimmed, the resident size returns to what is live (about 275 MB for the layers).
    """
    trim = getattr(_libc(), "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False
