"""A scene scaled unlike the model's training data runs, but is flagged: logged as a warning and
recorded in scene.json (``input_warning``) with the band, its values and the fix.

Reflectance 0-1, uint16 0-10000 and a uint8 image stored as int8 (values above 127 wrap to
negative) on a model trained on 0-255 are flagged; ordinary, very bright and very dark uint8
scenes are not. The pipeline cases run ``run_scenes`` in-process with the probe model, once with
the uint8 default normalization (mean 0, std 255) and once with the shipped model's statistics.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from geounet.batch.run import run_scenes
from geounet.checkpoint.io import read_metadata
from geounet.scene.normalize import (
    InputMoments,
    MeanStd,
    Percentile,
    apply_normalization,
    input_moments,
    input_warning,
    non_negative_training,
)
from geounet.settings import InferenceSettings
from tests.conftest import REPO, make_checkpoint, smooth_image, write_tif

SETTINGS = InferenceSettings(tile_size=64, halo=0, tiles_per_block=1)
SHAPE = (3, 150, 170)  # 3 x 3 blocks of 64 px: the moments are summed over blocks
DEFAULT_MODEL = REPO / "geounet" / "weights" / "default.safetensors"
FIX = "check --bands and the scene's scaling"


def _uint8(seed: int = 0) -> np.ndarray:
    """An ordinary uint8 RGB scene: smooth structure over the whole 0-255 range."""
    return smooth_image(SHAPE, seed)


def _uniform(low: int, high: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high + 1, SHAPE).astype(np.uint8)


SCENES: dict[str, tuple[np.ndarray, bool]] = {  # name -> (pixels, flagged)
    "uint8": (_uint8(), False),
    "bright-uint8": (_uniform(230, 250, 1), False),  # snow, sand
    "dark-uint8": (_uniform(10, 30, 2), False),  # water
    "reflectance-0-1": ((_uint8() / 255.0).astype(np.float32), True),
    "uint16-0-10000": ((_uint8().astype(np.float64) * (10000 / 255)).astype(np.uint16), True),
    "int8-wrapped": (_uint8().view(np.int8), True),  # a uint8 image stored as int8
}


@pytest.fixture(scope="module", params=["uint8-default", "shipped-model"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe model with the uint8 default (0/255) or the shipped model's normalization."""
    norm = None if request.param == "uint8-default" else read_metadata(DEFAULT_MODEL).normalization
    path = tmp_path_factory.mktemp("ckpt") / f"{request.param}.safetensors"
    return make_checkpoint(path, arch="probe", width=1, depth=4, normalization=norm)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scenes")
    return {name: write_tif(d / f"{name}.tif", pixels) for name, (pixels, _) in SCENES.items()}


def test_scenes_far_from_the_training_data_are_flagged(
    tmp_path: Path, dask_local, checkpoint: Path, scenes: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="geounet.batch.finalize"):
        res = run_scenes(
            [str(p) for p in scenes.values()], checkpoint, out, SETTINGS, client=dask_local, progress=False
        )
    assert [r.status for r in res] == ["success"] * len(scenes), [r.error for r in res]
    logged = [r.getMessage() for r in caplog.records if r.name == "geounet.batch.finalize"]
    for (name, path), r in zip(scenes.items(), res):
        record = json.loads((out / r.stem / "scene.json").read_text())
        warning = record["input_warning"]
        if not SCENES[name][1]:
            assert warning is None, (name, warning)
            continue
        assert warning is not None, name
        assert warning.startswith(f"scene {path}: its pixels are far from the data the model was trained on ("), warning
        assert "band 1: mean " in warning and FIX in warning and "the outputs may be meaningless" in warning, warning
        assert warning in logged, (warning, logged)
    assert len(logged) == sum(flagged for _, flagged in SCENES.values())


def _warning_for(name: str, norm: MeanStd | Percentile) -> str | None:
    pixels = SCENES[name][0]
    valid = np.ones(pixels.shape[1:], bool)
    moments = input_moments(apply_normalization(pixels, norm), valid, pixels)
    return input_warning(moments, norm, dtype=pixels.dtype.name, bands=[1, 2, 3], scene="s.tif")


@pytest.mark.parametrize("norm", [MeanStd(mean=[0.0] * 3, std=[255.0] * 3), None], ids=["uint8-default", "shipped"])
def test_messages_name_the_cause(norm: MeanStd | None) -> None:
    stats = norm or read_metadata(DEFAULT_MODEL).normalization
    reflectance = _warning_for("reflectance-0-1", stats) or ""
    assert "nearly constant to the model" in reflectance and "reflectance 0-1" in reflectance, reflectance
    uint16 = _warning_for("uint16-0-10000", stats) or ""
    assert "training standard deviations" in uint16 and "above the training mean" in uint16, uint16
    int8 = _warning_for("int8-wrapped", stats) or ""
    assert "of its pixels are negative but the training data had none" in int8, int8
    assert "); a uint8 image stored as int8 has its values above 127 wrapped to negative; check" in int8, int8
    assert ".view('uint8')" in int8, int8
    for name in ("uint8", "bright-uint8", "dark-uint8"):
        assert _warning_for(name, stats) is None, name


