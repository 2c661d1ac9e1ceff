"""Building blocks of the UNet family: double conv, encoder, up block, residual unit, attention gate.

The blocks are shared by every architecture in :mod:`geounet.models`, so each
architecture's file only wires them. Each block also says which input pixels its output
depends on (``trace_levels``, ``trace_pair``, ``trace_footprint``), through
:mod:`geounet.models.receptive_field`, so the halo of tiled inference follows the real
layers. Inference-time rewrites of these blocks live in :mod:`geounet.models.rewrites`.
"""

from __future__ import annotations

import torch
from torch import nn

from geounet.models.receptive_field import Footprint, trace

__all__ = ["AttentionGate", "DoubleConv", "Encoder", "ResidualUnit", "UpBlock", "stage_channels"]


def stage_channels(width: int, depth: int) -> tuple[int, ...]:
    """Channels of each resolution level: ``width * 2**i`` for ``i = 0 .. depth``.

    With the paper's defaults (width 64, depth 4) this is 64, 128, 256, 512, 1024.
    """
    return tuple(width * 2**i for i in range(depth + 1))


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions (padding 1), each followed by BatchNorm and ReLU (UNet stage).

    The convolutions carry no bias: the BatchNorm right after would cancel it.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = out_channels if mid_channels is None else mid_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """UNet contracting path: a :class:`DoubleConv` per level, 2x2 max-pool between levels.

    ``forward`` returns every level's features, finest first; the last is the bottleneck
    with ``width * 2**depth`` channels.
    """

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.channels = stage_channels(width, depth)
        ins = (in_channels, *self.channels[:-1])
        self.stages = nn.ModuleList(DoubleConv(i, o) for i, o in zip(ins, self.channels))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, stage in enumerate(self.stages):
            if level:
                x = self.pool(x)
            x = stage(x)
            features.append(x)
        return features

    def trace_levels(self, fp: Footprint, axis: int) -> list[Footprint]:
        """Footprints of every level's output, mirroring :meth:`forward`."""
        out = []
        for level, stage in enumerate(self.stages):
            if level:
                fp = trace(self.pool, fp, axis)
            fp = trace(stage, fp, axis)
            out.append(fp)
        return out


class UpBlock(nn.Module):
    """UNet expanding step: 2x2 transposed conv (halving channels), concat skip, double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))

    def trace_pair(self, fp: Footprint, skip: Footprint, axis: int) -> Footprint:
        """Footprint of the output from those of the coarse input and the skip."""
        return trace(self.conv, trace(self.up, fp, axis).union(skip), axis)


class ResidualUnit(nn.Module):
    """Pre-activation residual unit (He et al. 2016) as used by ResUNet (Zhang et al. 2018).

    ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3`` plus a shortcut. The shortcut is the
    identity when shapes allow, otherwise a (strided) 1x1 conv + BN. Downsampling uses the
    stride of the first conv instead of pooling, as in the paper. The very first unit of
    the network skips the leading BN-ReLU (``preactivate=False``): the raw bands are not
    features yet.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, preactivate: bool = True) -> None:
        super().__init__()
        pre: list[nn.Module] = [nn.BatchNorm2d(in_channels), nn.ReLU()] if preactivate else []
        self.body = nn.Sequential(
            *pre,
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)

    def trace_footprint(self, fp: Footprint, axis: int) -> Footprint:
        return trace(self.body, fp, axis).union(trace(self.shortcut, fp, axis))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, Attention U-Net).

    The coarse decoder signal ``g`` decides which skip pixels ``x`` are passed on: ``x`` is
    brought to ``g``'s resolution by a 2x2 stride-2 conv, both are projected to
    ``inter_channels`` and summed, ``ReLU -> 1x1 conv -> sigmoid`` gives one coefficient
    per coarse pixel, which is upsampled bilinearly and multiplies ``x``. The sigmoid here
    is part of the architecture (a soft mask), not an output activation.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(skip_channels, inter_channels, 2, stride=2, bias=False)
        self.phi = nn.Conv2d(gate_channels, inter_channels, 1)
        self.psi = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(inter_channels, 1, 1), nn.Sigmoid())
        self.resample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = self.resample(self.psi(self.theta(x) + self.phi(g)))
        return x * alpha.to(x.dtype)

    def trace_pair(self, fp: Footprint, gate: Footprint, axis: int) -> Footprint:
        """Footprint of the gated skip from those of the skip ``x`` and the gate ``g``."""
        coarse = trace(self.theta, fp, axis).union(trace(self.phi, gate, axis))
        return fp.union(trace(self.resample, trace(self.psi, coarse, axis), axis))
