"""Worker side of a scene: read one block with its halo, run the model, keep the core.

A task carries only small things (a :class:`~geounet.scenes.SceneInfo`, a
:class:`~geounet.blocks.Block`, settings); the model arrives once per worker through
:func:`get_model`, keyed by the checkpoint's content hash. Each worker thread keeps its own
dataset handles (GDAL handles are not thread-safe), opened with the driver allowlist.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geounet.blocks import Block
from geounet.errors import SceneReadError
from geounet.heap import ACTIVATIONS_KEPT, activation_bytes, keep_free
from geounet.models.base import SegmentationModel, activate
from geounet.scenes import SCENE_DRIVER, SceneInfo
from geounet.thumbnail import ThumbnailPart, block_thumbnail, display_bands, thumbnail_factor

_MODELS: dict[tuple[str, str], SegmentationModel] = {}
_MODEL_LOCK = threading.Lock()
# Open dataset handles per worker thread: {thread id: {path: dataset}}, most recent last.
_HANDLES: dict[int, dict[str, Any]] = {}
_HANDLES_LOCK = threading.Lock()
MAX_HANDLES = 4  # open dataset handles kept per worker thread

# GDAL settings for reads: never list directories on open. (The block cache, process-wide,
# is sized once per worker process by geounet.engine.WorkerSetup: WORKER_GDAL_CACHE_BYTES.)
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
# Bytes of GDAL block cache per worker process: enough for the overlapping halo reads of
# neighbouring blocks (one block row of halo is ~10 MB; DESIGN.md: a tiny cache drops reads ~3x).
WORKER_GDAL_CACHE_BYTES = 64 * 2**20


# --------------------------------------------------------------------------- devices
def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from geounet.errors import ConfigError

        raise ConfigError("device 'cuda' was requested but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 where the device runs it natively, else fp16 (CUDA) or fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


# Tiles per forward pass when the settings leave it open. On CPU one tile at a time is
# fastest: a batch of 4 tiles of 1024^2 px took 1.6x longer per tile (benchmarks/RESULTS.md),
# its activations no longer fit the allocator's reusable sizes. GPUs need several tiles
# per pass to fill.
AUTO_BATCH = {"cpu": 1, "cuda": 8}


def resolve_batch_size(batch_size: int | None, device: torch.device) -> int:
    """``None`` -> :data:`AUTO_BATCH` for the device type."""
    return batch_size if batch_size is not None else AUTO_BATCH.get(device.type, 1)


# --------------------------------------------------------------------------- model cache
def get_model(checkpoint: str | bytes, content_hash: str, device: torch.device) -> SegmentationModel:
    """The worker's copy of the model, loaded once per (hash, device).

    ``checkpoint`` is a path readable by the worker or the checkpoint's bytes (scattered
    once per run by the client). Loading goes through the safe safetensors loader.
    """
    key = (content_hash, str(device))
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from geounet.checkpoint import load_checkpoint

            if isinstance(checkpoint, (bytes, bytearray, memoryview)):
                with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as f:
                    f.write(checkpoint)
                    tmp = f.name
                try:
                    model = load_checkpoint(tmp, device=str(device))
                finally:
                    os.unlink(tmp)
            else:
                model = load_checkpoint(checkpoint, device=str(device))
            model = prepare_for_inference(model)
            _MODELS[key] = model
    return model


def prepare_for_inference(model: SegmentationModel) -> SegmentationModel:
    """Eval mode, BatchNorm folded into the convolutions, channels-last memory layout, and on
    CPU each convolution's ReLU fused into it.

    Channels-last is faster for these convolutions on CPUs (oneDNN) and GPUs alike:
    measured 1.7x (fp32) and 3.8x (bf16) on this project's 2-core CPU machines. Folding
    BatchNorm saves a pass over every activation (:func:`geounet.models.layers.fold_batchnorm`),
    and so does fusing the ReLU (:func:`geounet.models.layers.fuse_conv_relu`; bit-identical).
    """
    from geounet.models.layers import fold_batchnorm, fuse_conv_relu

    model.eval()
    fold_batchnorm(model)
    model = model.to(memory_format=torch.channels_last)
    fuse_conv_relu(model)
    return model


def keep_activations(model: SegmentationModel, tile_shape: tuple[int, int], dtype: torch.dtype) -> bool:
    """Let this process's heap keep the freed activations of ``model``'s forward passes on
    tiles of ``tile_shape`` for reuse (:func:`geounet.heap.keep_free`); False if unchanged."""
    return keep_free(ACTIVATIONS_KEPT * activation_bytes(model.spec.width, tile_shape, dtype.itemsize))


# --------------------------------------------------------------------------- reading
def _dataset(path: str) -> rasterio.io.DatasetReader:
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
            ds = rasterio.open(path, driver=SCENE_DRIVER)
    handles[path] = ds  # most recently used last
    while len(handles) > MAX_HANDLES:
        _close(handles.pop(next(iter(handles))))
    return ds


def _close(ds: Any) -> None:
    try:
        ds.close()
    except Exception:  # noqa: BLE001 - closing a broken handle must not mask the real error
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


def read_window(scene: SceneInfo, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels (bands, h, w) of ``window`` and a validity mask (h, w).

    The window may extend beyond the scene: outside pixels are 0 and invalid. Only the
    part inside the scene is read from the file (no VRT, no full-scene array).
    """
    h, w = int(window.height), int(window.width)
    r0, c0 = int(window.row_off), int(window.col_off)
    ir0, ic0 = max(r0, 0), max(c0, 0)
    ir1, ic1 = min(r0 + h, scene.height), min(c0 + w, scene.width)
    data = np.zeros((len(scene.bands), h, w), dtype=scene.dtype)
    valid = np.zeros((h, w), dtype=bool)
    if ir1 <= ir0 or ic1 <= ic0:
        return data, valid
    inner = Window(ic0, ir0, ic1 - ic0, ir1 - ir0)
    sl = (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))
    failure = None
    try:
        with rasterio.Env(**GDAL_ENV):
            ds = _dataset(scene.path)
            part = ds.read(list(scene.bands), window=inner)
            if scene.has_mask:
                part_valid = ds.read_masks(list(scene.bands), window=inner).any(axis=0)
            else:
                part_valid = np.ones(part.shape[1:], dtype=bool)
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
        part_valid &= ~np.isnan(part).any(axis=0)
    data[(slice(None), *sl)] = part
    valid[sl] = part_valid
    return data, valid


