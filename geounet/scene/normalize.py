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

:func:`input_moments` (per block) and :func:`input_warning` (per scene) flag a scene whose
normalized pixels are far from the training data's: wrong scaling or a wrapped signed dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- input range check
# A scene whose pixels are scaled unlike the training data (reflectance 0-1 or uint16 DN on a
# model trained on 0-255, a uint8 image stored as int8) runs without error but gives meaningless
# polygons. The per-band moments of the normalized pixels, summed over the scene's blocks, tell.
MEAN_LIMIT = 3.0  # |normalized mean| above this: far brighter/darker than the training data
FLAT_LIMIT = 0.01  # normalized std below this (and below 1 raw unit): the model sees a nearly constant band
SPREAD_LIMIT = 20.0  # normalized std above this: values spread far beyond the training data's
NEGATIVE_SHARE = 0.001  # share of valid pixels < 0 that flags a signed scene on non-negative training data
_ROWS = 256  # rows per float64 stripe in input_moments: bounds its temporaries


@dataclass(frozen=True)
class InputMoments:
    """Per-band sums over valid pixels of a normalized block (or scene), exact to add up.

    ``count`` valid pixels; ``total`` and ``squares``: per band, the sum and the sum of squares of
    the normalized values (float64, the model's input units); ``negative``: per band, the valid
    pixels whose raw value is < 0 (0 where the raw dtype cannot hold negatives).
    """

    count: int
    total: tuple[float, ...]
    squares: tuple[float, ...]
    negative: tuple[int, ...]

    @classmethod
    def empty(cls, bands: int) -> InputMoments:
        """Moments of no pixel, for ``bands`` bands."""
        return cls(0, (0.0,) * bands, (0.0,) * bands, (0,) * bands)

    def combine(self, other: InputMoments) -> InputMoments:
        """The moments of both pixel sets together (blocks of one scene: disjoint cores)."""
        if len(self.total) != len(other.total):
            raise ValueError(f"cannot add moments of {len(self.total)} and {len(other.total)} bands")
        return InputMoments(
            self.count + other.count,
            tuple(a + b for a, b in zip(self.total, other.total)),
            tuple(a + b for a, b in zip(self.squares, other.squares)),
            tuple(a + b for a, b in zip(self.negative, other.negative)),
        )

    __add__ = combine

    @property
    def mean(self) -> list[float]:
        """Per-band mean of the normalized values (NaN without valid pixels)."""
        return [t / self.count if self.count else math.nan for t in self.total]

    @property
    def std(self) -> list[float]:
        """Per-band (population) standard deviation of the normalized values (NaN without valid pixels)."""
        return [
            math.sqrt(max(s / self.count - m * m, 0.0)) if self.count else math.nan
            for s, m in zip(self.squares, self.mean)
        ]


def input_moments(x: np.ndarray, valid: np.ndarray, raw: np.ndarray | None = None) -> InputMoments:
    """Moments of the normalized block ``x`` over its ``valid`` pixels.

    Args:
        x: ``(bands, h, w)`` normalized pixels (the output of :func:`apply_normalization`), finite
            where valid.
        valid: ``(h, w)`` boolean; False pixels take no part.
        raw: the same pixels before normalization, ``(bands, h, w)``; when its dtype is a signed
            integer, the valid pixels < 0 are counted per band. None: no count (zeros).

    Costs one pass over ``x`` and one float64 buffer of ``256 * w`` pixels (about 0.15 s for a
    3 x 2048 x 2048 block on one core).
    """
    bands, h, w = x.shape
    if valid.shape != (h, w) or (raw is not None and raw.shape != x.shape):
        raise ValueError(
            f"x has shape {x.shape}, valid {valid.shape} and raw {None if raw is None else raw.shape}; "
            "give valid as (h, w) and raw shaped like x"
        )
    total = np.zeros(bands, np.float64)
    squares = np.zeros(bands, np.float64)
    buf = np.empty((min(h, _ROWS), w), np.float64)  # one stripe of one band, invalid pixels 0
    for r in range(0, h, _ROWS):
        v = valid[r : r + _ROWS]
        stripe = buf[: v.shape[0]]
        for b in range(bands):
            stripe.fill(0.0)
            np.copyto(stripe, x[b, r : r + _ROWS], where=v)  # NaN at invalid pixels stays out
            flat = stripe.ravel()
            total[b] += flat.sum()
            squares[b] += flat @ flat
    negative = (0,) * bands
    if raw is not None and raw.dtype.kind == "i":
        negative = tuple(int(np.count_nonzero((raw[b] < 0) & valid)) for b in range(bands))
    return InputMoments(int(np.count_nonzero(valid)), tuple(total.tolist()), tuple(squares.tolist()), negative)


def eight_bit_training(norm: MeanStd | Percentile) -> bool:
    """Whether the statistics describe 8-bit training data: every band's mean and standard
    deviation (MeanStd) or low and high (Percentile) within 0-255, and some above 2 (not
    reflectance). True for the uint8 default (mean 0, std 255) and for statistics of 8-bit
    imagery (mean ~96, std ~26-70); False for 16-bit or reflectance (0-1) training data."""
    values = [*norm.mean, *norm.std] if isinstance(norm, MeanStd) else [*norm.low, *norm.high]
    return all(0.0 <= v <= 255.0 for v in values) and max(values) > 2.0


