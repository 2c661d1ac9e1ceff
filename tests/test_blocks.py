"""Pure tiling plan: cores tile the scene once, tiles are aligned and keep their halo."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.compute import default_halo, round_up
from geounet.errors import ConfigError
from geounet.scene.plan import plan_tiles, tiles_along


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
            assert r.col_off >= 0 and r.col_off + r.width <= pw
            assert r.row_off >= 0 and r.row_off + r.height <= ph
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
            cover[int(c.row_off) : int(c.row_off + c.height), int(c.col_off) : int(c.col_off + c.width)] += 1
    assert (cover == 1).all(), "tile cores must cover every scene pixel exactly once"
    block_cover = np.zeros_like(cover)
    for b in plan.blocks:
        block_cover[
            int(b.core.row_off) : int(b.core.row_off + b.core.height),
            int(b.core.col_off) : int(b.core.col_off + b.core.width),
        ] += 1
    assert (block_cover == 1).all()
    # the fewest tiles along each axis, and no smaller tile side would do with that many
    th, tw = plan.tile_shape
    for padded, side, n in (
        (pw, tw, len({t.read.col_off for b in plan.blocks for t in b.tiles})),
        (ph, th, len({t.read.row_off for b in plan.blocks for t in b.tiles})),
    ):
        assert side <= tile and n == tiles_along(padded, tile, halo)
        if n > 1:
            assert n * (side - multiple - 2 * halo) + 2 * halo < padded


@pytest.mark.parametrize(
    "width,height",
    [(250, 333), (1, 1), (3, 3), (64, 64), (512, 512), (1024, 512), (1000, 7), (513, 1025)],
)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_plan_covers_odd_small_and_exact_sizes(width: int, height: int, k: int) -> None:
    _check(width, height, tile=256, halo=64, multiple=16, k=k)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 900),
    height=st.integers(1, 900),
    depth=st.integers(1, 5),
    halo_units=st.integers(0, 4),
    core_units=st.integers(1, 8),
    k=st.integers(1, 3),
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


def test_exact_multiple_gets_fewest_balanced_tiles() -> None:
    # 512 px, tiles of 256 with a 64 px halo: 3 tiles per axis cover 3 * 128 + 2 * 64 = 512 px
    # (cutting cores of 128 px from the origin took 4); the border tiles need no outer halo,
    # so their cores are 192 px
    plan = plan_tiles(512, 512, tile_size=256, halo=64, multiple=16)
    assert plan.n_tiles == 9 and plan.tile_shape == (256, 256)
    assert [(int(t.read.col_off), int(t.core.col_off), int(t.core.width)) for t in plan.blocks[0].tiles[:1]] == [
        (0, 0, 192)
    ]
    assert sorted({int(t.core.width) for b in plan.blocks for t in b.tiles}) == [128, 192]


def test_default_scene_tiling_wastes_no_sliver_tile() -> None:
    # 4096 px with the default 1024 px tiles and 112 px halo: 5 x 5 tiles of 1008 px
    # (1.51 model px per scene px), not 6 x 6 of 1024 px with 96 px cores in the last row (2.25)
    plan = plan_tiles(4096, 4096, tile_size=1024, halo=112, multiple=16)
    assert (plan.n_tiles, plan.tile_shape) == (25, (1008, 1008))
    assert plan.overhead == pytest.approx(25 * 1008**2 / 4096**2)
    assert plan_tiles(1100, 1100, tile_size=1024, halo=112, multiple=16).tile_shape == (672, 672)


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

    from geounet.compute import AUTO_BATCH, AUTO_TILES_PER_BLOCK, resolve_batch_size, resolve_tiles_per_block

    assert resolve_tiles_per_block(None, "cpu") == AUTO_TILES_PER_BLOCK["cpu"] == 1
    assert resolve_tiles_per_block(None, "cuda") == AUTO_TILES_PER_BLOCK["cuda"] == 3
    assert resolve_tiles_per_block(4, "cpu") == 4
    assert resolve_batch_size(None, torch.device("cpu")) == AUTO_BATCH["cpu"] == 1
    assert resolve_batch_size(None, torch.device("cuda")) == AUTO_BATCH["cuda"] == 8
    assert resolve_batch_size(5, torch.device("cpu")) == 5
