"""Losses: they reward correct logits, pass gradients and honour the ignore mask."""

from __future__ import annotations

import pytest
import torch

from geounet.errors import ModelInputError
from geounet.models import ModelSpec
from geounet.train.losses import BCEDiceLoss, CEDiceLoss, loss_for


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _binary_target(n: int = 2, c: int = 1, size: int = 8) -> torch.Tensor:
    return (torch.rand(n, c, size, size) > 0.7).float()


def _class_target(n: int = 2, k: int = 3, size: int = 8) -> torch.Tensor:
    return torch.randint(0, k, (n, size, size))


@pytest.mark.parametrize("channels", [1, 3])
def test_bce_dice_prefers_correct_logits(channels: int) -> None:
    target = _binary_target(c=channels)
    loss = BCEDiceLoss()
    good = loss((target * 2 - 1) * 12, target)
    random = loss(torch.randn_like(target), target)
    assert float(good) < 0.01 < 0.5 < float(random)


def test_ce_dice_prefers_correct_logits() -> None:
    target = _class_target(k=3)
    onehot = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    loss = CEDiceLoss()
    good = loss((onehot * 2 - 1) * 12, target)
    random = loss(torch.randn(2, 3, 8, 8), target)
    assert float(good) < 0.01 < 0.5 < float(random)


@pytest.mark.parametrize("loss_fn", [BCEDiceLoss(), CEDiceLoss()])
def test_gradients_flow(loss_fn: torch.nn.Module) -> None:
    if isinstance(loss_fn, CEDiceLoss):
        logits, target = torch.randn(2, 3, 8, 8, requires_grad=True), _class_target()
    else:
        logits, target = torch.randn(2, 2, 8, 8, requires_grad=True), _binary_target(c=2)
    loss_fn(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bce_accepts_nhw_target_for_one_channel() -> None:
    target = _binary_target()
    logits = torch.randn_like(target)
    torch.testing.assert_close(BCEDiceLoss()(logits, target[:, 0]), BCEDiceLoss()(logits, target))


def _scramble_where(t: torch.Tensor, ignored: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.where(ignored, values, t)


def test_bce_valid_mask_excludes_pixels() -> None:
    target, logits = _binary_target(c=2), torch.randn(2, 2, 8, 8)
    valid = torch.rand(2, 8, 8) > 0.3
    ignored = ~valid.unsqueeze(1).expand_as(target)
    loss = BCEDiceLoss()
    before = loss(logits, target, valid)
    after = loss(
        _scramble_where(logits, ignored, torch.randn_like(logits) * 9),
        _scramble_where(target, ignored, 1 - target),
        valid,
    )
    torch.testing.assert_close(before, after)
    assert not torch.allclose(before, loss(logits, target))


@pytest.mark.parametrize("use_index", [True, False])
def test_ce_ignored_pixels_do_not_count(use_index: bool) -> None:
    target, logits = _class_target(k=3), torch.randn(2, 3, 8, 8)
    ignored = torch.rand(2, 8, 8) > 0.6
    if use_index:
        loss = CEDiceLoss(ignore_index=255)
        a = loss(logits, torch.where(ignored, 255, target))
        b = loss(
            torch.where(ignored.unsqueeze(1), torch.randn_like(logits) * 9, logits), torch.where(ignored, 255, target)
        )
    else:
        loss = CEDiceLoss()
        a = loss(logits, target, valid=~ignored)
        b = loss(
            torch.where(ignored.unsqueeze(1), -logits, logits),
            torch.where(ignored, (target + 1) % 3, target),
            valid=~ignored,
        )
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, loss(logits, target))


def test_ce_without_dice_equals_cross_entropy() -> None:
    target, logits = _class_target(k=4), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(
        CEDiceLoss(dice_weight=0)(logits, target), torch.nn.functional.cross_entropy(logits, target)
    )


def test_ce_rejects_out_of_range_and_float_targets() -> None:
    logits = torch.randn(1, 3, 4, 4)
    with pytest.raises(ModelInputError, match=r"\[0, 3\)"):
        CEDiceLoss()(logits, torch.full((1, 4, 4), 3))
    with pytest.raises(ModelInputError, match="integer"):
        CEDiceLoss()(logits, torch.zeros(1, 4, 4))


def test_bce_rejects_mismatched_target() -> None:
    with pytest.raises(ModelInputError, match=r"\(1, 2, 4, 4\)"):
        BCEDiceLoss()(torch.randn(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


def test_fully_ignored_batch_gives_zero_loss() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = CEDiceLoss(ignore_index=255)(logits, torch.full((1, 4, 4), 255))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_losses_survive_bfloat16_logits() -> None:
    target = _class_target()
    loss = CEDiceLoss()(torch.randn(2, 3, 8, 8, dtype=torch.bfloat16), target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize(
    ("mode", "classes", "cls"),
    [
        ("binary", ("building",), BCEDiceLoss),
        ("multilabel", ("building", "road"), BCEDiceLoss),
        ("multiclass", ("building", "road"), CEDiceLoss),
    ],
)
def test_loss_for_follows_the_mode(mode: str, classes: tuple[str, ...], cls: type) -> None:
    spec = ModelSpec(arch="unet", classes=classes, mode=mode)  # type: ignore[arg-type]
    assert isinstance(loss_for(spec), cls)
    assert loss_for(spec, dice_weight=0.5).dice_weight == 0.5
