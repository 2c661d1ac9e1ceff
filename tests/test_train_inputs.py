"""Training reads and normalizes windows exactly as inference does (one reader, one validity
rule, one normalization): the same window gives the same tensor through both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from geounet.scene.normalize import MeanStd, Percentile
from geounet.scene.read import close_datasets, prepare_input, read_window
from geounet.scene.source import open_scene
from geounet.train import load_training_settings
from geounet.train.data import TrainScene, load_window, open_scenes
from geounet.train.sampling import WindowRef
from tests.test_train import write_config

# Windows inside the 128 x 64 px test scene: a corner, one over the nodata corner
# (rows 60+, columns 100+), one over the NaN patches of the float scene, the whole scene.
WINDOWS = [
    WindowRef(0, 0, 0, 32, 32),
    WindowRef(0, 32, 96, 32, 32),
    WindowRef(0, 40, 4, 24, 40),
    WindowRef(0, 0, 0, 64, 128),
]
NORMS = [
    MeanStd(mean=[40.0, 50.0, 60.0], std=[10.0, 20.0, 30.0]),
    Percentile(low=[10.0, 20.0, 30.0], high=[200.0, 150.0, 120.0]),
]


def _with_nan(image: Path) -> Path:
    """NaN in one band of some pixels and in every band of others."""
    with rasterio.open(image, "r+") as ds:
        data = ds.read()
        data[1, 50:, 0:20] = np.nan
        data[:, 5:9, 60:64] = np.nan
        ds.write(data)
    return image


@pytest.fixture(scope="module", params=["uint8-nodata", "uint16-nodata", "float32-nan"])
def scene(request, tmp_path_factory) -> tuple[TrainScene, Path]:
    folder = tmp_path_factory.mktemp(request.param)
    kind = {
        "uint8-nodata": {"nodata": 0},
        "uint16-nodata": {"dtype": "uint16", "nodata": 0},
        "float32-nan": {"dtype": "float32"},
    }[request.param]
    config = write_config(folder, folder / "run", scene=kind)
    if request.param == "float32-nan":
        _with_nan(folder / "scene.tif")
    return open_scenes(load_training_settings(config))[0], folder / "scene.tif"


@pytest.mark.parametrize("use_nodata", [True, False])
@pytest.mark.parametrize("norm", NORMS, ids=["meanstd", "percentile"])
@pytest.mark.parametrize("ref", WINDOWS, ids=["corner", "nodata-corner", "nan-patches", "whole"])
def test_training_window_equals_inference_window(scene, ref, norm, use_nodata):
    train_scene, image = scene
    x_train, _, weights = load_window(train_scene, ref, [1, 2, 3], norm, use_nodata=use_nodata)
    info = open_scene(image, in_channels=3, use_nodata=use_nodata)
    raw, valid = read_window(info, ref.window)
    x_infer = prepare_input(raw, valid, norm)
    assert x_train.dtype == x_infer.dtype == np.float32
    assert np.array_equal(x_train, x_infer)
    assert np.array_equal(weights > 0, valid)  # the loss ignores exactly the pixels inference calls invalid
    assert np.isfinite(x_train).all()


def test_the_scenes_invalid_pixels_are_seen(scene):
    """The cases above are not vacuous: nodata (or NaN) pixels exist in the windows, and
    ``use_nodata: false`` ignores nodata but never NaN."""
    train_scene, _ = scene
    ref = WINDOWS[-1]
    _, valid = train_scene.read(ref, [1, 2, 3])
    _, valid_ignoring_nodata = train_scene.read(ref, [1, 2, 3], use_nodata=False)
    assert not valid.all()
    if train_scene.dtype == "float32":
        assert not valid[50:, 0:20].any() and not valid[5:9, 60:64].any()
        assert np.array_equal(valid_ignoring_nodata, valid)  # NaN is invalid either way
    else:
        assert train_scene.has_mask and not valid[60:, 100:].any()
        assert valid_ignoring_nodata.all()


def test_training_reads_through_the_shared_dataset_cache(scene):
    train_scene, _ = scene
    close_datasets()
    train_scene.read(WINDOWS[0], [1, 2, 3])
    assert close_datasets() == 1  # the handle was in geounet.scene.read's per-thread cache
