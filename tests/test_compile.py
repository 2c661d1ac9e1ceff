"""``compile: true``: the model runs through torch.compile, with the same outputs, compiled
once per tile shape even when two worker threads meet it together, and plain PyTorch when
compiling fails."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geounet.infer import CompiledForward, get_model, prepare_for_inference, run_model
from geounet.pipeline import run_scenes
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, smooth_image, write_tif

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile on CPU needs a C++ compiler")


def _model(tmp_path: Path):
    from geounet.checkpoint import load_checkpoint

    ckpt = make_checkpoint(tmp_path / "m.safetensors", width=4, depth=2)
    return ckpt, prepare_for_inference(load_checkpoint(ckpt))


@needs_compiler
@pytest.mark.timeout(600)
def test_compiled_forward_equals_plain_and_compiles_once_across_threads(tmp_path: Path) -> None:
    _, model = _model(tmp_path)
    x = torch.rand(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    plain = run_model(model, x, device=torch.device("cpu"), dtype=torch.float32)
    compiled = CompiledForward(model.forward_padded)
    model.forward_padded = compiled
    outs: list[torch.Tensor] = []

    def call() -> None:
        outs.append(run_model(model, x, device=torch.device("cpu"), dtype=torch.float32))

    threads = [threading.Thread(target=call) for _ in range(2)]  # both meet the new shape
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compiled.failed is None, compiled.failed
    assert compiled.ready == {((1, 3, 64, 64), "cpu", False)}  # compiled once, for this shape
    assert len(outs) == 2
    for out in outs:
        assert float((out - plain).abs().max()) <= 1e-4


def test_failed_compile_warns_and_runs_plain_pytorch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _, model = _model(tmp_path)
    x = torch.rand(1, 3, 32, 32)
    plain = run_model(model, x, device=torch.device("cpu"), dtype=torch.float32)

    def broken_compile(fn, **kw):  # what a machine without a C++ compiler ends up raising
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model.forward_padded = CompiledForward(model.forward_padded)
    with caplog.at_level(logging.WARNING, logger="geounet.infer"):
        out = run_model(model, x, device=torch.device("cpu"), dtype=torch.float32)
        again = run_model(model, x, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(out, plain) and torch.equal(again, plain)
    assert "No working C++ compiler" in model.forward_padded.failed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running the model without compiling" in warnings[0]


def test_model_cache_keeps_compiled_and_plain_copies_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # no compiling needed here
    ckpt, _ = _model(tmp_path)
    plain = get_model(str(ckpt), "hash-a", torch.device("cpu"))
    comp = get_model(str(ckpt), "hash-a", torch.device("cpu"), compile=True)
    assert comp is not plain and comp is get_model(str(ckpt), "hash-a", torch.device("cpu"), compile=True)
    assert isinstance(comp.forward_padded, CompiledForward)
    assert not isinstance(plain.forward_padded, CompiledForward)


@needs_compiler
@pytest.mark.timeout(600)
def test_compiled_run_writes_the_same_outputs_with_full_size_tiles(tmp_path: Path, dask_local) -> None:
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 150, 230), seed=3))
    ckpt = make_checkpoint(tmp_path / "m.safetensors", width=4, depth=2)
    base = dict(tile_size=96, precision="fp32", tiles_per_block=1)
    recs, probs = [], []
    for name, compile_ in (("plain", False), ("compiled", True)):
        res = run_scenes([str(scene)], ckpt, tmp_path / name, InferenceSettings(compile=compile_, **base),
                         client=dask_local, progress=False)
        assert res[0].status == "success", res[0].error
        recs.append(json.loads((tmp_path / name / "s" / "scene.json").read_text()))
        with rasterio.open(tmp_path / name / "s" / "probability.tif") as ds:
            probs.append(ds.read())
    # the worker really ran the compiled graph (no silent fallback)
    from geounet import infer
    from geounet.pipeline import ModelInfo

    digest = ModelInfo.from_checkpoint(ckpt).content_hash
    fwd = infer._MODELS[(digest, "cpu", True)].forward_padded
    assert isinstance(fwd, CompiledForward) and fwd.failed is None
    assert fwd.ready == {((1, 3, 96, 96), "cpu", False)}
    # the same fingerprint (compile is performance-only), so resume treats them alike
    assert recs[0]["config_hash"] == recs[1]["config_hash"]
    # plain tiling shrinks the tiles; compiled keeps tile_size so every scene has one shape
    assert recs[1]["tiling"]["tile_shape"] == [96, 96] and recs[0]["tiling"]["tile_shape"] != [96, 96]
    # seam-free either way: the probabilities agree to the uint8 step
    assert np.abs(probs[0].astype(int) - probs[1].astype(int)).max() <= 1
    assert recs[0]["polygons"] == recs[1]["polygons"]
