"""Seam-free stitching: tiled probabilities equal whole-scene inference of the same model.

This is the definition of "seam-free" in docs/architecture.md: with a halo of at least
the receptive-field radius, each core pixel sees exactly the input it would see in one
forward pass over the whole scene, so the stitched result equals that pass up to float
rounding. Tested on odd sizes, a scene smaller than one tile and exact multiples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.compute import default_halo, resolve_precision
from geounet.infer.block import infer_block, run_model
from geounet.scene.plan import plan_tiles
from geounet.scene.read import prepare_input, read_window
from geounet.scene.source import open_scene
from tests.conftest import make_checkpoint, smooth_image, write_tif


def tiled_and_whole(
    scene: Path, ckpt: Path, *, tile: int, halo: int | None, k: int, precision: str, tta: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The scene's probabilities tiled by the plan and in one whole-scene pass (with ``tta``,
    each tile, halo included, is transformed whole)."""
    model = load_checkpoint(ckpt)
    info = open_scene(scene, in_channels=model.spec.in_channels)
    mi = read_metadata(ckpt)
    device = torch.device("cpu")
    dtype = resolve_precision(precision, device)
    if halo is None:
        halo = default_halo(model.receptive_field_radius, model.spec.multiple)
    plan = plan_tiles(
        info.width, info.height, tile_size=tile, halo=halo, multiple=model.spec.multiple, tiles_per_block=k
    )
    tiled = np.full((model.spec.out_channels, info.height, info.width), np.nan, np.float32)
    for b in plan.blocks:
        raw, valid = read_window(info, b.read)
        x = prepare_input(raw, valid, mi.normalization)
        p = infer_block(model, x, b, batch_size=3, device=device, dtype=dtype, tta=tta)
        c = b.core
        tiled[:, int(c.row_off) : int(c.row_off + c.height), int(c.col_off) : int(c.col_off + c.width)] = p
    from rasterio.windows import Window

    raw, valid = read_window(info, Window(0, 0, info.width, info.height))
    x = prepare_input(raw, valid, mi.normalization)
    whole = run_model(model, x, device=device, dtype=dtype, tta=tta).numpy()[0]
    return tiled, whole


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", width=4, depth=3)


@pytest.mark.parametrize(
    "size,tile,k",
    [((333, 250), 160, 1), ((333, 250), 160, 2), ((37, 21), 160, 1), ((320, 192), 160, 1), ((257, 129), 192, 3)],
)
def test_tiled_equals_whole_scene_fp32(tmp_path: Path, ckpt: Path, size: tuple[int, int], tile: int, k: int) -> None:
    w, h = size
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, h, w), seed=w))
    tiled, whole = tiled_and_whole(scene, ckpt, tile=tile, halo=None, k=k, precision="fp32")
    assert not np.isnan(tiled).any(), "every pixel must be covered by exactly one core"
    assert np.abs(tiled - whole).max() <= 1e-3


def test_tiled_equals_whole_scene_default_precision(tmp_path: Path, ckpt: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 250, 333), seed=1))
    tiled, whole = tiled_and_whole(scene, ckpt, tile=160, halo=None, k=2, precision="auto")
    assert np.abs(tiled - whole).max() <= 1e-3


def test_too_small_halo_shows_seams(tmp_path: Path, ckpt: Path) -> None:
    """The test can fail: with no halo the tiles differ from whole-scene inference."""
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 250, 333), seed=2))
    tiled, whole = tiled_and_whole(scene, ckpt, tile=64, halo=0, k=1, precision="fp32")
    assert np.abs(tiled - whole).max() > 1e-3


def test_nodata_pixels_are_zero_input_and_never_polygons(tmp_path: Path, ckpt: Path) -> None:
    img = smooth_image((3, 90, 120), seed=3)
    img[:, :, :40] = 0
    scene = write_tif(tmp_path / "s.tif", img, nodata=0)
    info = open_scene(scene, in_channels=3)
    assert info.has_mask
    from rasterio.windows import Window

    raw, valid = read_window(info, Window(0, 0, 120, 90))
    assert not valid[:, :40].any() and valid[:, 40:].all()
