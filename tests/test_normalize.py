"""Per-band normalization: readable numbers, validation messages, statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from geounet.errors import ConfigError, ModelInputError
from geounet.scene.normalize import (
    MeanStd,
    Percentile,
    apply_normalization,
    compute_normalization,
    default_normalization,
    parse_normalization,
)


def test_meanstd_on_readable_numbers() -> None:
    x = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)  # band 0: 0..5, band 1: 6..11
    out = apply_normalization(x, MeanStd(mean=[1, 6], std=[2, 4]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], (np.arange(6).reshape(2, 3) - 1) / 2)
    np.testing.assert_array_equal(out[1], (np.arange(6, 12).reshape(2, 3) - 6) / 4)


def test_percentile_clips_16bit() -> None:
    x = np.array([[[0, 100, 200, 300, 65535]]], dtype=np.uint16)
    out = apply_normalization(x, Percentile(low=[100], high=[300]))
    np.testing.assert_array_equal(out, np.array([[[0.0, 0.0, 0.5, 1.0, 1.0]]], dtype=np.float32))


def test_float32_input_is_not_modified() -> None:
    x = np.full((1, 2, 2), 10.0, dtype=np.float32)
    out = apply_normalization(x, MeanStd(mean=[2], std=[4]))
    assert out is not x and not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, 10.0)
    np.testing.assert_array_equal(out, 2.0)


def test_default_maps_uint8_to_unit_range() -> None:
    norm = default_normalization(3)
    assert norm == MeanStd(mean=[0, 0, 0], std=[255, 255, 255])
    x = np.array([0, 255], dtype=np.uint8).reshape(1, 1, 2).repeat(3, axis=0)
    np.testing.assert_array_equal(apply_normalization(x, norm)[:, 0], [[0, 1]] * 3)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"kind": "meanstd", "mean": [0, 0], "std": [1]}, ["mean has 2 values", "std has 1", "one mean and one std"]),
        ({"kind": "meanstd", "mean": [0, 0], "std": [1, 0]}, ["std must be > 0", "[1.0, 0.0]", "drop that band"]),
        ({"kind": "meanstd", "mean": [], "std": []}, ["one value per input band"]),
        ({"kind": "meanstd", "mean": [float("nan")], "std": [1]}, ["finite", "nodata"]),
        (
            {"kind": "percentile", "low": [5, 5], "high": [10, 5]},
            ["high must be greater than low", "[5.0, 5.0]", "band indexes [1]"],
        ),
        ({"kind": "percentile", "low": [0], "high": [1, 2]}, ["low has 1 values", "high has 2"]),
        ({"kind": "minmax", "low": [0], "high": [1]}, ["kind"]),
        ({"kind": "meanstd", "mean": [0], "std": [1], "scale": 2}, ["unknown key", "scale"]),
    ],
)
def test_validation_messages_state_values_and_fix(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_normalization(kwargs, source="model.yaml")
    msg = str(info.value)
    assert "model.yaml" in msg
    for w in words:
        assert w in msg


def test_models_reject_bad_values_directly() -> None:
    with pytest.raises(ValidationError, match="std must be > 0"):
        MeanStd(mean=[0], std=[-1])


def test_parse_round_trips_json_form() -> None:
    norm = Percentile(low=[1, 2], high=[3, 4])
    assert parse_normalization(norm.model_dump(mode="json")) == norm
    assert parse_normalization(norm) is norm


@pytest.mark.parametrize(
    ("x", "words"),
    [
        (np.zeros((2, 4, 4)), ["2 bands", "describes 3", "band"]),
        (np.zeros((4, 4)), ["(bands, height, width)", "(4, 4)"]),
    ],
)
def test_apply_rejects_wrong_shapes(x: np.ndarray, words: list[str]) -> None:
    with pytest.raises(ModelInputError) as info:
        apply_normalization(x, default_normalization(3))
    for w in words:
        assert w in str(info.value)


def test_compute_meanstd() -> None:
    samples = np.array([[0, 2, 4, 6], [10, 10, 20, 20]], dtype=np.uint8)
    norm = compute_normalization(samples, "meanstd")
    assert isinstance(norm, MeanStd)
    assert norm.mean == [3.0, 15.0]
    assert norm.std == pytest.approx([np.sqrt(5.0), 5.0])


def test_compute_percentile_is_2nd_and_98th() -> None:
    samples = np.stack([np.arange(101, dtype=np.uint16), np.arange(101, dtype=np.uint16) * 10])
    norm = compute_normalization(samples, "percentile")
    assert isinstance(norm, Percentile)
    assert norm.low == pytest.approx([2.0, 20.0])
    assert norm.high == pytest.approx([98.0, 980.0])


@pytest.mark.parametrize(
    ("samples", "kind", "words"),
    [
        (np.array([[1.0, 1.0, 1.0]]), "meanstd", ["std must be > 0", "constant"]),
        (np.array([[5, 5, 5, 5]]), "percentile", ["high must be greater than low"]),
        (np.array([[1.0, np.nan, 2.0]]), "meanstd", ["NaN", "[1]", "nodata"]),
        (np.zeros((3,)), "meanstd", ["(bands, n)", "(3,)", "reshape"]),
        (np.zeros((1, 3)), "zscore", ["'zscore'", "meanstd"]),
    ],
)
def test_compute_errors(samples: np.ndarray, kind: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        compute_normalization(samples, kind)  # type: ignore[arg-type]
    for w in words:
        assert w in str(info.value)


@settings(max_examples=25, deadline=None)
@given(
    data=st.lists(st.integers(0, 65535), min_size=4, max_size=4),
    mean=st.floats(-1000, 1000),
    std=st.floats(0.5, 1000),
)
def test_meanstd_matches_formula(data: list[int], mean: float, std: float) -> None:
    x = np.array(data, dtype=np.uint16).reshape(1, 2, 2)
    out = apply_normalization(x, MeanStd(mean=[mean], std=[std]))
    expected = (x.astype(np.float32) - np.float32(mean)) / np.float32(std)
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=25, deadline=None)
@given(
    data=st.lists(st.floats(-1e6, 1e6), min_size=4, max_size=4),
    low=st.floats(-100, 100),
    span=st.floats(0.5, 1000),
)
def test_percentile_output_in_unit_range(data: list[float], low: float, span: float) -> None:
    x = np.array(data, dtype=np.float64).reshape(1, 2, 2)
    out = apply_normalization(x, Percentile(low=[low], high=[low + span]))
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
