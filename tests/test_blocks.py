"""Pure tiling plan: cores tile the scene once, tiles are aligned and keep their halo."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.blocks import default_halo, plan_tiles, round_up
from geounet.errors import ConfigError


def _check(width: int, height: int, tile: int, halo: int, multiple: int, k: int) -> None:
    plan = plan_tiles(width, height, tile_size=tile, halo=halo, multiple=multiple, tiles_per_block=k)
    cover = np.zeros((height, width), np.int32)
    pw, ph = round_up(width, multiple), round_up(height, multiple)
    for block in plan.blocks:
        bc = block.core
        for t in block.tiles:
            r, c = t.read, t.core
            # origins on the 2**depth grid, inside the padded scene
            assert r.col_off % multiple == 0 and r.row_off % multiple == 0
            assert 0 <= r.col_off and r.col_off + r.width <= pw
            assert 0 <= r.row_off and r.row_off + r.height <= ph
            assert (r.height, r.width) == plan.tile_shape
            # core inside its read, with >= halo context except at the padded border
            assert r.col_off <= c.col_off and c.col_off + c.width <= r.col_off + r.width
            assert r.row_off <= c.row_off and c.row_off + c.height <= r.row_off + r.height
            if r.col_off > 0:
                assert c.col_off - r.col_off >= halo
            if r.row_off > 0:
                assert c.row_off - r.row_off >= halo
            if r.col_off + r.width < pw:
                assert r.col_off + r.width - (c.col_off + c.width) >= halo
            if r.row_off + r.height < ph:
                assert r.row_off + r.height - (c.row_off + c.height) >= halo
            # tile core inside the block core, tile read inside the block read
            assert bc.col_off <= c.col_off and c.col_off + c.width <= bc.col_off + bc.width
            assert block.read.col_off <= r.col_off <= r.col_off + r.width <= block.read.col_off + block.read.width
            cover[int(c.row_off):int(c.row_off + c.height), int(c.col_off):int(c.col_off + c.width)] += 1
    assert (cover == 1).all(), "tile cores must cover every scene pixel exactly once"
    block_cover = np.zeros_like(cover)
    for b in plan.blocks:
        block_cover[int(b.core.row_off):int(b.core.row_off + b.core.height),
                    int(b.core.col_off):int(b.core.col_off + b.core.width)] += 1
    assert (block_cover == 1).all()


@pytest.mark.parametrize(
    "width,height",
    [(250, 333), (1, 1), (3, 3), (64, 64), (512, 512), (1024, 512), (1000, 7), (513, 1025)],
)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_plan_covers_odd_small_and_exact_sizes(width: int, height: int, k: int) -> None:
    _check(width, height, tile=256, halo=64, multiple=16, k=k)


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 900), height=st.integers(1, 900), depth=st.integers(1, 5),
    halo_units=st.integers(0, 4), core_units=st.integers(1, 8), k=st.integers(1, 3),
)
def test_plan_property(width: int, height: int, depth: int, halo_units: int, core_units: int, k: int) -> None:
    m = 2**depth
    halo = halo_units * m
    tile = 2 * halo + core_units * m
    _check(width, height, tile, halo, m, k)


def test_scene_smaller_than_one_tile_is_one_tile_of_padded_size() -> None:
    plan = plan_tiles(100, 37, tile_size=256, halo=64, multiple=16)
    assert len(plan.blocks) == 1 and plan.n_tiles == 1
    assert plan.tile_shape == (48, 112)  # padded to multiples of 16: exactly whole-scene inference


def test_exact_multiple_has_no_partial_tiles() -> None:
    plan = plan_tiles(512, 512, tile_size=256, halo=64, multiple=16)
    cores = {(int(t.core.width), int(t.core.height)) for b in plan.blocks for t in b.tiles}
    assert cores == {(128, 128)}
    assert plan.n_tiles == 16


def test_default_halo_rounds_receptive_field_up() -> None:
    assert default_halo(92, 16) == 96
    assert default_halo(96, 16) == 96
    assert default_halo(0, 16) == 0


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"tile_size": 250, "halo": 64, "multiple": 16}, "tile_size 250 must be a multiple of 16"),
        ({"tile_size": 256, "halo": 60, "multiple": 16}, "halo 60 must be a multiple of 16"),
        ({"tile_size": 128, "halo": 64, "multiple": 16}, "leaves a core of 0 px"),
    ],
)
def test_bad_sizes_say_value_and_fix(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        plan_tiles(300, 300, **kwargs)


def test_device_defaults_for_blocks_and_batches() -> None:
    """Unset tiles_per_block / batch_size take the device's measured defaults; set ones win."""
    import torch

    from geounet.infer import AUTO_BATCH, resolve_batch_size
    from geounet.pipeline import AUTO_TILES_PER_BLOCK, resolve_tiles_per_block
    from geounet.settings import InferenceSettings

    assert resolve_tiles_per_block(InferenceSettings(device="cpu")) == AUTO_TILES_PER_BLOCK["cpu"] == 1
    assert resolve_tiles_per_block(InferenceSettings(device="cuda")) == AUTO_TILES_PER_BLOCK["cuda"] == 3
    assert resolve_tiles_per_block(InferenceSettings(device="cpu", tiles_per_block=4)) == 4
    assert resolve_batch_size(None, torch.device("cpu")) == AUTO_BATCH["cpu"] == 1
    assert resolve_batch_size(None, torch.device("cuda")) == AUTO_BATCH["cuda"] == 8
    assert resolve_batch_size(5, torch.device("cpu")) == 5
