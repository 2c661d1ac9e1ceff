"""The worker's model cache: each checkpoint loaded once per (output fingerprint, device).

The client sends the checkpoint's bytes to every worker once per run; a worker builds the
model from those bytes the first time a task needs it (no temporary file) and prepares it
for inference (:func:`geounet.models.rewrites.prepare_for_inference`: BatchNorm folded,
channels-last, Conv->ReLU fused on CPU).
"""

from __future__ import annotations

import threading

import torch

import geounet.checkpoint as ckpt
from geounet.heap import ACTIVATIONS_KEPT, activation_bytes, keep_free
from geounet.models.base import SegmentationModel
from geounet.models.rewrites import prepare_for_inference

__all__ = ["get_model", "keep_activations"]

_MODELS: dict[tuple[str, str], SegmentationModel] = {}
_MODEL_LOCK = threading.Lock()


def get_model(checkpoint: ckpt.CheckpointSource, model_key: str, device: torch.device) -> SegmentationModel:
    """The worker's copy of the model, loaded once per (``model_key``, device).

    ``model_key`` is the checkpoint's ``output_fingerprint`` (weights and metadata that change
    outputs): two files with the same weights but another mode or classes are two models to a
    long-lived worker.

    ``checkpoint`` is a path readable by the worker or the checkpoint's bytes (scattered
    once per run by the client), loaded from memory as they are: no file is written.
    Loading goes through the safe safetensors loader, with all its checks; its peak memory
    is about one more copy of the checkpoint (see :func:`geounet.checkpoint.load_checkpoint`).
    """
    key = (model_key, str(device))
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _MODEL_LOCK:
        model = _MODELS.get(key)
        if model is None:
            # looked up on the package at each load, so a test can count loads by replacing it
            model = prepare_for_inference(ckpt.load_checkpoint(checkpoint, device=str(device)))
            _MODELS[key] = model
    return model


def keep_activations(model: SegmentationModel, tile_shape: tuple[int, int], dtype: torch.dtype) -> bool:
    """Let this process's heap keep the freed activations of ``model``'s forward passes on
    tiles of ``tile_shape`` for reuse (:func:`geounet.heap.keep_free`); False if unchanged."""
    return keep_free(ACTIVATIONS_KEPT * activation_bytes(model.spec.width, tile_shape, dtype.itemsize))
