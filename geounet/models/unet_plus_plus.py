"""UNet++ (Zhou et al. 2018): UNet with nested, dense skip pathways."""

from __future__ import annotations

import torch
from torch import nn

from geounet.models.base import ModelSpec, SegmentationModel
from geounet.models.layers import DoubleConv, Encoder
from geounet.models.receptive_field import Footprint, footprint_radius, trace
from geounet.models.registry import register


@register("unet_plus_plus")
class UNetPlusPlus(SegmentationModel):
    """UNet++ (Zhou et al. 2018): nested dense skip pathways between encoder and decoder.

    Node ``X[i][j]`` (level ``i``, column ``j``) is a double conv over the concatenation of
    every earlier node of its level ``X[i][0..j-1]`` and the 2x2 transposed-conv upsampling
    of ``X[i+1][j-1]``; column 0 is the classic UNet encoder. The intermediate nodes narrow
    the semantic gap between encoder and decoder features. The logits come from a 1x1 conv on
    ``X[0][depth]`` only: the paper's deep supervision heads are a training device, left out.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.encoder = Encoder(spec.in_channels, spec.width, spec.depth)
        ch = self.encoder.channels
        # ups[f"{i}_{j}"] / nodes[f"{i}_{j}"] build X[i][j] for j >= 1 and i + j <= depth.
        self.ups = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, spec.depth + 1):
            for i in range(spec.depth + 1 - j):
                self.ups[f"{i}_{j}"] = nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2)
                self.nodes[f"{i}_{j}"] = DoubleConv((j + 1) * ch[i], ch[i])
        self.head = nn.Conv2d(ch[0], spec.out_channels, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        grid = [[f] for f in self.encoder(x)]  # grid[i][j] is X[i][j]
        for j in range(1, self.spec.depth + 1):
            for i in range(self.spec.depth + 1 - j):
                up = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat([*grid[i], up], dim=1)))
        return self.head(grid[0][-1])

    def footprint(self, axis: int) -> Footprint:
        """Footprint of the logits along ``axis``, traced through the layers like ``forward``."""
        grid = [[f] for f in self.encoder.trace_levels(Footprint(), axis)]
        for j in range(1, self.spec.depth + 1):
            for i in range(self.spec.depth + 1 - j):
                up = trace(self.ups[f"{i}_{j}"], grid[i + 1][j - 1], axis)
                grid[i].append(trace(self.nodes[f"{i}_{j}"], up.union(*grid[i]), axis))
        return trace(self.head, grid[0][-1], axis)

    def _receptive_field_radius(self) -> int:
        return footprint_radius(self.footprint)
