"""Random augmentation of one training window: image, labels and valid mask move together.

Geometric augmentations (flips, 90-degree rotations, elastic deformation) are applied with
the *same* parameters to the image ``(bands, h, w)``, the label stack ``(classes, h, w)``
and the valid mask ``(h, w)``; the image is resampled bilinearly, labels and mask by
nearest neighbour so they stay exact 0/1. Photometric augmentations (brightness,
contrast, per-band jitter, gamma, blur, coarsening, grayscale) touch only the image, which is
already normalized, so their amounts are in normalized units and do not depend on the sensor's dtype.

Each function takes a ``numpy.random.Generator`` and draws all its parameters from it:
the caller seeds one generator per window, so runs are reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, map_coordinates

from geounet.train.config import AugmentSettings

__all__ = [
    "flip_rotate",
    "elastic",
    "brightness_contrast",
    "band_jitter",
    "gamma",
    "blur",
    "coarsen",
    "resample_coarser",
    "grayscale",
    "augment",
]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def flip_rotate(
    image: np.ndarray, labels: np.ndarray, valid: np.ndarray, *, k: int, flip_x: bool, flip_y: bool
) -> Arrays:
    """Rotate by ``k`` quarter turns (counter-clockwise) then flip; same for all three arrays."""

    def f(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k, axes=(-2, -1))
        if flip_x:
            a = a[..., ::-1]
        if flip_y:
            a = a[..., ::-1, :]
        return np.ascontiguousarray(a)

    return f(image), f(labels), f(valid)


def displacement(shape: tuple[int, int], rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """Smooth random displacement field ``(2, h, w)`` in pixels: Gaussian-smoothed noise scaled to ``alpha``.

    The noise is drawn on a grid ``sigma / 2`` times coarser and smoothed there (the field is
    smooth at that scale anyway), then interpolated to full size: a few milliseconds for 256².
    """
    h, w = shape
    step = max(1, int(sigma // 2))
    ch, cw = -(-h // step) + 1, -(-w // step) + 1
    field = np.empty((2, h, w), dtype=np.float32)
    rr = np.arange(h, dtype=np.float32) / step
    cc = np.arange(w, dtype=np.float32) / step
    grid = np.meshgrid(rr, cc, indexing="ij")
    for i in range(2):
        coarse = gaussian_filter(rng.uniform(-1.0, 1.0, (ch, cw)), sigma / step, mode="reflect")
        coarse /= max(float(np.abs(coarse).max()), 1e-6)
        field[i] = map_coordinates(coarse, grid, order=1, mode="nearest") * alpha
    return field


def elastic(
    image: np.ndarray, labels: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *, alpha: float, sigma: float
) -> Arrays:
    """Elastic deformation (Simard et al. 2003): every pixel is moved by a smooth random field.

    The image is resampled with bilinear interpolation, labels and valid mask with nearest
    neighbour (``scipy.ndimage.map_coordinates``, order 1 and 0), all at the same coordinates;
    outside the window the arrays are mirrored.
    """
    h, w = valid.shape
    d = displacement((h, w), rng, alpha, sigma)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    coords = np.stack([rows + d[0], cols + d[1]])

    def warp(a: np.ndarray, order: int) -> np.ndarray:
        return map_coordinates(a, coords, order=order, mode="mirror", prefilter=False)

    img = np.stack([warp(b, 1) for b in image]).astype(image.dtype, copy=False)
    lab = np.stack([warp(b, 0) for b in labels]).astype(labels.dtype, copy=False) if len(labels) else labels
    val = warp(valid.astype(np.uint8), 0).astype(bool)
    return img, lab, val


def _stats(image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-band mean, min and max over valid pixels (over all pixels when none is valid)."""
    px = image[:, valid] if valid.any() else image.reshape(image.shape[0], -1)
    return px.mean(axis=1), px.min(axis=1), px.max(axis=1)


def brightness_contrast(
    image: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *, brightness: float, contrast: float
) -> np.ndarray:
    """``(x - mean) * c + mean + b`` with ``c ~ U(1 - contrast, 1 + contrast)``, ``b ~ U(-brightness, brightness)``."""
    c = rng.uniform(1.0 - contrast, 1.0 + contrast) if contrast > 0 else 1.0
    b = rng.uniform(-brightness, brightness) if brightness > 0 else 0.0
    mean = _stats(image, valid)[0][:, None, None]
    return ((image - mean) * c + mean + b).astype(np.float32, copy=False)


