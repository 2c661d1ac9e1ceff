"""Every augmentation keeps image, labels and valid mask aligned."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from geounet.train.augment import (
    augment,
    band_jitter,
    blur,
    brightness_contrast,
    coarsen,
    elastic,
    flip_rotate,
    gamma,
    grayscale,
    resample_coarser,
)
from geounet.train.config import AugmentSettings

H, W = 48, 40  # not square: a rotation that forgot the labels would change their shape


def sample(seed: int = 0):
    """Labels (2, H, W), valid (H, W), and an image whose bands encode them: band k = labels[k], band 2 = valid."""
    rng = np.random.default_rng(seed)
    labels = np.stack(
        [
            ndimage.binary_dilation(rng.random((H, W)) > 0.985, iterations=3),
            ndimage.binary_dilation(rng.random((H, W)) > 0.99, iterations=2),
        ]
    ).astype(np.uint8)
    valid = np.ones((H, W), bool)
    valid[:, :7] = False
    valid[40:, 20:] = False
    image = np.concatenate([labels.astype(np.float32), valid[None].astype(np.float32)])
    return image, labels, valid


def decode(image: np.ndarray) -> np.ndarray:
    """Binary bands back from an image transformed by monotonic per-band maps: threshold mid-range."""
    lo = image.reshape(len(image), -1).min(axis=1)[:, None, None]
    hi = image.reshape(len(image), -1).max(axis=1)[:, None, None]
    return image > (lo + hi) / 2


def assert_aligned(image, labels, valid, exact=True, photometric=False):
    if photometric:
        # photometric statistics come from valid pixels only (invalid ones are zeroed after
        # augmentation), so the label bands are compared on valid pixels, thresholded there
        lab = image[:2][:, valid]
        lo, hi = lab.min(axis=1)[:, None], lab.max(axis=1)[:, None]
        np.testing.assert_array_equal(lab > (lo + hi) / 2, labels[:, valid].astype(bool))
        return
    bands = decode(image)
    truth = np.concatenate([labels.astype(bool), valid[None]])
    if exact:
        np.testing.assert_array_equal(bands, truth)
    else:  # elastic: bilinear image vs nearest labels may differ only on a few boundary pixels
        diff = bands != truth
        assert diff.mean() < 0.02
        edge = np.stack([ndimage.binary_dilation(t) & ~ndimage.binary_erosion(t) for t in truth])
        assert not (diff & ~edge).any()


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
def test_flip_rotate_alignment(k, flips):
    image, labels, valid = sample()
    out = flip_rotate(image, labels, valid, k=k, flip_x=flips[0], flip_y=flips[1])
    assert out[0].shape[1:] == out[1].shape[1:] == out[2].shape
    assert_aligned(*out)
    if k % 2:
        assert out[2].shape == (W, H)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elastic_alignment(seed):
    image, labels, valid = sample(seed)
    img, lab, val = elastic(image, labels, valid, np.random.default_rng(seed), alpha=6.0, sigma=5.0)
    assert lab.dtype == labels.dtype and set(np.unique(lab)) <= {0, 1}
    assert (lab != labels).any()  # it did deform
    assert_aligned(img, lab, val, exact=False)


def test_photometric_and_grayscale_keep_alignment():
    image, labels, valid = sample()
    rng = np.random.default_rng(3)
    out = brightness_contrast(image, valid, rng, brightness=0.3, contrast=0.3)
    assert_aligned(out, labels, valid, photometric=True)
    out = gamma(image, valid, rng, amount=0.3)
    assert_aligned(out, labels, valid, photometric=True)
    out = band_jitter(image, valid, rng, amount=0.3)
    assert_aligned(out, labels, valid, photometric=True)
    out = blur(image, rng, sigma=1.0)
    assert_aligned(out, labels, valid, photometric=True)
    one = np.repeat(labels[:1].astype(np.float32), 3, axis=0)  # grayscale mixes bands: encode one mask in all
    g = grayscale(one)
    np.testing.assert_array_equal(g[0] > 0.5, labels[0].astype(bool))
    assert np.array_equal(g[0], g[2])


@pytest.mark.parametrize("seed", range(6))
def test_full_pipeline_alignment(seed):
    image, labels, valid = sample(seed)
    cfg = AugmentSettings(elastic_p=0.0, brightness=0.2, contrast=0.2, gamma=0.2)
    out = augment(image, labels, valid, np.random.default_rng(seed), cfg)
    assert_aligned(*out, photometric=True)
    geometric = augment(
        image,
        labels,
        valid,
        np.random.default_rng(seed),
        cfg.model_copy(update={"brightness": 0, "contrast": 0, "gamma": 0}),
    )
    assert_aligned(*geometric)
    np.testing.assert_array_equal(geometric[2], out[2])  # same draws: the same geometry
    cfg = AugmentSettings(elastic_p=1.0, elastic_alpha=5.0, elastic_sigma=5.0, brightness=0, contrast=0, gamma=0)
    out = augment(image, labels, valid, np.random.default_rng(seed), cfg)
    assert_aligned(*out, exact=False)
    # same generator state, same result
    again = augment(image, labels, valid, np.random.default_rng(seed), cfg)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a, b)


def test_band_jitter_moves_each_band_on_its_own_within_its_bounds():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 64, 64)).astype(np.float32)
    valid = np.ones((64, 64), bool)
    out = band_jitter(image, valid, np.random.default_rng(1), amount=0.2)
    gains, shifts = [], []
    for b in range(3):
        g, s = np.polyfit(image[b].ravel(), out[b].ravel(), 1)  # exact line: out = g * x + (1 - g) * mean + s
        gains.append(g)
        shifts.append(s - (1 - g) * image[b].mean())
    assert all(0.8 <= g <= 1.2 for g in gains) and all(abs(s) <= 0.2 + 1e-5 for s in shifts)
    assert len({round(float(g), 4) for g in gains}) == 3  # the bands move apart, not together
    np.testing.assert_allclose(band_jitter(image, valid, np.random.default_rng(1), amount=0.0), image, atol=1e-6)


def test_blur_smooths_within_the_sigma_range_and_keeps_the_mean():
    image = np.zeros((2, 65, 65), np.float32)
    image[:, 32, 32] = 1.0
    out = blur(image, np.random.default_rng(0), sigma=2.0)
    assert out.shape == image.shape and out.dtype == np.float32
    assert abs(float(out[0].sum()) - 1.0) < 1e-4  # mass kept
    rows = np.arange(65) - 32
    var = float((out[0].sum(axis=1) * rows**2).sum())  # variance of the spread peak = sigma**2
    assert 0.3**2 - 1e-3 <= var <= 2.0**2 + 1e-3
    np.testing.assert_array_equal(out[0], out[1])  # one sigma for all bands


def test_coarsening_matches_reading_a_coarser_scene_with_gdal(tmp_path):
    """A 0.5 m image averaged to 2 m, then read at 0.5 m as inference's read does (GDAL, bilinear)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    rng = np.random.default_rng(5)
    fine = ndimage.gaussian_filter(rng.normal(size=(2, 64, 64)), (0, 1.5, 1.5)).astype(np.float32) * 10
    coarse = fine.reshape(2, 16, 4, 16, 4).mean(axis=(2, 4))  # what a 2 m sensor records
    path = tmp_path / "coarse.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=16, height=16, count=2, dtype="float32",
        crs="EPSG:32633", transform=from_origin(500000, 5000000, 2.0, 2.0),
    ) as ds:  # fmt: skip
        ds.write(coarse)
    with rasterio.open(path) as ds:
        read = ds.read(out_shape=(2, 64, 64), resampling=Resampling.bilinear)
    ours = resample_coarser(fine, 4.0)
    np.testing.assert_allclose(ours, read, atol=1e-5)  # the same pixels, edges included
    assert float(np.abs(ours - fine).mean()) > 0.1  # it did remove detail


def test_coarsen_draws_its_factor_and_keeps_the_mean():
    image = np.zeros((3, 64, 64), np.float32)
    image[:, ::2, :] = 1.0  # finest stripes: gone at any factor >= 1.25
    out = coarsen(image, np.random.default_rng(0), factor=4.0)
    assert out.shape == image.shape and out.dtype == np.float32
    assert abs(float(out.mean()) - 0.5) < 0.05
    assert float(out.std()) < 0.5 * float(image.std())
    cfg = AugmentSettings(flip=False, rotate90=False, brightness=0, contrast=0, gamma=0, coarsen_p=1.0, coarsen_max=2.0)
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, 10:20, 10:30] = 1
    valid = np.ones((64, 64), bool)
    img, lab, val = augment(image, labels, valid, np.random.default_rng(1), cfg)
    np.testing.assert_array_equal(lab, labels)  # photometric: labels untouched
    assert float(img.std()) < 0.5 * float(image.std())
