"""The receptive-field radius each model reports is a safe and tight bound.

Tiled inference uses the radius as its halo: too small and tiles disagree at seams. We
measure the real radius by perturbing single input pixels of a float64 model in eval mode
and finding the farthest output pixel that changes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geounet.models import create_model
from geounet.models.receptive_field import Footprint, trace

ARCHS = ["unet", "attention_unet", "resunet", "unet_plus_plus"]


def measured_radius(model: nn.Module, depth: int, n_offsets: int) -> int:
    """Largest Chebyshev distance from a perturbed input pixel to an output pixel it moves.

    Pixels are perturbed at several offsets inside a ``2**depth`` cell (an output pixel's
    reach depends on where it sits relative to the pooling grid) and with both signs (a
    ReLU or max-pool may block one sign); each perturbation is one item of one batch.
    """
    radius = model.receptive_field_radius
    size = 2 * radius + 2**depth + 4
    model = model.double().eval()
    base = torch.randn(1, model.spec.in_channels, size, size, dtype=torch.float64)
    step = max(1, 2**depth // n_offsets)
    first = size // 2 - 2 ** (depth - 1)  # every position lies at least `radius` from the edges
    positions = [first + k * step for k in range(n_offsets)]
    batch = [base]
    for p in positions:
        for amplitude in (10.0, -10.0):
            x = base.clone()
            x[0, :, p, p] += amplitude
            batch.append(x)
    with torch.no_grad():
        y = model(torch.cat(batch))
    changed = (y[1:] != y[:1]).any(dim=1)  # exact: pixels outside the field are bit-identical
    best = 0
    for i, p in enumerate(positions):
        for item in (2 * i, 2 * i + 1):
            rows, cols = changed[item].nonzero(as_tuple=True)
            if len(rows):
                best = max(best, int(torch.maximum((rows - p).abs(), (cols - p).abs()).max()))
    return best


@pytest.mark.parametrize(
    ("arch", "depth", "width", "in_channels", "n_offsets"),
    [(a, d, 3, c, 4) for a in ARCHS for d, c in ((2, 1), (3, 2))] + [("unet", 4, 2, 1, 4)],
)
def test_radius_is_safe_and_tight(arch: str, depth: int, width: int, in_channels: int, n_offsets: int) -> None:
    torch.manual_seed(depth)
    model = create_model(arch, in_channels=in_channels, width=width, depth=depth)
    reported = model.receptive_field_radius
    measured = measured_radius(model, depth, n_offsets)
    assert measured <= reported, f"{arch} depth {depth}: output moved {measured} px away, radius says {reported}"
    assert reported - measured <= 2**depth, f"{arch} depth {depth}: radius {reported} is loose (measured {measured})"


@pytest.mark.parametrize("arch", ARCHS)
def test_radius_grows_with_depth_and_ignores_width(arch: str) -> None:
    radii = [create_model(arch, width=2, depth=d).receptive_field_radius for d in (1, 2, 3)]
    assert radii[0] < radii[1] < radii[2]
    assert create_model(arch, width=5, depth=2).receptive_field_radius == radii[1]


def test_footprint_of_a_single_conv_and_pool() -> None:
    conv = nn.Conv2d(1, 1, 5, padding=2)
    assert trace(conv, Footprint(), 0).radius == 2
    dilated = nn.Conv2d(1, 1, 3, padding=2, dilation=2)
    assert trace(dilated, Footprint(), 1).radius == 2
    # pool, 3x3 conv at half resolution, 2x2 transposed conv back up:
    # a coarse pixel covers input px 0..1 and sees -2..3, so its left child (px 0) reaches
    # 2 px left and 3 px right, its right child (px 1) 3 px left and 2 px right.
    net = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1), nn.ConvTranspose2d(1, 1, 2, stride=2))
    fp = trace(net, Footprint(), 0)
    assert fp.jump == 1 and fp.reach == ((2, 3), (3, 2))
    assert fp.radius == 3


def test_unknown_layer_is_refused() -> None:
    with pytest.raises(TypeError, match="GroupNorm"):
        trace(nn.GroupNorm(1, 4), Footprint(), 0)
