"""The classic UNet (Ronneberger, Fischer & Brox 2015), with BatchNorm."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from geounet.models.base import ModelSpec, SegmentationModel
from geounet.models.layers import Encoder, UpBlock
from geounet.models.receptive_field import Footprint, footprint_radius, trace
from geounet.models.registry import register


@register("unet")
class UNet(SegmentationModel):
    """UNet (Ronneberger et al. 2015): double-conv encoder, transposed-conv decoder, skip concat.

    Each level is two 3x3 convolutions (padding 1) with BatchNorm and ReLU; 2x2 max-pooling
    goes down, a 2x2 transposed convolution halving the channels goes up, and the matching
    encoder features are concatenated before the decoder's double conv. Channels double per
    level: ``width -> 2*width -> ... -> width * 2**depth`` (64 -> 1024 in the paper, 31.04 M
    parameters for 3 bands in and 1 class out). A 1x1 convolution gives the logits.

    Padding 1 (rather than the paper's unpadded convs) keeps output and input the same size,
    which tiled inference needs; the paper's overlap-tile idea is what the halo provides.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.encoder = Encoder(spec.in_channels, spec.width, spec.depth)
        ch = self.encoder.channels
        self.decoder = nn.ModuleList(UpBlock(ch[i + 1], ch[i], ch[i]) for i in reversed(range(spec.depth)))
        self.head = nn.Conv2d(ch[0], spec.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        *skips, y = self.encoder(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            y = block(y, skip)
        return self.head(y)

    def footprint(self, axis: int) -> Footprint:
        """Footprint of the logits along ``axis``, traced through the layers like ``forward``."""
        *skips, fp = self.encoder.trace_levels(Footprint(), axis)
        for block, skip in zip(self.decoder, reversed(skips)):
            fp = cast(UpBlock, block).trace_pair(fp, skip, axis)
        return trace(self.head, fp, axis)

    def _receptive_field_radius(self) -> int:
        return footprint_radius(self.footprint)
