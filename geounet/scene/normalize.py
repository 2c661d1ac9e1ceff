"""Per-band input normalization, stored in checkpoints so inference matches training.

A model only gives the results it was trained for when its input bands are scaled the way
they were during training. The statistics therefore travel inside the checkpoint (see
:mod:`geounet.checkpoint`) as one of two small, validated records:

* :class:`MeanStd` -- ``(x - mean) / std`` per band; the usual choice for 8-bit imagery.
* :class:`Percentile` -- ``clip((x - low) / (high - low), 0, 1)`` per band; robust for 16-bit
  imagery whose few very bright pixels (clouds, specular roofs) would squash everything else.

:data:`Normalization` is the discriminated union of both (the ``kind`` key picks one), so a
JSON or YAML mapping such as ``{"kind": "percentile", "low": [...], "high": [...]}``
validates directly. A model saved without statistics gets :func:`default_normalization`,
``MeanStd(mean=0, std=255)`` per band, which maps uint8 pixels to ``[0, 1]``.

Where nodata pixels must not take part, remove them before :func:`compute_normalization`;
:func:`apply_normalization` passes NaN through unchanged.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from geounet.config import StrictModel, describe_validation_error
from geounet.errors import ConfigError, ModelInputError

NormalizationKind = Literal["meanstd", "percentile"]
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_finite(name: str, values: list[float]) -> None:
    """Statistics are applied in float32: each must be a finite float32 number."""
    bad = [i for i, v in enumerate(values) if not (math.isfinite(v) and abs(v) <= _FLOAT32_MAX)]
    if bad:
        raise ValueError(
            f"{name} must be finite numbers within float32's range (|x| <= {_FLOAT32_MAX:.4g}), got "
            f"{values!r} (band indexes {bad} are not); recompute the statistics from pixels without nodata"
        )


class MeanStd(StrictModel):
    """``(x - mean) / std`` per band; one ``mean`` and one ``std`` per input band."""

    kind: Literal["meanstd"] = "meanstd"
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _check(self) -> MeanStd:
        if not self.mean:
            raise ValueError("mean and std need one value per input band, got empty lists")
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values {self.mean!r} but std has {len(self.std)} "
                f"{self.std!r}; give one mean and one std per input band"
            )
        _check_finite("mean", self.mean)
        _check_finite("std", self.std)
        bad = [i for i, s in enumerate(self.std) if not np.float32(s) > 0]  # > 0 in float32 too
        if bad:
            raise ValueError(
                f"std must be > 0 for every band, got {self.std!r} (band indexes {bad}); a zero "
                "std means a constant band: drop that band or compute statistics on more pixels"
            )
        return self

    @property
    def band_count(self) -> int:
        """Number of input bands these statistics describe."""
        return len(self.mean)


class Percentile(StrictModel):
    """``clip((x - low) / (high - low), 0, 1)`` per band; ``high > low`` for every band."""

    kind: Literal["percentile"] = "percentile"
    low: list[float]
    high: list[float]

    @model_validator(mode="after")
    def _check(self) -> Percentile:
        if not self.low:
            raise ValueError("low and high need one value per input band, got empty lists")
        if len(self.low) != len(self.high):
            raise ValueError(
                f"low has {len(self.low)} values {self.low!r} but high has {len(self.high)} "
                f"{self.high!r}; give one low and one high per input band"
            )
        _check_finite("low", self.low)
        _check_finite("high", self.high)
        # compared in float32, where high - low is computed
        bad = [i for i, (lo, hi) in enumerate(zip(self.low, self.high)) if not np.float32(hi) > np.float32(lo)]
        if bad:
            raise ValueError(
                f"high must be greater than low for every band, got low {self.low!r} and high "
                f"{self.high!r} (band indexes {bad}); a band whose percentiles coincide is nearly "
                "constant: drop it or use wider percentiles"
            )
        return self

    @property
    def band_count(self) -> int:
        """Number of input bands these statistics describe."""
        return len(self.low)


Normalization = Annotated[MeanStd | Percentile, Field(discriminator="kind")]
"""Either normalization; the ``kind`` key (``meanstd`` or ``percentile``) selects which."""

_ADAPTER: TypeAdapter[MeanStd | Percentile] = TypeAdapter(Normalization)


def parse_normalization(data: Any, source: str = "normalization") -> MeanStd | Percentile:
    """Validate a mapping (from JSON/YAML) or an existing object into a :data:`Normalization`.

    Raises:
        ConfigError: naming ``source``, the key, the value and what is allowed.
    """
    if isinstance(data, (MeanStd, Percentile)):
        return data
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source)) from None


def default_normalization(bands: int) -> MeanStd:
    """Statistics for a model saved without any: uint8 pixels scaled to ``[0, 1]``."""
    if bands < 1:
        raise ConfigError(f"band count must be >= 1, got {bands}")
    return MeanStd(mean=[0.0] * bands, std=[255.0] * bands)


def apply_normalization(x: np.ndarray, norm: MeanStd | Percentile) -> np.ndarray:
    """Normalize a ``(bands, height, width)`` array of any numeric dtype to float32.

    Costs one float32 output array of the input's shape and one pass over the data
    (two for percentile, for the clip); the input is never modified, even when it is
    already float32. Arithmetic is in float32.

    Args:
        x: pixels, bands first, in the band order the model expects.
        norm: the statistics, usually ``read_metadata(ckpt).normalization``.

    Raises:
        ModelInputError: ``x`` is not 3-D or its band count differs from ``norm``'s.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ModelInputError(f"normalization expects an array shaped (bands, height, width), got shape {x.shape}")
    if x.shape[0] != norm.band_count:
        raise ModelInputError(
            f"array has {x.shape[0]} bands (shape {x.shape}) but the normalization describes "
            f"{norm.band_count}; read the bands listed in the checkpoint metadata, in that order"
        )
    if isinstance(norm, MeanStd):
        offset = np.asarray(norm.mean, dtype=np.float32)[:, None, None]
        scale = np.asarray(norm.std, dtype=np.float32)[:, None, None]
    else:
        offset = np.asarray(norm.low, dtype=np.float32)[:, None, None]
        scale = (np.asarray(norm.high, dtype=np.float32) - np.asarray(norm.low, dtype=np.float32))[:, None, None]
    # One new float32 array; the divide runs in place on it.
    out = np.subtract(x, offset, dtype=np.float32)
    np.divide(out, scale, out=out)
    if isinstance(norm, Percentile):
        np.clip(out, 0.0, 1.0, out=out)
    return out


