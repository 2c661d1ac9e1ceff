"""The quicklook picture assembled from block parts equals averaging the whole scene."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.thumbnail import (
    ThumbnailCanvas,
    block_thumbnail,
    display_bands,
    thumbnail_factor,
    thumbnail_shape,
)


def _whole_average(rgb: np.ndarray, valid: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: mean of the valid pixels of every f x f cell, computed cell by cell."""
    _, h, w = rgb.shape
    rows, cols = thumbnail_shape(w, h, f)
    mean = np.zeros((3, rows, cols))
    ok = np.zeros((rows, cols), bool)
    for i in range(rows):
        for j in range(cols):
            v = valid[i * f : (i + 1) * f, j * f : (j + 1) * f]
            if v.any():
                ok[i, j] = True
                cell = np.nan_to_num(rgb[:, i * f : (i + 1) * f, j * f : (j + 1) * f].astype(np.float64))
                mean[:, i, j] = cell[:, v].mean(axis=1)
    return mean, ok


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 70), w=st.integers(1, 70), factor=st.integers(1, 9),
    block_h=st.integers(1, 40), block_w=st.integers(1, 40),
    dtype=st.sampled_from(["uint8", "uint16", "float32"]), nodata=st.booleans(), seed=st.integers(0, 2**16),
)
def test_parts_from_any_block_grid_add_up_to_the_whole_average(
    h: int, w: int, factor: int, block_h: int, block_w: int, dtype: str, nodata: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 250, (3, h, w)).astype(dtype)
    valid = rng.random((h, w)) > 0.3 if nodata else np.ones((h, w), bool)
    if dtype == "float32" and nodata:
        rgb[:, ~valid] = np.nan  # a float scene's nodata pixels may hold NaN
    canvas = ThumbnailCanvas(w, h, factor)
    for r in range(0, h, block_h):
        for c in range(0, w, block_w):
            sl = (slice(r, r + block_h), slice(c, c + block_w))
            canvas.add(block_thumbnail(rgb[:, sl[0], sl[1]], valid[sl], row_off=r, col_off=c, factor=factor))
    mean, ok = canvas.image()
    want_mean, want_ok = _whole_average(rgb, valid, factor)
    assert mean.shape == (3, *thumbnail_shape(w, h, factor))
    assert np.array_equal(ok, want_ok)
    np.testing.assert_allclose(mean[:, ok], want_mean[:, ok], rtol=1e-5, atol=1e-3)


def test_factor_and_shape_fit_the_requested_size() -> None:
    assert thumbnail_factor(200, 150, 1024) == 1 and thumbnail_shape(200, 150, 1) == (150, 200)
    f = thumbnail_factor(4097, 1000, 1024)
    assert f == 5 and max(thumbnail_shape(4097, 1000, f)) <= 1024
    assert thumbnail_factor(40000, 40000, 1024) == 40
    with pytest.raises(ValueError, match="quicklook size"):
        thumbnail_factor(10, 10, 0)


def test_grey_scenes_are_shown_as_grey() -> None:
    one = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    shown = display_bands(one)
    assert shown.shape == (3, 3, 4) and all(np.array_equal(shown[i], one[0]) for i in range(3))
    four = np.zeros((4, 2, 2))
    assert display_bands(four).shape == (3, 2, 2)
