"""Training losses for the three output modes, all taking logits.

Pixel-wise cross-entropy alone is dominated by the background in aerial scenes (buildings
and roads cover a few percent of the pixels); adding a soft Dice term, which measures
overlap per class, keeps thin roads and small buildings from being ignored. Both losses
take *logits*: the sigmoid/softmax they apply is their own numerics (fused with the log
for stability), not the inference activation of :func:`geounet.models.activate`.

Pixels can be excluded with a ``valid`` mask (nodata, image borders, unlabelled areas);
excluded pixels contribute to neither term, so their logits and targets are irrelevant.
Losses are computed in float32 even under autocast, because bfloat16 sums over a whole
batch of pixels lose the small classes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geounet.errors import ModelInputError
from geounet.models.base import ModelSpec

__all__ = ["BCEDiceLoss", "CEDiceLoss", "loss_for", "soft_dice_loss"]


def _valid_weights(valid: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """``valid`` as float weights (N, 1, H, W), checked against the logits' shape."""
    if valid is None:
        return None
    n, _, h, w = logits.shape
    if valid.ndim == 3:
        valid = valid.unsqueeze(1)
    c = logits.shape[1]
    if valid.ndim != 4 or valid.shape[0] != n or valid.shape[1] not in (1, c) or tuple(valid.shape[-2:]) != (h, w):
        raise ModelInputError(
            f"valid mask of shape {tuple(valid.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected ({n}, {h}, {w}), ({n}, 1, {h}, {w}) or per class ({n}, {c}, {h}, {w})"
        )
    return valid.to(device=logits.device, dtype=torch.float32)


def soft_dice_loss(
    probs: torch.Tensor, onehot: torch.Tensor, weights: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - mean over channels of (2|P.T| + s) / (|P| + |T| + s)``, summed over the batch.

    Sums run over batch and pixels together (not per image), so an image without any
    building does not produce a 0/0 that ``smooth`` would have to paper over.

    Args:
        probs: probabilities (N, C, H, W).
        onehot: targets in [0, 1] of the same shape.
        weights: optional (N, 1, H, W) pixel weights; 0 excludes a pixel.
        smooth: additive smoothing; keeps the loss defined (and 0) when a class is absent
            from both prediction and target.
    """
    if weights is not None:
        probs, onehot = probs * weights, onehot * weights
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (total + smooth)).mean()


class BCEDiceLoss(nn.Module):
    pos_weight: torch.Tensor | None  # a buffer: moves with .to(device)

    """Binary cross-entropy on logits plus soft Dice, for ``binary`` and ``multilabel`` modes.

    Each channel is an independent yes/no question (building? road?), hence one sigmoid per
    channel and no competition between classes.

    Args:
        bce_weight: weight of the BCE term.
        dice_weight: weight of the Dice term (0 turns it off).
        pos_weight: optional per-channel weight of positives in BCE, e.g. to boost roads.
        smooth: Dice smoothing.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        pos_weight: torch.Tensor | list[float] | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss.

        Args:
            logits: (N, C, H, W) raw model output.
            target: (N, C, H, W) floats in [0, 1]; (N, H, W) is accepted when C == 1.
            valid: optional bool/float mask (N, H, W) or (N, 1, H, W); False/0 pixels are ignored.
        """
        if target.ndim == 3 and logits.ndim == 4 and logits.shape[1] == 1:
            target = target.unsqueeze(1)
        if target.shape != logits.shape:
            raise ModelInputError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        logits, target = logits.float(), target.float()
        weights = _valid_weights(valid, logits)
        pw = None if self.pos_weight is None else self.pos_weight.view(1, -1, 1, 1)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
        if weights is None:
            bce = bce.mean()
        else:
            per_pixel = weights.sum() * (logits.shape[1] if weights.shape[1] == 1 else 1)
            bce = (bce * weights).sum() / per_pixel.clamp_min(1e-12)
        loss = self.bce_weight * bce
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(torch.sigmoid(logits), target, weights, self.smooth)
        return loss


class CEDiceLoss(nn.Module):
    class_weights: torch.Tensor | None  # a buffer: moves with .to(device)

    """Cross-entropy plus optional soft Dice over the softmax, for ``multiclass`` mode.

    Classes compete for each pixel (a pixel is background, building *or* road). Channel 0
    is the background; Dice skips it by default, because the background's overlap is
    always high and would dilute the term meant to lift the rare classes.

    Args:
        ce_weight: weight of the cross-entropy term.
        dice_weight: weight of the Dice term (0 turns it off).
        class_weights: optional per-class weights for the cross-entropy.
        ignore_index: target value marking pixels to ignore (e.g. 255 for nodata).
        dice_background: include channel 0 in the Dice term.
        smooth: Dice smoothing.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weights: torch.Tensor | list[float] | None = None,
        ignore_index: int | None = None,
        dice_background: bool = False,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index
        self.dice_background = dice_background
        self.smooth = float(smooth)
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss.

        Args:
            logits: (N, K, H, W) raw model output, K = classes + 1 (background first).
            target: (N, H, W) integer class indices in ``[0, K)`` or ``ignore_index``.
            valid: optional bool/float mask (N, H, W) or (N, 1, H, W); False/0 pixels are ignored.
        """
        n, k, h, w = logits.shape
        if target.shape != (n, h, w) or target.dtype.is_floating_point:
            raise ModelInputError(
                f"multiclass target must be integer class indices of shape ({n}, {h}, {w}), "
                f"got {target.dtype} {tuple(target.shape)}"
            )
        logits, target = logits.float(), target.long()
        keep = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        weights = _valid_weights(valid, logits)
        if weights is not None:
            keep &= weights[:, 0] > 0
        labels = torch.where(keep, target, torch.zeros_like(target))
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ModelInputError(
                f"target class indices must lie in [0, {k}) for {k} output channels "
                f"(ignore_index={self.ignore_index}); got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        pixel_w = keep.float() if weights is None else keep.float() * weights[:, 0]
        ce = F.cross_entropy(logits, labels, weight=self.class_weights, reduction="none")
        if self.class_weights is None:
            denom = pixel_w.sum()
        else:  # same normalisation as F.cross_entropy(weight=...): divide by the weights used
            denom = (pixel_w * self.class_weights[labels]).sum()
        loss = self.ce_weight * (ce * pixel_w).sum() / denom.clamp_min(1e-12)
        if self.dice_weight:
            probs = torch.softmax(logits, dim=1)
            onehot = F.one_hot(labels, k).permute(0, 3, 1, 2).to(probs.dtype)
            first = 0 if self.dice_background else 1
            dice = soft_dice_loss(probs[:, first:], onehot[:, first:], pixel_w.unsqueeze(1), self.smooth)
            loss = loss + self.dice_weight * dice
        return loss


def loss_for(spec: ModelSpec, **kwargs: Any) -> nn.Module:
    """The loss matching ``spec.mode``: :class:`CEDiceLoss` for multiclass, else :class:`BCEDiceLoss`.

    ``kwargs`` go to the loss's constructor (weights, ``ignore_index``...).
    """
    if spec.mode == "multiclass":
        return CEDiceLoss(**kwargs)
    return BCEDiceLoss(**kwargs)
