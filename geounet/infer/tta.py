"""Test-time augmentation: probabilities averaged over the 8 dihedral transforms of a tile.

Each transform (0-3 quarter turns, with or without a left-right flip) is applied to the
whole model input -- the tile with its halo -- the model's probabilities (after
sigmoid/softmax) are transformed back and the 8 results averaged, before any threshold.

Why tiling stays seam-free: the input is first zero-padded on the right and bottom to a
multiple of ``2**depth``, as the model itself would pad it, and only then transformed. A
tile of the plan is already such a multiple (its origin and size lie on the ``2**depth``
grid of the padded scene), so a flip or turn of the padded scene maps each tile onto a tile
of the flipped or turned padded scene, again on the ``2**depth`` grid, its halo still on
every interior side. Each transformed tile therefore sees what the same transform of the
whole (padded) scene sees around its core, and stitched TTA probabilities equal whole-scene
TTA probabilities (tests/test_tta.py). Padding *after* the transform would put the padding
of a flipped scene on its left edge, where no tile has it.

Cost: 8 forward passes per tile; memory: one more probability tensor per batch (the sum).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# (quarter turns counter-clockwise, flip left-right first): the 8 symmetries of a square
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """``x`` (..., H, W) flipped left-right (if ``flip``), then turned ``turns`` quarter turns."""
    y = torch.flip(x, (-1,)) if flip else x
    return torch.rot90(y, turns, (-2, -1)) if turns % 4 else y


def invert(y: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """Undo :func:`transform` (turn back, then flip back)."""
    z = torch.rot90(y, -turns, (-2, -1)) if turns % 4 else y
    return torch.flip(z, (-1,)) if flip else z


def dihedral_mean(
    probabilities: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int
) -> torch.Tensor:
    """Mean of ``probabilities`` (a batch (N, C, H, W) -> (N, K, H, W) function) over the
    8 dihedral transforms of ``x``, each transformed back; ``x`` is zero-padded on the right
    and bottom to ``multiple`` first and the result cropped back to its size.

    The transforms are summed in :data:`DIHEDRAL`'s order, so the result is deterministic.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="constant", value=0.0)
    total = probabilities(x)  # DIHEDRAL[0], the identity
    for turns, flip in DIHEDRAL[1:]:
        total.add_(invert(probabilities(transform(x, turns, flip)), turns, flip))
    total.div_(len(DIHEDRAL))
    return total[..., :h, :w]
