"""ResUNet (Zhang, Liu & Wang 2018, "Road Extraction by Deep Residual U-Net")."""

from __future__ import annotations

import torch
from torch import nn

from geounet.models.base import ModelSpec, SegmentationModel
from geounet.models.layers import ResidualUnit, stage_channels
from geounet.models.receptive_field import Footprint, footprint_radius, trace
from geounet.models.registry import register


@register("resunet")
class ResUNet(SegmentationModel):
    """Deep Residual U-Net (Zhang et al. 2018): UNet built from pre-activation residual units.

    Encoder: a residual unit per level, downsampling by the stride 2 of each unit's first
    conv (no pooling), then a strided bridge unit with ``width * 2**depth`` channels.
    Decoder: nearest-neighbour 2x upsampling, concatenation with the encoder features of
    that level, a residual unit. A final BN-ReLU (the units are pre-activation, so the
    last one's sum is not normalised yet) and a 1x1 convolution give the logits. The identity
    shortcuts ease training of deep nets on small road/building datasets, which is why the
    paper proposed it for road extraction.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        ch = stage_channels(spec.width, spec.depth)
        self.channels = ch
        self.encoder = nn.ModuleList(
            [ResidualUnit(spec.in_channels, ch[0], stride=1, preactivate=False)]
            + [ResidualUnit(ch[i - 1], ch[i], stride=2) for i in range(1, spec.depth + 1)]
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoder = nn.ModuleList(ResidualUnit(ch[i + 1] + ch[i], ch[i]) for i in reversed(range(spec.depth)))
        self.head = nn.Sequential(nn.BatchNorm2d(ch[0]), nn.ReLU(inplace=True), nn.Conv2d(ch[0], spec.out_channels, 1))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for unit in self.encoder:
            x = unit(x)
            skips.append(x)
        y = skips.pop()
        for unit, skip in zip(self.decoder, reversed(skips)):
            y = unit(torch.cat([skip, self.up(y)], dim=1))
        return self.head(y)

    def footprint(self, axis: int) -> Footprint:
        """Footprint of the logits along ``axis``, traced through the layers like ``forward``."""
        fp, skips = Footprint(), []
        for unit in self.encoder:
            fp = trace(unit, fp, axis)
            skips.append(fp)
        fp = skips.pop()
        for unit, skip in zip(self.decoder, reversed(skips)):
            fp = trace(unit, skip.union(trace(self.up, fp, axis)), axis)
        return trace(self.head, fp, axis)

    def _receptive_field_radius(self) -> int:
        return footprint_radius(self.footprint)
