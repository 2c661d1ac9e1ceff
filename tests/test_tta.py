"""Test-time augmentation: 8 flips and quarter turns, each undone, averaged; still seam-free."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rasterio.windows import Window

from geounet.batch.run import run_scenes
from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.cli.options import inference_options, inference_overrides
from geounet.config import load_config
from geounet.infer.block import run_model
from geounet.infer.tta import DIHEDRAL, dihedral_mean, invert, transform
from geounet.models.base import activate
from geounet.scene.read import prepare_input, read_window
from geounet.scene.source import open_scene
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, smooth_image, write_tif
from tests.test_seamless import tiled_and_whole


def test_the_eight_transforms_are_distinct_and_each_is_undone() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)  # not square
    seen = set()
    for turns, flip in DIHEDRAL:
        y = transform(x, turns, flip)
        assert y.shape[-2:] == ((6, 4) if turns % 2 else (4, 6))
        seen.add(tuple(y[0, 0].flatten().tolist()))
        assert torch.equal(invert(y, turns, flip), x)
    assert len(DIHEDRAL) == 8 and len(seen) == 8


def test_dihedral_mean_of_an_equivariant_function_is_the_function() -> None:
    """A per-pixel function commutes with every flip and turn: TTA leaves it unchanged
    (and the padding is cropped away)."""
    x = torch.rand(1, 3, 13, 21)
    fn = lambda t: torch.sigmoid(t[:, :1] * 3 - 1)  # noqa: E731
    assert torch.allclose(dihedral_mean(fn, x, 8), fn(x), atol=1e-6)


def test_tta_changes_a_real_model_output(tmp_path: Path) -> None:
    """The test below can fail: a random UNet is not flip-invariant, so TTA is no identity."""
    model = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", width=4, depth=3))
    x = torch.rand(1, 3, 40, 56)
    plain = run_model(model, x, device=torch.device("cpu"), dtype=torch.float32)
    tta = run_model(model, x, device=torch.device("cpu"), dtype=torch.float32, tta=True)
    assert tta.shape == plain.shape and (tta - plain).abs().max() > 1e-2
    with torch.inference_mode():  # the mean of the 8 probabilities, each transformed back
        by_hand = sum(invert(activate(model(transform(x, k, f)), model.spec.mode), k, f) for k, f in DIHEDRAL) / len(
            DIHEDRAL
        )
    assert torch.allclose(tta, by_hand, atol=1e-5)


# --------------------------------------------------------------------------- seam-free
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", width=4, depth=3)


@pytest.mark.parametrize("size,tile,k", [((333, 250), 160, 1), ((333, 250), 160, 2), ((37, 21), 160, 1)])
def test_tiled_equals_whole_scene_with_tta(
    tmp_path: Path, ckpt: Path, size: tuple[int, int], tile: int, k: int
) -> None:
    w, h = size
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, h, w), seed=w + 1))
    tiled, whole = tiled_and_whole(scene, ckpt, tile=tile, halo=None, k=k, precision="fp32", tta=True)
    assert not np.isnan(tiled).any(), "every pixel must be covered by exactly one core"
    assert np.abs(tiled - whole).max() <= 1e-3


def test_padding_after_the_flip_would_show_seams(tmp_path: Path, ckpt: Path) -> None:
    """Why the input is padded before it is transformed: transforming the unpadded scene puts
    the model's padding on its left/top edges, which no tile has, and the results differ."""
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 250, 333), seed=9))  # not a multiple of 8
    tiled, _ = tiled_and_whole(scene, ckpt, tile=160, halo=None, k=1, precision="fp32", tta=True)
    model = load_checkpoint(ckpt)
    info = open_scene(scene, in_channels=3)
    raw, valid = read_window(info, Window(0, 0, info.width, info.height))
    x = torch.as_tensor(prepare_input(raw, valid, read_metadata(ckpt).normalization))[None]
    with torch.inference_mode():
        late = sum(invert(activate(model(transform(x, k, f)), model.spec.mode), k, f) for k, f in DIHEDRAL) / 8
    assert np.abs(tiled - late.numpy()[0]).max() > 1e-3


# --------------------------------------------------------------------------- settings and runs
def test_tta_flag_and_setting(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    @click.command()
    @inference_options
    def cmd(**kw: object) -> None:
        seen.update(inference_overrides(dict(kw)))

    assert CliRunner().invoke(cmd, ["--tta", "--gsd", "0.3"]).exit_code == 0
    assert seen["tta"] is True and seen["gsd_m"] == 0.3
    assert CliRunner().invoke(cmd, []).exit_code == 0
    assert seen["tta"] is None and seen["gsd_m"] is None  # not given: the file wins
    cfg = tmp_path / "inference.yaml"
    cfg.write_text("tta: true\ngsd_m: 0.5\n")
    assert load_config(InferenceSettings, cfg, {"tta": None}).tta is True
    assert load_config(InferenceSettings, cfg, {"tta": False}).tta is False  # --no-tta wins
    assert InferenceSettings().tta is False


def test_tta_run_is_recorded_and_not_resumed_from_a_plain_run(tmp_path: Path, dask_local) -> None:
    img = np.zeros((3, 60, 80), np.uint8)
    img[0, 10:30, 20:50] = 255
    scene = write_tif(tmp_path / "s.tif", img)
    probe = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=2)
    out = tmp_path / "out"
    plain = InferenceSettings(tile_size=32, halo=0, formats=["geojson"])
    assert run_scenes([str(scene)], probe, out, plain, client=dask_local, progress=False)[0].status == "success"
    first = json.loads((out / "s" / "buildings.geojson").read_text())
    tta = plain.model_copy(update={"tta": True})
    res = run_scenes([str(scene)], probe, out, tta, client=dask_local, progress=False)
    assert res[0].status == "success", "a TTA run must not reuse a plain run's outputs"
    rec = json.loads((out / "s" / "scene.json").read_text())
    assert rec["tiling"]["tta"] is True and rec["options"]["tta"] is True
    # the probe is a 1x1 convolution: flips and turns commute with it, the polygons are the same
    assert json.loads((out / "s" / "buildings.geojson").read_text())["features"] == first["features"]
    assert run_scenes([str(scene)], probe, out, tta, client=dask_local, progress=False)[0].status == "skipped"
