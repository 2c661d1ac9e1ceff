"""Spatial split without leakage, class-balanced sampling, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from geounet.errors import ConfigError
from geounet.train.sampling import (
    Rect,
    WindowRef,
    WindowSampler,
    balanced_weights,
    checkerboard_split,
    random_windows,
    strip_split,
    tile_rects,
)


def assert_no_leakage(train, val, size, gap, n=400, seed=0):
    rng = np.random.default_rng(seed)
    windows = random_windows(train, size, n, rng)
    tiles = tile_rects(val, 64)
    for w in windows:  # every training window lies inside a training area...
        assert any(
            r.row0 <= w.row and w.row + size <= r.row1 and r.col0 <= w.col and w.col + size <= r.col1 for r in train
        )
    for w, t in itertools.product(windows, tiles):  # ...and keeps its distance from validation pixels
        if w.scene == t.scene:
            assert not w.intersects(t)
            assert w.distance(t) >= gap
    for a, b in itertools.product(train, val):
        if a.scene == b.scene:
            assert WindowRef(a.scene, a.row0, a.col0, a.height, a.width).distance(b) >= gap


def test_strip_split_numbers_and_no_leakage():
    train, val = strip_split(0, 400, 1000, val_fraction=0.2, gap=64, window=64)
    assert train == [Rect(0, 0, 0, 400, 736)]
    assert val == [Rect(0, 0, 800, 400, 1000)]
    assert_no_leakage(train, val, 64, 64)
    train, val = strip_split(0, 900, 300, val_fraction=0.25, gap=100, window=64)  # taller than wide: rows
    assert val == [Rect(0, 675, 0, 900, 300)] and train == [Rect(0, 0, 0, 575, 300)]
    assert_no_leakage(train, val, 64, 100)


def test_strip_split_too_small_is_a_clear_error():
    with pytest.raises(ConfigError, match="too small for a strip split"):
        strip_split(3, 100, 120, val_fraction=0.5, gap=64, window=64, name="a.tif")


@pytest.mark.parametrize("gap", [32, 65])
def test_checkerboard_split_keeps_the_gap(gap):
    train, val = checkerboard_split(1, 700, 900, cell=200, val_fraction=0.3, gap=gap, window=32, seed=4)
    assert train and val
    assert_no_leakage(train, val, 32, gap)
    again = checkerboard_split(1, 700, 900, cell=200, val_fraction=0.3, gap=gap, window=32, seed=4)
    assert again == (train, val)


def test_balanced_weights_example():
    presence = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], bool)
    np.testing.assert_allclose(balanced_weights(presence, 1.0), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    np.testing.assert_allclose(balanced_weights(presence, 0.0), [0.25] * 4)
    np.testing.assert_allclose(balanced_weights(np.zeros((3, 2), bool), 0.7), [1 / 3] * 3)


def test_class_balancing_oversamples_the_rare_class():
    rects = [Rect(0, 0, 0, 512, 2048)]

    def presence(refs):  # class 0 everywhere, class 1 only in the leftmost 100 columns
        return np.array([[True, r.col < 100] for r in refs])

    def rare_share(balance):
        s = WindowSampler(rects, 64, 500, seed=1, balance=balance, candidates=8, presence=presence)
        return float(np.mean([r.col < 100 for r in s.epoch(0)]))

    uniform, balanced = rare_share(0.0), rare_share(1.0)
    assert uniform < 0.1
    assert balanced > 0.4
    assert balanced > 4 * uniform


def test_sampler_is_deterministic_per_seed_and_epoch():
    rects = [Rect(0, 0, 0, 300, 300), Rect(1, 10, 10, 200, 400)]
    a = WindowSampler(rects, 32, 50, seed=7).epoch(3)
    b = WindowSampler(rects, 32, 50, seed=7).epoch(3)
    c = WindowSampler(rects, 32, 50, seed=7).epoch(4)
    assert a == b and a != c
    assert {w.scene for w in a} == {0, 1}
