"""Every "auto" in one place: device, precision, batch size, tiles per block, tile and halo.

Settings and checkpoints may leave these open (``auto`` or unset); the rules that fill
them in live here and nowhere else, so the client's plan and the workers' forward passes
resolve them the same way.
"""

from __future__ import annotations

import torch

from geounet.errors import ConfigError

# Tile side when neither the settings nor the checkpoint suggest one (pixels).
DEFAULT_TILE_SIZE = 1024


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def default_halo(receptive_field_radius: int, multiple: int) -> int:
    """Halo that makes tiling exact: the receptive-field radius rounded up to ``multiple``."""
    return round_up(max(0, receptive_field_radius), multiple)


def default_tile_size(halo: int, multiple: int) -> int:
    """Suggested tile side in pixels: 1024, or ``4 * halo`` rounded up to ``multiple`` if larger.

    A tile of at least four halos has a core at least half its side, so at least a quarter
    of the computed pixels are kept (at 1024 px and a 96 px halo: 66 %). The result is a
    multiple of ``multiple`` (``2**depth``, at most 64, divides 1024) and always leaves a core.
    """
    return max(DEFAULT_TILE_SIZE, round_up(4 * halo, multiple), 2 * halo + multiple)


def resolve_tile_size(setting: int | None, suggested: int | None) -> int:
    """Tile side: the settings' value, else the checkpoint's suggestion, else the default."""
    return setting or suggested or DEFAULT_TILE_SIZE


def resolve_halo(setting: int | None, suggested: int | None, receptive_field_radius: int, multiple: int) -> int:
    """Halo: the settings' value, else the checkpoint's suggestion, else :func:`default_halo`."""
    if setting is not None:
        return setting
    if suggested is not None:
        return suggested
    return default_halo(receptive_field_radius, multiple)


def cuda_available() -> bool:
    """True when this process sees a CUDA device."""
    return torch.cuda.is_available()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
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


# Tiles per block side when the settings leave it open. CPU: one tile per task, so the two
# worker threads of a 2-core machine finish a scene together (with 2x2-tile blocks one
# thread idled through the last block; benchmarks/RESULTS.md). CUDA: 3x3 tiles per task,
# so a task holds a full batch (AUTO_BATCH 8). Not measured on a GPU yet.
AUTO_TILES_PER_BLOCK = {"cpu": 1, "cuda": 3}


def resolve_tiles_per_block(tiles_per_block: int | None, device: str) -> int:
    """``tiles_per_block``, or the device's default: CUDA when requested, or for ``auto``
    when this process sees a CUDA device (the embedded cluster's workers see the same)."""
    if tiles_per_block is not None:
        return tiles_per_block
    cuda = device == "cuda" or (device == "auto" and cuda_available())
    return AUTO_TILES_PER_BLOCK["cuda" if cuda else "cpu"]
