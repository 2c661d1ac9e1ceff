"""CUDA paths (marked `gpu`; skipped where no CUDA device is visible, as in CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_cuda_tiled_equals_whole_scene(tmp_path: Path, precision: str) -> None:
    from rasterio.windows import Window

    from geounet.checkpoint import load_checkpoint, read_metadata
    from geounet.compute import default_halo, resolve_precision
    from geounet.infer.block import infer_block, run_model
    from geounet.scene.plan import plan_tiles
    from geounet.scene.read import prepare_input, read_window
    from geounet.scene.source import open_scene
    from tests.conftest import make_checkpoint, smooth_image, write_tif

    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 250, 333), seed=5))
    ckpt = make_checkpoint(tmp_path / "m.safetensors", width=8, depth=3)
    dev = torch.device("cuda")
    model = load_checkpoint(ckpt, device="cuda").to(memory_format=torch.channels_last)
    mi = read_metadata(ckpt)
    info = open_scene(scene, in_channels=3)
    dtype = resolve_precision(precision, dev)
    plan = plan_tiles(
        info.width,
        info.height,
        tile_size=160,
        halo=default_halo(model.receptive_field_radius, model.spec.multiple),
        multiple=model.spec.multiple,
        tiles_per_block=2,
    )
    tiled = np.zeros((model.spec.out_channels, info.height, info.width), np.float32)
    for b in plan.blocks:
        raw, valid = read_window(info, b.read)
        p = infer_block(model, prepare_input(raw, valid, mi.normalization), b, batch_size=4, device=dev, dtype=dtype)
        c = b.core
        tiled[:, int(c.row_off) : int(c.row_off + c.height), int(c.col_off) : int(c.col_off + c.width)] = p
    raw, valid = read_window(info, Window(0, 0, info.width, info.height))
    whole = run_model(model, prepare_input(raw, valid, mi.normalization), device=dev, dtype=dtype).numpy()[0]
    # fp32 on GPU uses TF32 convolutions by default; reduced precision rounds more
    assert np.abs(tiled - whole).max() <= (1e-3 if precision == "fp32" else 1e-2)


def test_cuda_predict_end_to_end(tmp_path: Path) -> None:
    import json

    from distributed import Client, LocalCluster

    from geounet.batch.run import run_scenes
    from geounet.settings import InferenceSettings
    from tests.conftest import make_checkpoint, smooth_image, write_tif

    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 300, 400), seed=6))
    ckpt = make_checkpoint(tmp_path / "m.safetensors", width=8, depth=3)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0", resources={"GPU": 1}
        ) as cluster,
        Client(cluster) as client,
    ):
        res = run_scenes(
            [str(scene)], ckpt, tmp_path / "out", InferenceSettings(device="cuda"), client=client, progress=False
        )
    assert res[0].status == "success", res[0].error
    assert json.loads((tmp_path / "out" / "s" / "scene.json").read_text())["status"] == "success"