def compute_normalization(
    samples: np.ndarray,
    kind: NormalizationKind = "meanstd",
    *,
    low_percentile: float = 2.0,
    high_percentile: float = 98.0,
) -> MeanStd | Percentile:
    """Estimate per-band statistics from sample pixels.

    Costs one pass over ``samples`` in float64 (mean/std), or a partial sort of each band
    (percentiles); both allocate temporaries of about the size of ``samples``. A random
    subset of a few hundred thousand pixels per band is plenty.

    Args:
        samples: ``(bands, n)`` pixels, nodata already removed.
        kind: ``meanstd`` (mean and standard deviation) or ``percentile`` (the
            ``low_percentile`` and ``high_percentile`` of each band, 2nd and 98th by default).
        low_percentile: lower percentile in [0, 100] for ``percentile``.
        high_percentile: upper percentile in [0, 100] for ``percentile``.

    Raises:
        ConfigError: bad shape, non-finite samples, a constant band or a bad ``kind``.
    """
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] < 1 or samples.shape[1] < 1:
        raise ConfigError(
            f"samples must be shaped (bands, n) with at least one pixel, got shape {samples.shape}; "
            "reshape a (bands, h, w) block with .reshape(bands, -1)"
        )
    if not np.issubdtype(samples.dtype, np.number) or np.issubdtype(samples.dtype, np.complexfloating):
        raise ConfigError(f"samples must be real numbers, got dtype {samples.dtype}")
    if np.issubdtype(samples.dtype, np.floating):
        nonfinite = np.count_nonzero(~np.isfinite(samples), axis=1)
        if nonfinite.any():
            raise ConfigError(
                f"samples contain NaN or infinite values ({nonfinite.tolist()} per band); "
                "remove nodata pixels before computing statistics"
            )
    if kind == "meanstd":
        mean = samples.mean(axis=1, dtype=np.float64)
        std = samples.std(axis=1, dtype=np.float64)
        try:
            return MeanStd(mean=mean.tolist(), std=std.tolist())
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, "computed normalization")) from None
    if kind == "percentile":
        if not 0.0 <= low_percentile < high_percentile <= 100.0:
            raise ConfigError(
                f"percentiles must satisfy 0 <= low < high <= 100, got low {low_percentile} and "
                f"high {high_percentile}; the usual choice is 2 and 98"
            )
        low, high = np.percentile(samples, [low_percentile, high_percentile], axis=1)
        try:
            return Percentile(low=low.tolist(), high=high.tolist())
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, "computed normalization")) from None
    raise ConfigError(f"normalization kind {kind!r} is not one of 'meanstd', 'percentile'")
