"""One block on a worker: read with its halo -> forward -> keep the core -> class masks -> polygons.

A task carries only small things (a :class:`~geounet.scene.source.SceneInfo`, a
:class:`~geounet.scene.plan.Block`, settings); the model arrives once per worker through
:func:`geounet.infer.model_cache.get_model`, keyed by the checkpoint's output fingerprint. Reading
goes through :mod:`geounet.scene.read` (per-thread dataset handles, driver allowlist).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geounet.compute import resolve_batch_size, resolve_device, resolve_precision
from geounet.export.quicklook import ThumbnailPart, block_thumbnail, display_bands, thumbnail_factor
from geounet.infer.model_cache import get_model, keep_activations
from geounet.infer.tta import dihedral_mean
from geounet.models.base import SegmentationModel, activate
from geounet.scene.normalize import InputMoments, input_moments
from geounet.scene.plan import Block, ModelGrid
from geounet.scene.read import prepare_input, read_window
from geounet.scene.source import SceneInfo
from geounet.vectorize.network import encode_linear
from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.separate import EdgeCrop, SeparationParams, separate_block


def run_model(
    model: SegmentationModel,
    x: np.ndarray | torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    tta: bool = False,
) -> torch.Tensor:
    """Probabilities for a batch (N, C, H, W) of normalized inputs, as float32 on the CPU.

    With ``tta`` they are the mean over the 8 flips and quarter turns of the input
    (:func:`geounet.infer.tta.dihedral_mean`; 8 forward passes).
    """
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t[None]
    pin = device.type == "cuda"
    t = (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    def probabilities(inp: torch.Tensor) -> torch.Tensor:
        inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(inp)
        return activate(logits.float(), model.spec.mode)

    with torch.inference_mode():
        probs = dihedral_mean(probabilities, t, model.spec.multiple) if tta else probabilities(t)
    return probs.cpu()


def infer_block(
    model: SegmentationModel,
    x: np.ndarray,
    block: Block,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    tta: bool = False,
) -> np.ndarray:
    """Core probabilities (out_channels, core_h, core_w) of ``block`` from its read array ``x``.

    With ``tta`` each tile, halo included, is averaged over its 8 flips and quarter turns
    (seam-free still: :mod:`geounet.infer.tta`)."""
    rr, rc = int(block.read.row_off), int(block.read.col_off)
    cr, cc = int(block.core.row_off), int(block.core.col_off)
    out = np.empty((model.spec.out_channels, int(block.core.height), int(block.core.width)), np.float32)
    tiles = list(block.tiles)
    for i in range(0, len(tiles), batch_size):
        batch = tiles[i : i + batch_size]
        views = [
            x[
                :,
                int(t.read.row_off) - rr : int(t.read.row_off + t.read.height) - rr,
                int(t.read.col_off) - rc : int(t.read.col_off + t.read.width) - rc,
            ]
            for t in batch
        ]
        # one tile: a view (run_model's channels-last copy is the only one made)
        arr = views[0][None] if len(views) == 1 else np.stack(views)
        probs = run_model(model, arr, device=device, dtype=dtype, tta=tta).numpy()
        for t, p in zip(batch, probs):
            r0 = int(t.core.row_off - t.read.row_off)
            c0 = int(t.core.col_off - t.read.col_off)
            h, w = int(t.core.height), int(t.core.width)
            out[
                :,
                int(t.core.row_off) - cr : int(t.core.row_off) - cr + h,
                int(t.core.col_off) - cc : int(t.core.col_off) - cc + w,
            ] = p[:, r0 : r0 + h, c0 : c0 + w]
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


def block_sides(core: Any, width: int, height: int) -> dict[str, bool]:
    """Which sides of a block's core are internal (not on the scene border)."""
    c, r, w, h = int(core.col_off), int(core.row_off), int(core.width), int(core.height)
    return {"top": r > 0, "bottom": r + h < height, "left": c > 0, "right": c + w < width}


MOMENT_STRIDE = 4  # the input range check samples every 4th row and column


# --------------------------------------------------------------------------- the task
@dataclass
class BlockTaskSpec:
    """Everything a block task needs besides the scene, the block and the model bytes."""

    model_key: str  # the checkpoint's output_fingerprint: keys the worker's model cache
    normalization: Any
    thresholds: list[float]
    batch_size: int | None
    device: str
    precision: str
    keep_probability: bool
    quicklook_size: int | None = None  # longest quicklook side, px; None: no quicklook
    tta: bool = False  # average each tile over its 8 flips and quarter turns
    grid: ModelGrid | None = None  # the scene's model grid (blocks are on it); None: the scene's own pixels
    linear: tuple[int, ...] = ()  # indexes of the classes traced as road graphs (their cores travel back)
    separate: dict[int, SeparationParams] = field(default_factory=dict)  # class index -> touching buildings split


