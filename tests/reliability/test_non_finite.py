"""Non-finite pixels are nodata, like NaN: +-inf, and float64 values that would overflow to
+-inf in the model's float32 input, in any band. None of them reaches the model, a polygon or
the probability raster.

The probe model (probability ~1 exactly where band 1 is bright) with a building threshold of
0 makes every valid pixel a building, so the outputs show exactly which pixels were valid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from geounet.batch.run import run_scenes
from geounet.errors import ConfigError
from geounet.scene.normalize import MeanStd, Percentile, parse_normalization
from geounet.scene.read import prepare_input, read_window, representable
from geounet.scene.source import open_scene
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, write_tif
from tests.reliability._faults import assert_complete, no_partials

# threshold 0: every valid pixel is a building; two blocks per side, so holes cross a seam
SETTINGS = InferenceSettings(tile_size=64, halo=0, tiles_per_block=1, thresholds={"building": 0.0})
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def probe_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("probe") / "probe.safetensors", arch="probe", width=1, depth=4)


def _holes(h: int = 60, w: int = 70) -> np.ndarray:
    holes = np.zeros((h, w), bool)
    holes[20:30, 25:40] = True  # inside the bright region
    holes[:, 65:] = True  # a stripe along the right edge
    holes[55:, :] = True  # one along the bottom, across a block seam
    holes[3, 3] = True  # a single pixel
    return holes


def _scene(path: Path, holes: np.ndarray, fill: float, dtype: str, band: int | None = None) -> Path:
    """A float scene, band 1 bright in (10..60, 10..50), with ``fill`` in the ``holes``
    (in every band, or only in ``band``)."""
    img = np.full((3, *holes.shape), 90.0, dtype)
    img[0, 10:50, 10:60] = 255.0
    if band is None:
        img[:, holes] = fill
    else:
        img[band, holes] = fill
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_tif(path, img)


def _outputs(folder: Path) -> dict[str, object]:
    """Everything a scene folder holds, in comparable form (scene.json: its polygon counts)."""
    with rasterio.open(folder / "probability.tif") as ds:
        prob = ds.read()
    return {
        "buildings": json.loads((folder / "buildings.geojson").read_text())["features"],
        "roads": json.loads((folder / "roads.geojson").read_text())["features"],
        "probability": prob.tobytes(),
        "quicklook": np.asarray(Image.open(folder / "quicklook.png")).tobytes(),
        "polygons": json.loads((folder / "scene.json").read_text())["polygons"],
    }


# (fill value, scene dtype, band or None for all bands)
CASES = {
    "+inf": (np.inf, "float32", None),
    "-inf": (-np.inf, "float32", None),
    "+inf-in-band-3-only": (np.inf, "float32", 2),
    "float64-beyond-float32": (1e39, "float64", None),
    "float64--1e300-in-band-1-only": (-1e300, "float64", 0),
    "float64-+inf": (np.inf, "float64", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_non_finite_pixels_give_the_same_outputs_as_nan(
    tmp_path: Path, dask_local, probe_ckpt: Path, case: str
) -> None:
    fill, dtype, band = CASES[case]
    holes = _holes()
    nan = _scene(tmp_path / "nan" / "s.tif", holes, np.nan, dtype, band)
    odd = _scene(tmp_path / "odd" / "s.tif", holes, fill, dtype, band)
    outs = {}
    for name, scene in (("nan", nan), ("odd", odd)):
        out = tmp_path / f"out-{name}"
        res = run_scenes([str(scene)], probe_ckpt, out, SETTINGS, client=dask_local, progress=False)
        assert [r.status for r in res] == ["success"], [r.error for r in res]
        assert_complete(out / "s")
        assert no_partials(out) == []
        outs[name] = _outputs(out / "s")
    assert outs["odd"] == outs["nan"]
    # and the holes are really nodata: no polygon over them, probability 0 there
    with rasterio.open(tmp_path / "out-odd" / "s" / "probability.tif") as ds:
        assert ds.read()[:, holes].max() == 0 and ds.read(1)[15, 15] == 255
    json.loads((tmp_path / "out-odd" / "s" / "scene.json").read_text(), parse_constant=_refuse)


def _refuse(name: str) -> None:
    raise AssertionError(f"JSON output holds {name}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_read_window_marks_every_non_finite_pixel_invalid(tmp_path: Path, dtype: str) -> None:
    values = [np.nan, np.inf, -np.inf] + ([1e39, -1e39, 1e300] if dtype == "float64" else [])
    img = np.ones((3, 4, 8), dtype)
    for i, v in enumerate(values):
        img[i % 3, 1, i] = v  # one odd value in one band of pixel (1, i)
    img[1, 3, 7] = np.finfo(dtype).max if dtype != "float64" else F32_MAX  # large, finite: valid
    info = open_scene(str(write_tif(tmp_path / "s.tif", img)), in_channels=3)
    raw, valid = read_window(info, Window(0, 0, 8, 4))
    expected = np.ones((4, 8), bool)
    expected[1, : len(values)] = False
    assert np.array_equal(valid, expected)
    assert np.array_equal(representable(raw), expected)
    x = prepare_input(raw, valid, MeanStd(mean=[0.0] * 3, std=[255.0] * 3))
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert (x[:, ~expected] == 0).all()


def test_resampled_read_never_mixes_infinity_into_valid_pixels(tmp_path: Path) -> None:
    """Bilinear resampling (a scene brought to the model's pixel size) spreads an infinite
    pixel to its neighbours: they come out invalid too, never as valid non-finite values."""
    img = np.full((3, 16, 16), 100.0, np.float32)
    img[:, 7, 7] = np.inf
    img[0, 2, 12] = -np.inf
    info = open_scene(str(write_tif(tmp_path / "s.tif", img)), in_channels=3)
    raw, valid = read_window(info, Window(0, 0, 16, 16), out_shape=(23, 23))
    assert not valid.all() and valid.sum() > 400
    assert np.isfinite(raw[:, valid]).all()
    x = prepare_input(raw, valid, MeanStd(mean=[0.0] * 3, std=[255.0] * 3))
    assert np.isfinite(x).all()


def test_normalization_overflow_makes_the_pixel_invalid_not_infinite() -> None:
    """A finite pixel whose normalized value overflows float32 (statistics near float32's
    limits) is zeroed and marked invalid, in place, instead of reaching the model as inf."""
    raw = np.array([[[1.0, 3e38, -1e38]]], np.float32)
    valid = np.ones((1, 3), bool)
    x = prepare_input(raw, valid, MeanStd(mean=[-1e38], std=[0.5]))
    assert np.isfinite(x).all()
    assert valid.tolist() == [[True, False, True]] and x[0, 0, 1] == 0.0


@pytest.mark.parametrize(
    "norm",
    [
        {"kind": "meanstd", "mean": [1e39], "std": [1.0]},
        {"kind": "meanstd", "mean": [0.0], "std": [1e-50]},  # 0 in float32
        {"kind": "percentile", "low": [0.0], "high": [1e-50]},
        {"kind": "percentile", "low": [-1e39], "high": [0.0]},
    ],
)
def test_statistics_beyond_float32_are_refused(tmp_path: Path, norm: dict) -> None:
    with pytest.raises(ConfigError):
        parse_normalization(norm)
    with pytest.raises(ConfigError):  # a checkpoint cannot carry them either
        make_checkpoint(tmp_path / "m.safetensors", arch="probe", in_channels=1, width=1, depth=4, normalization=norm)
    assert not (tmp_path / "m.safetensors").exists()
    assert isinstance(parse_normalization({"kind": "meanstd", "mean": [3e38], "std": [1e-30]}), MeanStd)
    assert isinstance(parse_normalization({"kind": "percentile", "low": [-3e38], "high": [3e38]}), Percentile)