def non_negative_training(norm: MeanStd | Percentile) -> bool:
    """Whether the statistics describe training data without negative values.

    Percentile: every ``low`` >= 0. MeanStd: every ``mean`` >= 0; this holds for the uint8
    default (mean 0, std 255) and for 8/16-bit imagery, whose mean is positive even though
    ``mean - 3 std`` is not (0-255 pixels: mean ~105, std ~71).
    """
    return all(v >= 0 for v in (norm.low if isinstance(norm, Percentile) else norm.mean))


def input_warning(
    moments: InputMoments,
    norm: MeanStd | Percentile,
    *,
    dtype: str,
    bands: Sequence[int] | None = None,
    scene: str = "scene",
) -> str | None:
    """A warning text when a scene's pixels are far from the data the model was trained on, else None.

    Per band, in normalized units (MeanStd: training standard deviations from the training mean;
    Percentile: 0-1 across the training range, clipped):

    * mean beyond ``±MEAN_LIMIT`` (3): far brighter or darker (uint16 0-10000 on a 0-255 model: ~+30),
      except for a uint8 scene on a model trained on 8-bit data (:func:`eight_bit_training`):
      snow, sand or water is bright or dark, not scaled wrongly, whatever the training
      data's spread (a model trained on mid-grey imagery, std ~26, sees sand at +5);
    * std below ``FLAT_LIMIT`` (0.01): for MeanStd, in a float scene and below 1 raw unit, nearly
      constant to the model (reflectance 0-1 on a 0-255 model: ~0.001; an integer scene this flat is
      merely uniform, not mis-scaled); for Percentile, with the mean within 0.01 of 0 or 1, nearly
      every pixel clipped to one end of the training range;
    * std above ``SPREAD_LIMIT`` (20): spread far wider than the training data;
    * a signed integer ``dtype`` holding at least ``NEGATIVE_SHARE`` (0.1%) negative valid pixels while
      the training data had none (:func:`non_negative_training`): e.g. a uint8 image stored as int8,
      whose values above 127 wrap to negative.

    Args:
        moments: the scene's summed :func:`input_moments`.
        norm: the checkpoint's normalization.
        dtype: the scene's raw data type (e.g. ``"int8"``).
        bands: the scene's 1-based band numbers fed to the model, for the message (default 1..n).
        scene: the scene's path, for the message.
    """
    if moments.count == 0:
        return None
    n = len(moments.total)
    numbers = list(bands) if bands is not None else list(range(1, n + 1))
    kind = np.dtype(dtype)
    signed = kind.kind == "i" and non_negative_training(norm)
    same_range = kind == np.dtype("uint8") and eight_bit_training(norm)  # brightness, not scaling
    reasons: list[str] = []
    wrapped = False  # a signed band holds negative pixels the training data never had
    for i, (m, sd, neg) in enumerate(zip(moments.mean, moments.std, moments.negative)):
        found: list[str] = []
        if isinstance(norm, MeanStd):
            mu, sigma = norm.mean[i], norm.std[i]
            head = f"band {numbers[i]}: mean {m * sigma + mu:.4g}, std {sd * sigma:.3g}"
            if abs(m) > MEAN_LIMIT and not same_range:
                side = "above" if m > 0 else "below"
                found.append(
                    f"the mean is {abs(m):.3g} training standard deviations ({sigma:.4g}) {side} "
                    f"the training mean {mu:.4g}"
                )
            if kind.kind == "f" and sd < FLAT_LIMIT and sd * sigma < 1.0:
                found.append(
                    f"the std is {sd:.2g} of the training standard deviation {sigma:.4g}: nearly constant to the model"
                )
        else:
            lo, hi = norm.low[i], norm.high[i]
            head = f"band {numbers[i]}: normalized mean {m:.3g}, std {sd:.3g}"
            if sd < FLAT_LIMIT and not FLAT_LIMIT <= m <= 1.0 - FLAT_LIMIT:
                found.append(f"nearly every pixel is clipped to one end of the training range {lo:.4g} to {hi:.4g}")
        if sd > SPREAD_LIMIT:
            found.append(f"the std is {sd:.3g} times the training data's: spread far wider")
        if signed and neg >= NEGATIVE_SHARE * moments.count:
            wrapped = True
            found.append(f"{neg / moments.count:.1%} of its pixels are negative but the training data had none")
        if found:
            reasons.append(f"{head}: {' and '.join(found)}")
    if not reasons:
        return None
    text = f"scene {scene}: its pixels are far from the data the model was trained on ({'; '.join(reasons)})"
    if wrapped:
        text += (
            f"; a uint{kind.itemsize * 8} image stored as {kind.name} has its values above "
            f"{np.iinfo(kind).max} wrapped to negative"
        )
    return text + (
        "; check --bands and the scene's scaling (reflectance 0-1 or uint16 0-10000 against a model trained on "
        "0-255: rescale to the training range; a uint8 image stored as int8: rewrite it as uint8 without clipping, "
        "e.g. numpy's .view('uint8')): the outputs may be meaningless"
    )