def test_moments_add_up_across_blocks_like_the_whole_array() -> None:
    rng = np.random.default_rng(3)
    raw = rng.integers(-128, 128, (2, 300, 70)).astype(np.int8)
    valid = rng.random((300, 70)) > 0.3
    x = apply_normalization(raw, MeanStd(mean=[10.0, -5.0], std=[40.0, 3.0]))
    whole = input_moments(x, valid, raw)  # 300 rows: two float64 stripes
    parts = [
        input_moments(x[:, r : r + 64, c : c + 32], valid[r : r + 64, c : c + 32], raw[:, r : r + 64, c : c + 32])
        for r in range(0, 300, 64)
        for c in range(0, 70, 32)
    ]
    summed = InputMoments.empty(2)
    for p in parts:
        summed = summed + p
    assert summed.count == whole.count == int(valid.sum())
    assert summed.negative == whole.negative == tuple(int(((raw[b] < 0) & valid).sum()) for b in range(2))
    np.testing.assert_allclose(summed.total, whole.total, rtol=1e-12)
    np.testing.assert_allclose(summed.squares, whole.squares, rtol=1e-12)
    sel = x[:, valid].astype(np.float64)
    np.testing.assert_allclose(whole.mean, sel.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(whole.std, sel.std(axis=1), rtol=1e-10)
    assert parts[0].combine(parts[1]) == parts[0] + parts[1]


def test_moments_edge_cases() -> None:
    x = np.ones((1, 4, 4), np.float32)
    none = input_moments(x, np.zeros((4, 4), bool))
    assert none.count == 0 and none.total == (0.0,) and all(math.isnan(v) for v in none.mean + none.std)
    assert input_warning(none, MeanStd(mean=[0.0], std=[1.0]), dtype="float32") is None
    assert input_moments(x, np.ones((4, 4), bool), np.full((1, 4, 4), 200, np.uint8)).negative == (0,)
    nan = np.array([[[np.nan, 2.0], [4.0, np.nan]]], np.float32)  # NaN only where invalid: ignored
    m = input_moments(nan, ~np.isnan(nan[0]))
    assert (m.count, m.total, m.squares, m.mean, m.std) == (2, (6.0,), (20.0,), [3.0], [1.0])
    with pytest.raises(ValueError, match="give valid as"):
        input_moments(x, np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="cannot add moments of 1 and 2 bands"):
        InputMoments.empty(1) + InputMoments.empty(2)


def test_non_negative_training() -> None:
    assert non_negative_training(MeanStd(mean=[0.0], std=[255.0]))  # the uint8 default
    assert non_negative_training(read_metadata(DEFAULT_MODEL).normalization)  # mean ~105, std ~71
    assert not non_negative_training(MeanStd(mean=[-15.0], std=[5.0]))  # e.g. SAR backscatter in dB
    assert non_negative_training(Percentile(low=[3.0], high=[250.0]))
    assert not non_negative_training(Percentile(low=[-20.0], high=[0.0]))


def test_signed_scene_is_flagged_only_on_non_negative_training_data() -> None:
    raw = SCENES["int8-wrapped"][0]
    valid = np.ones(raw.shape[1:], bool)
    dem = MeanStd(mean=[-15.0] * 3, std=[40.0] * 3)  # training data with negative values
    assert input_warning(input_moments(apply_normalization(raw, dem), valid, raw), dem, dtype="int8") is None
    few = np.full(raw.shape, 100, np.int8)
    few[:, 0, 0] = -5  # 1 negative pixel in 25500: below the 0.1% share
    norm = MeanStd(mean=[0.0] * 3, std=[255.0] * 3)
    assert input_warning(input_moments(apply_normalization(few, norm), valid, few), norm, dtype="int8") is None


def test_percentile_flags_a_scene_clipped_to_one_end() -> None:
    norm = Percentile(low=[20.0] * 3, high=[230.0] * 3)
    assert _warning_for("uint8", norm) is None
    assert _warning_for("dark-uint8", norm) is None  # 10-30: partly clipped, not all
    text = _warning_for("reflectance-0-1", norm) or ""  # all below 20: clipped to 0
    assert (
        "band 1: normalized mean 0, std 0: nearly every pixel is clipped to one end of the training range 20 to 230"
        in text
    )
    assert "clipped to one end" in (_warning_for("uint16-0-10000", norm) or "")  # nearly all clipped to 1


def test_a_uint8_scene_is_never_flagged_for_brightness_on_an_8_bit_model() -> None:
    from geounet.scene.normalize import eight_bit_training

    narrow = MeanStd(mean=[96.0] * 3, std=[26.0] * 3)  # mid-grey 8-bit training data: sand is +5.6 std
    assert eight_bit_training(narrow) and eight_bit_training(MeanStd(mean=[0.0] * 3, std=[255.0] * 3))
    assert not eight_bit_training(MeanStd(mean=[2000.0] * 3, std=[600.0] * 3))  # 16-bit training data
    reflectance = MeanStd(mean=[0.1] * 3, std=[0.05] * 3)  # reflectance 0-1 training data
    assert not eight_bit_training(reflectance)
    assert "above the training mean 0.1" in (_warning_for("bright-uint8", reflectance) or "")
    assert _warning_for("bright-uint8", narrow) is None
    assert _warning_for("dark-uint8", narrow) is None
    # the same bright pixels stored as uint16 are not known to be 8-bit: flagged by their mean
    bright16 = SCENES["bright-uint8"][0].astype(np.uint16)
    moments = input_moments(apply_normalization(bright16, narrow), np.ones(SHAPE[1:], bool), bright16)
    text = input_warning(moments, narrow, dtype="uint16", bands=[1, 2, 3], scene="s.tif") or ""
    assert "training standard deviations (26) above the training mean 96" in text, text
    # on 16-bit training statistics a bright uint8 scene is far below: flagged
    wide = MeanStd(mean=[4000.0] * 3, std=[600.0] * 3)
    assert "below the training mean 4000" in (_warning_for("bright-uint8", wide) or "")
    assert "training standard deviations" in (_warning_for("uint16-0-10000", narrow) or "")
