"""Receptive fields computed from the layers themselves: which input pixels an output pixel sees.

Tiled inference chooses its halo from :attr:`SegmentationModel.receptive_field_radius`;
a radius that is too small produces seams, so the number must follow the real network,
not a hand-maintained formula. :func:`trace` walks convolutions, poolings and
upsamplings, reading their kernel sizes, strides, paddings and dilations, and refuses
layers it does not understand rather than guessing. A block whose wiring is more than a
chain (skips, gates, residual sums) describes itself with a ``trace_footprint`` method
(see :mod:`geounet.models.layers`); each architecture's ``footprint`` mirrors its
``forward`` with :class:`Footprint` values instead of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

from torch import nn

__all__ = ["Footprint", "footprint_radius", "trace"]


@dataclass(frozen=True)
class Footprint:
    """The input pixels a feature map's pixels depend on, along one image axis.

    A feature map whose pixels are ``jump`` input pixels apart (``jump = 2**level`` after
    ``level`` poolings) gives pixel ``p`` the *block* of input pixels
    ``[p*jump, p*jump + jump - 1]``. The pixel depends on no input pixel outside
    ``[p*jump - before, p*jump + jump - 1 + after]`` with
    ``(before, after) = reach[p % len(reach)]``.

    ``reach`` is a pattern rather than one pair because after an upsampling neighbouring
    fine pixels sit at different places inside their coarse parent: the left child of a
    2x2 transposed conv sees one more coarse pixel to its right than the right child.
    Keeping the pattern (instead of the worst case per step) keeps the final radius exact
    for the layers traced, so a tiling halo need not pay ``2**depth`` extra pixels.
    """

    jump: int = 1
    reach: tuple[tuple[int, int], ...] = ((0, 0),)

    @property
    def period(self) -> int:
        """Length of the repeating ``reach`` pattern, in feature pixels."""
        return len(self.reach)

    @property
    def radius(self) -> int:
        """Largest distance, in input pixels, from an output pixel to an input it uses.

        Only meaningful at full resolution (``jump == 1``), i.e. at the model's output.
        """
        if self.jump != 1:
            raise ValueError(f"radius is defined at full resolution; this map has jump {self.jump}")
        return max(0, *(max(before, after) for before, after in self.reach))

    def sample(self, stride: int, offsets: Sequence[int]) -> Footprint:
        """Footprint after a window op: new pixel ``q`` reads old pixels ``stride*q + o``.

        Covers convolutions and poolings (``o`` runs over the kernel taps shifted by the
        padding). Costs ``O(period * len(offsets))``.
        """
        j, period = self.jump, self.period
        new_period = period // math.gcd(period, stride)
        reach = []
        for q in range(new_period):
            parents = [(stride * q + o, self.reach[(stride * q + o) % period]) for o in offsets]
            before = max(-(p - stride * q) * j + r[0] for p, r in parents)
            after = max((p - stride * q + 1 - stride) * j + r[1] for p, r in parents)
            reach.append((before, after))
        return Footprint(j * stride, tuple(reach))

    def upsample(self, scale: int, parents: Callable[[int], Sequence[int]]) -> Footprint:
        """Footprint after a ``scale``-fold upsampling: new pixel ``q`` reads ``parents(q)``.

        ``parents`` must be shift-invariant (``parents(q + scale) == parents(q) + 1``),
        which holds for transposed convolutions and nearest/bilinear interpolation away
        from the image border; near the border they read fewer pixels, never more.
        """
        if self.jump % scale:
            raise ValueError(f"cannot upsample by {scale}: the map is only {self.jump}x coarser")
        j, fine, period = self.jump, self.jump // scale, self.period
        reach = []
        for q in range(period * scale):
            ps = parents(q)
            before = max(q * fine - i * j + self.reach[i % period][0] for i in ps)
            after = max(i * j + j - q * fine - fine + self.reach[i % period][1] for i in ps)
            reach.append((before, after))
        return Footprint(fine, tuple(reach))

    def union(self, *others: Footprint) -> Footprint:
        """Footprint of a concatenation or sum of maps at the same resolution."""
        maps = (self, *others)
        if len({m.jump for m in maps}) != 1:
            raise ValueError(f"cannot merge maps of different resolutions {[m.jump for m in maps]}")
        period = math.lcm(*(m.period for m in maps))
        reach = tuple(
            (max(m.reach[q % m.period][0] for m in maps), max(m.reach[q % m.period][1] for m in maps))
            for q in range(period)
        )
        return Footprint(self.jump, reach)


# Layers that act on each pixel independently (at inference: BatchNorm uses running stats).
_POINTWISE = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)


def _pair(v: int | Sequence[int], axis: int) -> int:
    return v if isinstance(v, int) else int(v[axis])


def _conv_offsets(module: nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d, axis: int) -> tuple[int, list[int]]:
    k = _pair(module.kernel_size, axis)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size, axis)
    dilation = _pair(getattr(module, "dilation", 1), axis)
    padding = module.padding
    if padding == "same":
        pad = dilation * (k - 1) // 2
    elif padding == "valid":
        pad = 0
    else:
        pad = _pair(padding, axis)  # type: ignore[arg-type]  # a str was handled above
    return stride, [-pad + dilation * t for t in range(k)]


def _transposed_parents(module: nn.ConvTranspose2d, axis: int) -> tuple[int, Callable[[int], list[int]]]:
    k, s = _pair(module.kernel_size, axis), _pair(module.stride, axis)
    pad = _pair(module.padding, axis)  # type: ignore[arg-type]  # a transposed conv pads by numbers only
    d = _pair(module.dilation, axis)

    def parents(q: int) -> list[int]:
        # output q receives input i through tap t when q = s*i - pad + d*t
        return [(q + pad - d * t) // s for t in range(k) if (q + pad - d * t) % s == 0]

    return s, parents


def _interpolation_parents(module: nn.Upsample, axis: int) -> tuple[int, Callable[[int], list[int]]]:
    factor = module.scale_factor
    if factor is None:
        raise TypeError("cannot trace nn.Upsample with a fixed size; give it a scale_factor")
    s = factor if isinstance(factor, (int, float)) else factor[axis]
    if float(s) != int(s) or int(s) < 1:
        raise TypeError(f"cannot trace nn.Upsample with non-integer scale_factor {s}")
    s = int(s)
    mode = module.mode
    if mode == "nearest":
        return s, lambda q: [q // s]
    if mode == "nearest-exact":
        return s, lambda q: [math.floor(Fraction(2 * q + 1, 2 * s))]
    if mode == "bilinear" and not module.align_corners:

        def parents(q: int) -> list[int]:
            src = Fraction(2 * q + 1, 2 * s) - Fraction(1, 2)
            low = math.floor(src)
            return [low] if src == low else [low, low + 1]

        return s, parents
    raise TypeError(f"cannot trace nn.Upsample(mode={mode!r}, align_corners={module.align_corners})")


def trace(module: nn.Module, fp: Footprint, axis: int) -> Footprint:
    """Footprint of ``module``'s output given its input's footprint ``fp``, along ``axis``.

    Understands convolutions, transposed convolutions, max/avg pooling, ``nn.Upsample``,
    pointwise layers, ``nn.Sequential`` and any module with a
    ``trace_footprint(fp, axis)`` method. Anything else raises ``TypeError``: an unknown
    layer could widen the receptive field, and an underestimate would cause seams.
    """
    if hasattr(module, "trace_footprint"):
        return cast(Callable[[Footprint, int], Footprint], module.trace_footprint)(fp, axis)
    if isinstance(module, nn.Sequential):
        for child in module:
            fp = trace(child, fp, axis)
        return fp
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        stride, offsets = _conv_offsets(module, axis)
        return fp.sample(stride, offsets)
    if isinstance(module, nn.ConvTranspose2d):
        return fp.upsample(*_transposed_parents(module, axis))
    if isinstance(module, nn.Upsample):
        return fp.upsample(*_interpolation_parents(module, axis))
    if isinstance(module, _POINTWISE):
        return fp
    raise TypeError(f"cannot compute the receptive field through {type(module).__name__}")


def footprint_radius(footprint: Callable[[int], Footprint]) -> int:
    """Chebyshev radius from a model's per-axis footprint function (max over H and W)."""
    return max(footprint(axis).radius for axis in (0, 1))