@dataclass
class BlockResult:
    """What travels back from a worker: small by construction (one block's core)."""

    index: int
    core: tuple[int, int, int, int]  # col_off, row_off, width, height (model-grid pixels)
    probability: np.ndarray | None  # (K, h, w) uint8, probability x 255
    polygons: list[Any]  # one geounet.vectorize.seams.BlockPolygons per class
    valid_pixels: int
    timings: dict[str, float] = field(default_factory=dict)
    thumbnail: ThumbnailPart | None = None  # the core's share of the quicklook picture
    linear: np.ndarray | None = None  # (L, h, w) uint8 of the linear classes: 0 off, else p x 255 (>= 1)
    edge_crops: dict[int, list[EdgeCrop]] = field(default_factory=dict)  # per split class: regions left to the client
    split: dict[int, int] = field(default_factory=dict)  # per split class: regions split on the worker
    moments: InputMoments | None = None  # the core's valid normalized pixels (input range check); None: skipped


def process_block(scene: SceneInfo, block: Block, checkpoint: str | bytes, spec: BlockTaskSpec) -> BlockResult:
    """Read, normalize, infer, threshold and polygonize one block (runs on a worker).

    Idempotent and free of side effects: it may be retried on another worker. A block whose
    core holds no valid pixel skips the model (no polygons, probability 0). On a resampled
    model grid (``spec.grid``) the block's windows are model-grid pixels: its read window is
    mapped to a fractional scene window and GDAL resamples it to the block's size, and the
    polygons are in model-grid pixels.
    Memory: about (bands + 2 * classes) * read-window pixels * 4 bytes (model-grid pixels)
    plus the model's activations for ``batch_size`` tiles.
    """
    t0 = time.perf_counter()
    device = resolve_device(spec.device)
    dtype = resolve_precision(spec.precision, device)
    model = get_model(checkpoint, spec.model_key, device)
    if device.type == "cpu":  # activations come from the worker's heap: keep them for reuse
        tile = next(iter(block.tiles)).read
        keep_activations(model, (int(tile.height), int(tile.width)), dtype)
    grid = spec.grid if spec.grid is not None else ModelGrid(scene.width, scene.height)
    if grid.resampled:
        shape = (int(block.read.height), int(block.read.width))
        raw, valid = read_window(scene, grid.scene_window(block.read), out_shape=shape)
    else:
        raw, valid = read_window(scene, block.read)
    cr = int(block.core.row_off - block.read.row_off)
    cc = int(block.core.col_off - block.read.col_off)
    h, w = int(block.core.height), int(block.core.width)
    core_valid = valid[cr : cr + h, cc : cc + w]
    skipped = not core_valid.any()
    thumb = None
    moments = None
    if spec.quicklook_size is not None and not skipped:
        thumb = block_thumbnail(
            display_bands(raw[:, cr : cr + h, cc : cc + w]),
            core_valid,
            row_off=int(block.core.row_off),
            col_off=int(block.core.col_off),
            factor=thumbnail_factor(grid.width, grid.height, spec.quicklook_size),
        )
    if skipped:
        # Nothing valid to segment (a nodata collar, an empty or sparse region): the
        # outputs are defined without the model -- no polygons, probability 0.
        del raw
        t1 = t2 = time.perf_counter()
        probs = np.zeros((model.spec.out_channels, h, w), np.float32)
    else:
        x = prepare_input(raw, valid, spec.normalization)  # core_valid (a view of valid) is updated too
        # every MOMENT_STRIDE-th row and column of the model grid (a sample that does not depend
        # on the block grid; the full core cost ~4 % of a block's time on CPU)
        r0 = cr + (-int(block.core.row_off)) % MOMENT_STRIDE
        c0 = cc + (-int(block.core.col_off)) % MOMENT_STRIDE
        rows, cols = slice(r0, cr + h, MOMENT_STRIDE), slice(c0, cc + w, MOMENT_STRIDE)
        moments = input_moments(x[:, rows, cols], valid[rows, cols], raw[:, rows, cols])
        del raw
        t1 = time.perf_counter()
        probs = infer_block(
            model,
            x,
            block,
            batch_size=resolve_batch_size(spec.batch_size, device),
            device=device,
            dtype=dtype,
            tta=spec.tta,
        )
        del x
        t2 = time.perf_counter()
    cls_probs, labels = class_probabilities(probs, model.spec.mode)
    masks = class_masks(cls_probs, labels, core_valid, spec.thresholds)
    edge_crops: dict[int, list[EdgeCrop]] = {}
    split: dict[int, int] = {}
    if not skipped:
        for k, params in spec.separate.items():
            masks[k], edge_crops[k], split[k] = separate_block(
                masks[k],
                cls_probs[k],
                params,
                internal=block_sides(block.core, grid.width, grid.height),
                row_off=int(block.core.row_off),
                col_off=int(block.core.col_off),
            )
    polys = [
        polygonize_block(
            m,
            cls_probs[k],
            row_off=int(block.core.row_off),
            col_off=int(block.core.col_off),
            scene_height=grid.height,
            scene_width=grid.width,
        )
        for k, m in enumerate(masks)
    ]
    linear = encode_linear(cls_probs, masks, spec.linear) if spec.linear and not skipped else None
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
        linear=linear,
        edge_crops=edge_crops,
        split=split,
        moments=moments,
    )