def band_jitter(image: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *, amount: float) -> np.ndarray:
    """Each band ``(x - mean) * g + mean + s``, its own ``g ~ U(1 - amount, 1 + amount)``, ``s ~ U(-amount, amount)``.

    Unlike ``brightness_contrast`` the bands move apart: the colour balance of another sensor,
    another season or another processing chain.
    """
    n = image.shape[0]
    g = np.asarray(rng.uniform(1.0 - amount, 1.0 + amount, n))[:, None, None]
    s = np.asarray(rng.uniform(-amount, amount, n))[:, None, None]
    mean = _stats(image, valid)[0][:, None, None]
    return ((image - mean) * g + mean + s).astype(np.float32, copy=False)


def blur(image: np.ndarray, rng: np.random.Generator, *, sigma: float) -> np.ndarray:
    """Gaussian blur of every band with one ``sigma ~ U(0.3, sigma)`` pixels (edges mirrored)."""
    s = float(rng.uniform(min(0.3, sigma), sigma))
    return np.stack([gaussian_filter(b, s, mode="mirror") for b in image]).astype(np.float32, copy=False)


def coarsen(image: np.ndarray, rng: np.random.Generator, *, factor: float) -> np.ndarray:
    """The window as a scene ``f`` times coarser looks once read at this pixel size.

    ``f`` is drawn log-uniform in ``[1.25, factor]``; see :func:`resample_coarser`.
    """
    f = float(np.exp(rng.uniform(np.log(min(1.25, factor)), np.log(factor))))
    return resample_coarser(image, f)


def resample_coarser(image: np.ndarray, f: float) -> np.ndarray:
    """Each band averaged down to ``round(side / f)`` pixels, then resampled back bilinearly.

    The average is what a sensor with ``f`` times larger pixels records; the bilinear read back
    to the window's size is what inference's GDAL read (``out_shape``, bilinear) does to a scene
    coarser than the model's pixel size.
    """
    h, w = image.shape[-2:]
    small = (max(1, round(h / f)), max(1, round(w / f)))
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        x = F.interpolate(x, size=small, mode="area")
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[0].numpy()


def gamma(image: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *, amount: float) -> np.ndarray:
    """Gamma ``exp(U(-amount, amount))`` applied to each band rescaled to its own [min, max]."""
    g = float(np.exp(rng.uniform(-amount, amount)))
    _, lo, hi = _stats(image, valid)
    lo, span = lo[:, None, None], np.maximum(hi - lo, 1e-6)[:, None, None]
    u = np.clip((image - lo) / span, 0.0, 1.0)
    return (u**g * span + lo).astype(np.float32, copy=False)


def grayscale(image: np.ndarray) -> np.ndarray:
    """Every band replaced by the mean of the bands."""
    return np.repeat(image.mean(axis=0, keepdims=True), image.shape[0], axis=0).astype(np.float32, copy=False)


def augment(
    image: np.ndarray, labels: np.ndarray, valid: np.ndarray, rng: np.random.Generator, cfg: AugmentSettings
) -> Arrays:
    """All enabled augmentations in a fixed order: flip/rotate, elastic, photometric, blur, coarsening, grayscale.

    Args:
        image: normalized float32 ``(bands, h, w)``.
        labels: uint8 ``(classes, h, w)``.
        valid: bool ``(h, w)``.
        rng: this window's generator.
        cfg: which augmentations and how strong.

    Returns:
        New ``(image, labels, valid)``; the inputs are not modified.
    """
    k = int(rng.integers(4)) if cfg.rotate90 else 0
    fx, fy = (bool(rng.integers(2)), bool(rng.integers(2))) if cfg.flip else (False, False)
    image, labels, valid = flip_rotate(image, labels, valid, k=k, flip_x=fx, flip_y=fy)
    if cfg.elastic_p > 0 and rng.random() < cfg.elastic_p:
        image, labels, valid = elastic(image, labels, valid, rng, alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma)
    if cfg.brightness > 0 or cfg.contrast > 0:
        image = brightness_contrast(image, valid, rng, brightness=cfg.brightness, contrast=cfg.contrast)
    if cfg.band_jitter > 0:
        image = band_jitter(image, valid, rng, amount=cfg.band_jitter)
    if cfg.gamma > 0:
        image = gamma(image, valid, rng, amount=cfg.gamma)
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        image = blur(image, rng, sigma=cfg.blur_sigma)
    if cfg.coarsen_p > 0 and rng.random() < cfg.coarsen_p:
        image = coarsen(image, rng, factor=cfg.coarsen_max)
    if cfg.grayscale_p > 0 and rng.random() < cfg.grayscale_p:
        image = grayscale(image)
    return image, labels, valid
