"""Read a window of a scene with its validity mask, and prepare it for the model.

The one read-and-normalize path of geounet: inference (:mod:`geounet.infer.block`) and
training (:mod:`geounet.train.data`) both read through :func:`read_window` and prepare
through :func:`prepare_input`, so a change to nodata handling or normalization reaches both.
Each thread keeps its own dataset handles (GDAL handles are not thread-safe), opened with
the driver allowlist, at most :data:`MAX_HANDLES` per thread.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geounet.errors import SceneReadError
from geounet.scene.normalize import apply_normalization
from geounet.scene.source import SCENE_DRIVER, SceneInfo

# Open dataset handles per worker thread: {thread id: {path: dataset}}, most recent last.
_HANDLES: dict[int, dict[str, Any]] = {}
_HANDLES_LOCK = threading.Lock()
_LIMIT = threading.local()  # per-thread raised handle limit (keep_handles)
MAX_HANDLES = 4  # open dataset handles kept per worker thread

# GDAL settings for reads: never list directories on open. (The block cache, process-wide,
# is sized once per worker process by geounet.batch.engine.WorkerSetup: WORKER_GDAL_CACHE_BYTES.)
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
# Bytes of GDAL block cache per worker process: enough for the overlapping halo reads of
# neighbouring blocks (one block row of halo is ~10 MB; a tiny cache was measured to slow reads ~3x).
WORKER_GDAL_CACHE_BYTES = 64 * 2**20
# Largest float32: float pixels beyond it (float64 scenes) would become +-inf in the model's input.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _dataset(path: str, drivers: tuple[str, ...] = (SCENE_DRIVER,)) -> rasterio.io.DatasetReader:
    """This thread's open handle for ``path`` (reopened if it was closed).

    Each thread has its own handles (GDAL handles are not thread-safe). At most
    :data:`MAX_HANDLES` stay open per thread (least recently used closed first): a batch of
    thousands of scenes must not exhaust file descriptors, while the few scenes in flight keep
    their handles (reopening per window reads ~3x slower).
    """
    tid = threading.get_ident()
    with _HANDLES_LOCK:
        handles = _HANDLES.setdefault(tid, {})
    ds = handles.pop(path, None)
    if ds is None or ds.closed:
        with rasterio.Env(**GDAL_ENV):
            ds = open_with(path, drivers)
    handles[path] = ds  # most recently used last
    while len(handles) > max(MAX_HANDLES, getattr(_LIMIT, "handles", 0)):
        _close(handles.pop(next(iter(handles))))
    return ds


def open_with(path: str, drivers: tuple[str, ...] = (SCENE_DRIVER,)) -> rasterio.io.DatasetReader:
    """Open ``path`` for reading with the first of the allowed GDAL ``drivers`` that takes it
    (never GDAL's whole driver list: a VRT named .tif could read any file).

    Raises:
        RasterioError: no allowed driver opens the file (the last driver's error).
    """
    error: RasterioError | None = None
    for driver in drivers:
        try:
            with warnings.catch_warnings():  # training images without georeferencing are placed by the caller
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                return rasterio.open(path, driver=driver)
        except RasterioError as exc:
            error = exc
    assert error is not None, "drivers must not be empty"
    raise error


def keep_handles(n: int) -> None:
    """Let this thread keep up to ``n`` dataset handles open (at least :data:`MAX_HANDLES`):
    training draws its windows from every scene of a run in turn, so it keeps one handle per
    scene instead of reopening files (and losing GDAL's cached blocks) window after window."""
    _LIMIT.handles = n


def _close(ds: Any) -> None:
    try:
        ds.close()
    except Exception:
        pass


def close_datasets(all_threads: bool = False) -> int:
    """Close this thread's dataset handles (after a read failed), or every thread's
    (``all_threads``: only when no task is running, e.g. at the end of a run).
    Returns how many were closed."""
    with _HANDLES_LOCK:
        tids = list(_HANDLES) if all_threads else [threading.get_ident()]
        groups = [_HANDLES.pop(t, {}) for t in tids]
    n = 0
    for handles in groups:
        for ds in handles.values():
            _close(ds)
            n += 1
    return n


def gdal_reason(exc: BaseException) -> str:
    """The useful part of a rasterio error: rasterio says "Read failed. See previous exception
    for details." and chains GDAL's messages beneath it, the most specific one (e.g.
    "got 100 bytes, expected 12299") last. Returns the first and the last of them."""
    msgs: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(msgs) < 10:
        text = str(e).strip()
        if text and "See previous exception" not in text and text not in msgs:
            msgs.append(text)
        e = e.__cause__ or e.__context__
    if not msgs:
        return type(exc).__name__
    return msgs[0] if len(msgs) == 1 else f"{msgs[0]} ({msgs[-1]})"


def _inside(start: float, length: float, out: int, size: int) -> tuple[int, int]:
    """Output pixels ``[o0, o1)`` of a resampled read whose source span lies inside ``[0, size)``.

    Output pixel ``o`` covers source ``start + o * step .. start + (o + 1) * step`` with
    ``step = length / out``.
    """
    step = length / out
    o0 = 0 if start >= 0 else math.ceil(-start / step - 1e-9)
    o1 = min(out, math.floor((size - start) / step + 1e-9))
    return min(o0, out), max(min(o1, out), min(o0, out))


def read_window(
    scene: SceneInfo,
    window: Window,
    out_shape: tuple[int, int] | None = None,
    resampling: Resampling = Resampling.bilinear,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels (bands, h, w) of ``window`` and a validity mask (h, w).

    The window may extend beyond the scene: outside pixels are 0 and invalid. Only the
    part inside the scene is read from the file (no VRT, no full-scene array).

    With ``out_shape`` ``(h, w)`` the window (whose offsets and size may then be fractional)
    is resampled to that many pixels by GDAL (``resampling`` for the pixels, nearest for the
    validity mask): how a scene is brought to a model's pixel size, and how training zooms.
    Output pixels whose footprint leaves the scene are invalid, and so are float pixels that
    are not a finite float32 number in some band (NaN, +-inf, float64 beyond float32's range:
    :func:`representable`).
    """
    if out_shape is None:
        h, w = int(window.height), int(window.width)
        r0f, c0f = float(window.row_off), float(window.col_off)
        o_r, o_c = (0, h), (0, w)
    else:
        h, w = int(out_shape[0]), int(out_shape[1])
        r0f, c0f = float(window.row_off), float(window.col_off)
        o_r = _inside(r0f, float(window.height), h, scene.height)
        o_c = _inside(c0f, float(window.width), w, scene.width)
    data = np.zeros((len(scene.bands), h, w), dtype=scene.dtype)
    valid = np.zeros((h, w), dtype=bool)
    if out_shape is None:
        r0, c0 = int(r0f), int(c0f)
        ir0, ic0 = max(r0, 0), max(c0, 0)
        ir1, ic1 = min(r0 + h, scene.height), min(c0 + w, scene.width)
        if ir1 <= ir0 or ic1 <= ic0:
            return data, valid
        inner = Window(ic0, ir0, ic1 - ic0, ir1 - ir0)
        sl = (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))
        shape: tuple[int, int] | None = None
    else:
        if o_r[1] <= o_r[0] or o_c[1] <= o_c[0]:
            return data, valid
        sy, sx = float(window.height) / h, float(window.width) / w
        inner = Window(c0f + o_c[0] * sx, r0f + o_r[0] * sy, (o_c[1] - o_c[0]) * sx, (o_r[1] - o_r[0]) * sy)
        sl = (slice(*o_r), slice(*o_c))
        shape = (o_r[1] - o_r[0], o_c[1] - o_c[0])
        ir0, ic0 = int(inner.row_off), int(inner.col_off)
        ir1, ic1 = math.ceil(inner.row_off + inner.height), math.ceil(inner.col_off + inner.width)
    failure = None
    try:
        with rasterio.Env(**GDAL_ENV):
            ds = _dataset(scene.path, scene.drivers)
            bands = list(scene.bands)
            if shape is None:
                part = ds.read(bands, window=inner)
            else:
                part = ds.read(bands, window=inner, out_shape=(len(bands), *shape), resampling=resampling)
            if not scene.has_mask:
                part_valid = np.ones(part.shape[1:], dtype=bool)
            elif shape is None:
                part_valid = ds.read_masks(bands, window=inner).any(axis=0)
            else:
                part_valid = ds.read_masks(
                    bands, window=inner, out_shape=(len(bands), *shape), resampling=Resampling.nearest
                ).any(axis=0)
    except (RasterioError, OSError) as exc:
        close_datasets()
        failure = gdal_reason(exc)
    if failure is not None:
        # Raised outside the except block: GDAL's chained errors cannot be unpickled, and Dask
        # would then hand the client a bare Exception instead of this SceneReadError.
        raise SceneReadError(
            scene.path,
            f"reading columns {ic0}-{ic1}, rows {ir0}-{ir1} failed: {failure}; the file is "
            "probably truncated or corrupt (copy it again)",
        )
    if part.dtype.kind == "f":
        part_valid &= representable(part)
    data[:, sl[0], sl[1]] = part
    valid[sl] = part_valid
    return data, valid


def representable(pixels: np.ndarray) -> np.ndarray:
    """Pixels (h, w) whose float values in every band of ``pixels`` (bands, h, w) are finite
    numbers within float32's range: NaN, +-inf and float64 values that would overflow to
    +-inf when cast to float32 (the model's input type) are not. One pass over the data."""
    if pixels.dtype.itemsize <= 4:
        return np.isfinite(pixels).all(axis=0)
    return (np.abs(pixels) <= FLOAT32_MAX).all(axis=0)  # NaN compares False


def prepare_input(raw: np.ndarray, valid: np.ndarray, normalization: Any) -> np.ndarray:
    """Normalize and zero invalid pixels (0 is the model's own padding value).

    Invalid float pixels (NaN, +-inf, beyond float32) are zeroed before the cast to float32,
    so none reaches the model. A valid pixel whose normalized value is still not finite
    (statistics near float32's limits) is zeroed too and marked invalid in ``valid``, in
    place, so it is nodata for the masks as well.
    """
    raw = np.where(valid[None], raw, 0) if raw.dtype.kind == "f" else raw
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x = apply_normalization(raw, normalization)
    x[:, ~valid] = 0.0
    bad = ~np.isfinite(x).all(axis=0)
    if bad.any():
        x[:, bad] = 0.0
        valid &= ~bad
    return x
