"""Attention U-Net (Oktay et al. 2018): UNet with attention gates on the skips."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from geounet.models.base import ModelSpec, SegmentationModel
from geounet.models.layers import AttentionGate, Encoder, UpBlock
from geounet.models.receptive_field import Footprint, footprint_radius, trace
from geounet.models.registry import register


@register("attention_unet")
class AttentionUNet(SegmentationModel):
    """Attention U-Net (Oktay et al. 2018): UNet whose skips pass through attention gates.

    Encoder and decoder are the classic UNet's. Before each skip is concatenated, an
    additive attention gate driven by the coarser decoder features scales every skip pixel
    by a learned coefficient in [0, 1], so the decoder can suppress clutter (shadows, cars
    on roofs) that the encoder's fine features carry. ``options["inter_channels_ratio"]``
    (default 0.5) sets the gate's inner width relative to the skip's channels.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        ratio = float(spec.options.get("inter_channels_ratio", 0.5))
        self.encoder = Encoder(spec.in_channels, spec.width, spec.depth)
        ch = self.encoder.channels
        levels = list(reversed(range(spec.depth)))
        self.gates = nn.ModuleList(AttentionGate(ch[i], ch[i + 1], max(1, round(ch[i] * ratio))) for i in levels)
        self.decoder = nn.ModuleList(UpBlock(ch[i + 1], ch[i], ch[i]) for i in levels)
        self.head = nn.Conv2d(ch[0], spec.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        *skips, y = self.encoder(x)
        for gate, block, skip in zip(self.gates, self.decoder, reversed(skips)):
            y = block(y, gate(skip, y))
        return self.head(y)

    def footprint(self, axis: int) -> Footprint:
        """Footprint of the logits along ``axis``, traced through the layers like ``forward``."""
        *skips, fp = self.encoder.trace_levels(Footprint(), axis)
        for gate, block, skip in zip(self.gates, self.decoder, reversed(skips)):
            fp = cast(UpBlock, block).trace_pair(fp, cast(AttentionGate, gate).trace_pair(skip, fp, axis), axis)
        return trace(self.head, fp, axis)

    def _receptive_field_radius(self) -> int:
        return footprint_radius(self.footprint)
