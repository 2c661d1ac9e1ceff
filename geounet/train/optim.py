"""What updates the weights: the loss chosen by the settings, AdamW's parameter groups and
the learning-rate schedule, as small pure functions of the settings."""

from __future__ import annotations

import math
from typing import Any

import torch

from geounet.train.config import OptimSettings, TrainingSettings


def lr_at(step: int, total: int, cfg: OptimSettings) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total``; a pure function.

    ``onecycle``: cosine from lr/25 up to lr over the warm-up, then cosine down to lr/1e4
    (the shape of ``torch.optim.lr_scheduler.OneCycleLR``); ``cosine``: linear from 0 up to
    lr, then cosine down to 0; ``constant``: lr.
    """
    peak = cfg.lr
    if cfg.schedule == "constant" or total <= 1:
        return peak
    warm = int(round(cfg.warmup * total))
    if cfg.schedule == "onecycle":
        start, end = peak / 25.0, peak / 1e4
        if step < warm:
            t = step / max(warm, 1)
            return start + (peak - start) * (1 - math.cos(math.pi * t)) / 2
        t = (step - warm) / max(total - warm - 1, 1)
        return end + (peak - end) * (1 + math.cos(math.pi * min(t, 1.0))) / 2
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(total - warm - 1, 1)
    return peak * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weights decay, biases and normalization parameters (1-D) do not."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def loss_kwargs(settings: TrainingSettings) -> dict[str, Any]:
    """Arguments of :func:`geounet.train.losses.loss_for` from the ``loss`` settings: term
    weights, and ``class_weights`` as CE class weights (background 1) or BCE positive weights."""
    names = settings.class_names
    cw = settings.loss.class_weights
    if settings.model.mode == "multiclass":
        kw: dict[str, Any] = {"ce_weight": settings.loss.ce_weight, "dice_weight": settings.loss.dice_weight}
        if cw:
            kw["class_weights"] = [1.0] + [float(cw.get(n, 1.0)) for n in names]
        return kw
    kw = {"bce_weight": settings.loss.ce_weight, "dice_weight": settings.loss.dice_weight}
    if cw:
        kw["pos_weight"] = [float(cw.get(n, 1.0)) for n in names]
    return kw
