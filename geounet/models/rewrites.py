"""Inference-time rewrites of a trained model: fewer passes over every activation, same function.

:func:`prepare_for_inference` is what workers apply once per loaded model: eval mode,
:func:`fold_batchnorm` (each Conv -> BatchNorm pair becomes one convolution),
channels-last memory layout and, on CPU, :func:`fuse_conv_relu` (each Conv -> ReLU pair
becomes one oneDNN convolution with the ReLU fused, :class:`ConvReLU`). None of them
changes the receptive field, so the halo a checkpoint suggests still holds. Training never
sees these rewrites.
"""

from __future__ import annotations

import functools
import logging
from typing import cast

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from geounet.models.base import SegmentationModel
from geounet.models.receptive_field import Footprint, trace

log = logging.getLogger(__name__)

__all__ = ["ConvReLU", "fold_batchnorm", "fuse_conv_relu", "prepare_for_inference"]


def prepare_for_inference(model: SegmentationModel) -> SegmentationModel:
    """Eval mode, BatchNorm folded into the convolutions, channels-last memory layout, and on
    CPU each convolution's ReLU fused into it. In place; returns the model to use.

    Channels-last is faster for these convolutions on CPUs (oneDNN) and GPUs alike:
    measured 1.7x (fp32) and 3.8x (bf16) on this project's 2-core CPU machines. Folding
    BatchNorm saves a pass over every activation (:func:`fold_batchnorm`), and so does
    fusing the ReLU (:func:`fuse_conv_relu`; bit-identical).
    """
    model.eval()
    fold_batchnorm(model)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    fuse_conv_relu(model)
    return model


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair inside a ``Sequential`` into one
    convolution (in place); the BatchNorm becomes an ``Identity``. Returns the pairs folded.

    Only for inference (the model must be in eval mode: running statistics are baked into
    the weights). Pre-activation BatchNorms (BN before a conv, as in ResUNet units) stay.
    Measured on 2 CPU cores, UNet width 8, one 1024^2 px tile: 0.25 -> 0.22 s in bf16,
    0.54 -> 0.41 s in fp32; outputs agree to 3e-6 in fp32.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call model.eval() first)")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
                folded += 1
    return folded


# oneDNN's convolution with a fused element-wise post-op (what torch.compile's CPU backend
# emits for conv -> relu); None where this torch build lacks it.
_FUSED_CONV = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


# dtypes for which the fused convolution failed once in this process (then never tried again)
_FUSED_FAILED: set[torch.dtype] = set()


@functools.cache
def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _fused_dtypes() -> tuple[torch.dtype, ...]:
    """fp32 always; bf16 only where oneDNN runs it natively (else torch takes its own path)."""
    dtypes = (torch.float32, torch.bfloat16) if _onednn_bf16() else (torch.float32,)
    return tuple(d for d in dtypes if d not in _FUSED_FAILED)


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast casts convolutions to, or None when it is off."""
    try:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    except (AttributeError, TypeError):  # torch < 2.4 (pyproject allows >= 2.1)
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


class ConvReLU(nn.Module):
    """``relu(conv(x))`` for inference, as one oneDNN convolution with the ReLU fused on CPU.

    A separate ReLU reads and writes every activation once more: on this project's 2-core
    machine it took a third of a width-16 UNet's forward pass in bf16 (the convolutions are
    not much heavier than a memory pass at these widths). Fused, it costs nothing and the
    result is bit-identical. Elsewhere -- CUDA tensors, autograd, a torch build without the
    op, a convolution it does not take -- it runs the two layers as they are. Under CPU
    autocast the weights are cast once and kept (autocast itself casts them on every pass).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self._cast: dict[torch.dtype, tuple[tuple[int, ...], torch.Tensor, torch.Tensor | None]] = {}

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.conv.weight, self.conv.bias
        # the cast is redone if the weights were replaced or changed in place since
        stamp = (w.data_ptr(), w._version, -1 if b is None else b.data_ptr(), -1 if b is None else b._version)
        cast = self._cast.get(dtype)
        if cast is None or cast[0] != stamp:
            cast = (stamp, w.detach().to(dtype), None if b is None else b.detach().to(dtype))
            self._cast[dtype] = cast  # a race only computes the same tensors twice
        return cast[1], cast[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _FUSED_CONV is not None and x.device.type == "cpu" and not torch.is_grad_enabled():
            dtype = _cpu_autocast_dtype() or x.dtype
            if dtype in _fused_dtypes():
                w, b = self._weights(dtype)
                c = self.conv
                try:
                    return _FUSED_CONV(
                        x.to(dtype),
                        w,
                        b,
                        list(c.padding),
                        list(c.stride),
                        list(c.dilation),
                        c.groups,
                        "relu",
                        [None],
                        "",
                    )
                except RuntimeError as exc:  # oneDNN cannot build this primitive on this CPU
                    _FUSED_FAILED.add(dtype)
                    log.warning(
                        "fused conv+relu unavailable for %s on this CPU (%s); running them apart",
                        dtype,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    )
        return torch.relu(self.conv(x))

    def trace_footprint(self, fp: Footprint, axis: int) -> Footprint:
        return trace(self.conv, fp, axis)


def _fusable(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.device.type == "cpu"
        and conv.weight.dtype == torch.float32
    )


def fuse_conv_relu(model: nn.Module) -> int:
    """Replace every ``Conv2d -> ReLU`` pair inside a ``Sequential`` (identities between them
    allowed, e.g. left by :func:`fold_batchnorm`) by a :class:`ConvReLU`; the ReLU becomes an
    ``Identity``. In place, for inference on CPU; returns the pairs fused. Does nothing where
    this torch build has no fused oneDNN convolution.
    """
    if _FUSED_CONV is None or not torch.backends.mkldnn.is_available():
        return 0
    fused = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for i, a in enumerate(names):
            if not _fusable(seq._modules[a]):
                continue
            j = i + 1
            while j < len(names) and isinstance(seq._modules[names[j]], nn.Identity):
                j += 1
            if j < len(names) and type(seq._modules[names[j]]) is nn.ReLU:
                seq._modules[a] = ConvReLU(cast(nn.Conv2d, seq._modules[a]))  # _fusable: a Conv2d
                seq._modules[names[j]] = nn.Identity()
                fused += 1
    return fused
