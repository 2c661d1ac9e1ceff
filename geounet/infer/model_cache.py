"""The worker's model cache: each checkpoint loaded once per (content hash, device).

The client sends the checkpoint's bytes to every worker once per run; a worker builds the
model from them the first time a task needs it and prepares it for inference (BatchNorm
folded, channels-last, Conv->ReLU fused on CPU).
"""

from __future__ import annotations

import os
import tempfile
import threading

import torch

from geounet.heap import ACTIVATIONS_KEPT, activation_bytes, keep_free
from geounet.models.base import SegmentationModel

_MODELS: dict[tuple[str, str], SegmentationModel] = {}
_MODEL_LOCK = threading.Lock()


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