def prepare_input(raw: np.ndarray, valid: np.ndarray, normalization: Any) -> np.ndarray:
    """Normalize and zero invalid pixels (0 is the model's own padding value)."""
    from geounet.normalize import apply_normalization

    raw = np.where(valid[None], raw, 0) if raw.dtype.kind == "f" else raw
    x = apply_normalization(raw, normalization)
    x[:, ~valid] = 0.0
    return x


# --------------------------------------------------------------------------- model
def run_model(
    model: SegmentationModel,
    x: np.ndarray | torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Probabilities for a batch (N, C, H, W) of normalized inputs, as float32 on the CPU."""
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t[None]
    pin = device.type == "cuda"
    t = (t.pin_memory() if pin else t).to(device, non_blocking=pin)
    t = t.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(
        device_type=device.type, dtype=dtype, enabled=dtype != torch.float32
    ):
        logits = model(t)
    return activate(logits.float(), model.spec.mode).cpu()


def infer_block(
    model: SegmentationModel,
    x: np.ndarray,
    block: Block,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> np.ndarray:
    """Core probabilities (out_channels, core_h, core_w) of ``block`` from its read array ``x``."""
    rr, rc = int(block.read.row_off), int(block.read.col_off)
    cr, cc = int(block.core.row_off), int(block.core.col_off)
    out = np.empty((model.spec.out_channels, int(block.core.height), int(block.core.width)), np.float32)
    tiles = list(block.tiles)
    for i in range(0, len(tiles), batch_size):
        batch = tiles[i : i + batch_size]
        views = [
            x[:, int(t.read.row_off) - rr : int(t.read.row_off + t.read.height) - rr,
              int(t.read.col_off) - rc : int(t.read.col_off + t.read.width) - rc]
            for t in batch
        ]
        # one tile: a view (run_model's channels-last copy is the only one made)
        arr = views[0][None] if len(views) == 1 else np.stack(views)
        probs = run_model(model, arr, device=device, dtype=dtype).numpy()
        for t, p in zip(batch, probs):
            r0 = int(t.core.row_off - t.read.row_off)
            c0 = int(t.core.col_off - t.read.col_off)
            h, w = int(t.core.height), int(t.core.width)
            out[:, int(t.core.row_off) - cr : int(t.core.row_off) - cr + h,
                int(t.core.col_off) - cc : int(t.core.col_off) - cc + w] = p[:, r0 : r0 + h, c0 : c0 + w]
    return out


def class_probabilities(probs: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-class probabilities (K, h, w) and, for multiclass, the argmax labels (0 = background)."""
    if mode == "multiclass":
        return probs[1:], probs.argmax(axis=0)
    return probs, None


def class_masks(
    probs: np.ndarray, labels: np.ndarray | None, valid: np.ndarray, thresholds: list[float]
) -> list[np.ndarray]:
    """Boolean mask per class; invalid (nodata) pixels are never foreground."""
    if labels is not None:
        return [(labels == k + 1) & valid for k in range(probs.shape[0])]
    return [(probs[k] >= thresholds[k]) & valid for k in range(probs.shape[0])]


# --------------------------------------------------------------------------- the task
@dataclass
class BlockTaskSpec:
    """Everything a block task needs besides the scene, the block and the model bytes."""

    content_hash: str
    normalization: Any
    thresholds: list[float]
    batch_size: int | None
    device: str
    precision: str
    keep_probability: bool
    quicklook_size: int | None = None  # longest quicklook side, px; None: no quicklook


@dataclass
class BlockResult:
    """What travels back from a worker: small by construction (one block's core)."""

    index: int
    core: tuple[int, int, int, int]  # col_off, row_off, width, height
    probability: np.ndarray | None  # (K, h, w) uint8, probability x 255
    polygons: list[Any]  # one geounet.vectorize.BlockPolygons per class
    valid_pixels: int
    timings: dict[str, float] = field(default_factory=dict)
    thumbnail: ThumbnailPart | None = None  # the core's share of the quicklook picture


def process_block(scene: SceneInfo, block: Block, checkpoint: str | bytes, spec: BlockTaskSpec) -> BlockResult:
    """Read, normalize, infer, threshold and polygonize one block (runs on a worker).

    Idempotent and free of side effects: it may be retried on another worker. A block whose
    core holds no valid pixel skips the model (no polygons, probability 0).
    Memory: about (bands + 2 * classes) * read-window pixels * 4 bytes plus the model's
    activations for ``batch_size`` tiles.
    """
    from geounet.vectorize import polygonize_block

    t0 = time.perf_counter()
    device = resolve_device(spec.device)
    dtype = resolve_precision(spec.precision, device)
    model = get_model(checkpoint, spec.content_hash, device)
    if device.type == "cpu":  # activations come from the worker's heap: keep them for reuse
        tile = next(iter(block.tiles)).read
        keep_activations(model, (int(tile.height), int(tile.width)), dtype)
    raw, valid = read_window(scene, block.read)
    cr = int(block.core.row_off - block.read.row_off)
    cc = int(block.core.col_off - block.read.col_off)
    h, w = int(block.core.height), int(block.core.width)
    core_valid = valid[cr : cr + h, cc : cc + w]
    skipped = not core_valid.any()
    thumb = None
    if spec.quicklook_size is not None and not skipped:
        thumb = block_thumbnail(display_bands(raw[:, cr : cr + h, cc : cc + w]), core_valid,
                                row_off=int(block.core.row_off), col_off=int(block.core.col_off),
                                factor=thumbnail_factor(scene.width, scene.height, spec.quicklook_size))
    if skipped:
        # Nothing valid to segment (a nodata collar, an empty or sparse region): the
        # outputs are defined without the model -- no polygons, probability 0.
        del raw
        t1 = t2 = time.perf_counter()
        probs = np.zeros((model.spec.out_channels, h, w), np.float32)
    else:
        x = prepare_input(raw, valid, spec.normalization)
        del raw
        t1 = time.perf_counter()
        probs = infer_block(model, x, block, batch_size=resolve_batch_size(spec.batch_size, device),
                            device=device, dtype=dtype)
        del x
        t2 = time.perf_counter()
    cls_probs, labels = class_probabilities(probs, model.spec.mode)
    masks = class_masks(cls_probs, labels, core_valid, spec.thresholds)
    polys = [
        polygonize_block(
            m, cls_probs[k], row_off=int(block.core.row_off), col_off=int(block.core.col_off),
            scene_height=scene.height, scene_width=scene.width,
        )
        for k, m in enumerate(masks)
    ]
    prob_u8 = None
    if spec.keep_probability:
        q = np.clip(cls_probs, 0.0, 1.0)
        q *= 255.0
        prob_u8 = np.rint(q, out=q).astype(np.uint8)
        prob_u8[:, ~core_valid] = 0  # nodata pixels have probability 0, model or not
    t3 = time.perf_counter()
    return BlockResult(
        index=block.index,
        core=(int(block.core.col_off), int(block.core.row_off), w, h),
        probability=prob_u8,
        polygons=polys,
        valid_pixels=int(core_valid.sum()),
        timings={"read": t1 - t0, "infer": t2 - t1, "vectorize": t3 - t2, "skipped_blocks": float(skipped)},
        thumbnail=thumb,
    )
