"""The ``"geounet"`` metadata document of a checkpoint: what it holds and how it is validated.

:class:`CheckpointMetadata` is the JSON document stored under the one key
:data:`METADATA_KEY` of a checkpoint's safetensors header. It is validated on write
(:func:`~geounet.checkpoint.io.save_checkpoint`) and on read, so a file that loads is a
file whose bands, normalization, thresholds, tile size and halo agree with its
architecture. The helpers below turn the flexible arguments of ``save_checkpoint``
(thresholds as one float, a list or a mapping; provenance with dates and paths) into the
one JSON form that is stored, so that saving and loading give back equal values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, PlainSerializer, PlainValidator, model_validator

from geounet.compute import round_up
from geounet.config import StrictModel
from geounet.errors import ConfigError
from geounet.models.base import ModelSpec, OutputMode
from geounet.scene.normalize import Normalization

__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "CheckpointMetadata"]

FORMAT: Literal["geounet.checkpoint"] = "geounet.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "geounet"  # the one key of the safetensors header metadata that geounet uses

# Metadata that cannot change what the model computes on a scene: the file format's name and
# version, the geounet version that saved it, and the records of how it was made. Every other
# field (the tensors' hash, architecture and classes, bands, normalization, thresholds, pixel
# size, receptive field, tile and halo suggestions), and any field added later, enters
# CheckpointMetadata.output_fingerprint.
DESCRIPTIVE_FIELDS = frozenset({"format", "format_version", "geounet_version", "provenance", "extra"})


def is_road_name(name: str) -> bool:
    """Whether a class name reads as roads (``road``, ``roads``, ``main_road``, ``road_paved``):
    such classes are linear unless a checkpoint's ``linear_classes`` says otherwise."""
    return re.fullmatch(r"(?:[a-z0-9]+_)*roads?(?:_[a-z0-9]+)*", name.lower()) is not None


def is_building_name(name: str) -> bool:
    """Whether a class name reads as buildings (``building``, ``buildings``, ``small_building``):
    such classes get regularized outlines unless ``regularize.classes`` says otherwise."""
    return re.fullmatch(r"(?:[a-z0-9]+_)*buildings?", name.lower()) is not None


def _to_spec(value: Any) -> ModelSpec:
    """Validate the ``spec`` mapping into a :class:`ModelSpec` (types first, then ModelSpec's rules)."""
    if isinstance(value, ModelSpec):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of architecture settings, got {type(value).__name__}")
    types = {"arch": str, "in_channels": int, "mode": str, "width": int, "depth": int, "options": dict}
    for key, typ in types.items():
        if key in value and (not isinstance(value[key], typ) or isinstance(value[key], bool)):
            raise ValueError(f"'{key}' = {value[key]!r} must be of type {typ.__name__}")
    classes = value.get("classes", ["building"])
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"'classes' = {classes!r} must be a list of class names")
    if "arch" not in value:
        raise ValueError("missing required key 'arch' (the architecture name)")
    return ModelSpec.from_dict(dict(value))  # ConfigError is a ValueError: pydantic reports it


SpecField = Annotated[
    ModelSpec,
    PlainValidator(_to_spec),
    PlainSerializer(lambda spec: spec.to_dict(), return_type=dict),
]


class CheckpointMetadata(StrictModel):
    """The JSON document under the ``"geounet"`` key of a checkpoint's header.

    Everything a worker needs to run inference on a scene without guessing; see the
    :mod:`geounet.checkpoint` docstring. Validated on read and on write: band counts agree
    with ``spec.in_channels``, thresholds name exactly the classes, tile size and halo are
    multiples of ``2**depth`` and the tile leaves a core of at least ``2**depth``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    format: Literal["geounet.checkpoint"] = FORMAT
    format_version: int = Field(default=FORMAT_VERSION, ge=1, le=FORMAT_VERSION)
    geounet_version: str
    spec: SpecField
    bands: list[int]  # 1-based band indexes of the scene, in model input order
    normalization: Normalization
    receptive_field_radius: int = Field(ge=0)  # pixels (Chebyshev)
    tile_size: int = Field(ge=1)  # pixels, side of a square tile including its halo
    halo: int = Field(ge=0)  # pixels of context on each side of a tile's core
    thresholds: dict[str, float]  # class name -> probability threshold
    gsd_m: float | None = Field(
        default=None, gt=0.0, le=10_000.0
    )  # ground pixel size the model was trained at, metres; None: unknown (scenes are read at their own pixel size)
    linear_classes: list[str] | None = None  # classes traced as centerline graphs (roads); None: by name
    provenance: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")  # sha256 hex of the tensors

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointMetadata:
        spec = self.spec
        n = spec.in_channels
        if len(self.bands) != n:
            raise ValueError(
                f"'bands' = {self.bands!r} lists {len(self.bands)} bands but the model takes "
                f"{n} input bands; give one 1-based scene band index per input band"
            )
        if any(b < 1 for b in self.bands) or len(set(self.bands)) != len(self.bands):
            raise ValueError(f"'bands' = {self.bands!r} must be distinct 1-based band indexes (1 is the first band)")
        if self.normalization.band_count != n:
            raise ValueError(
                f"'normalization' describes {self.normalization.band_count} bands but the model "
                f"takes {n}; give one statistic per input band"
            )
        if set(self.thresholds) != set(spec.classes):
            raise ValueError(
                f"'thresholds' = {self.thresholds!r} must give one threshold for each class {list(spec.classes)!r}"
            )
        bad = {k: v for k, v in self.thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"thresholds {bad!r} must be probabilities between 0 and 1")
        if self.linear_classes is not None and not set(self.linear_classes) <= set(spec.classes):
            unknown = sorted(set(self.linear_classes) - set(spec.classes))
            raise ValueError(
                f"'linear_classes' = {self.linear_classes!r} names {unknown}, which are not classes of the model "
                f"{list(spec.classes)!r}; list classes of the model (or none)"
            )
        m = spec.multiple
        if self.halo % m:
            raise ValueError(
                f"'halo' = {self.halo} must be a multiple of 2**depth = {m} so that tiles stay on "
                f"the pooling grid; use {round_up(self.halo, m)}"
            )
        if self.tile_size % m:
            raise ValueError(
                f"'tile_size' = {self.tile_size} must be a multiple of 2**depth = {m}; "
                f"use {round_up(self.tile_size, m)}"
            )
        if self.tile_size < 2 * self.halo + m:
            raise ValueError(
                f"'tile_size' = {self.tile_size} leaves no core inside a halo of {self.halo} px on "
                f"each side; use a tile of at least 2 * halo + {m} = {2 * self.halo + m} px"
            )
        return self

    @property
    def content_hash(self) -> str:
        """The full content hash (SHA-256 hex of the tensors); same as ``hash``."""
        return self.hash

    @property
    def output_fingerprint(self) -> str:
        """SHA-256 hex of everything in the checkpoint that can change a scene's outputs: the
        tensors' hash and every metadata field but :data:`DESCRIPTIVE_FIELDS`.

        Two files with the same weights but other thresholds, normalization, bands, pixel size,
        classes or tile/halo suggestions (used when the settings leave them unset) differ
        here, so resume recomputes their scenes and workers do not reuse each other's model.
        """
        data = {k: v for k, v in self.to_dict().items() if k not in DESCRIPTIVE_FIELDS}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(b"geounet-outputs-v1\0" + text.encode("utf-8")).hexdigest()

    @property
    def short_hash(self) -> str:
        """First 12 hex characters of the content hash: for file names and log lines."""
        return self.hash[:12]

    @property
    def linear(self) -> tuple[str, ...]:
        """Classes traced as centerline graphs: ``linear_classes``, else those named like roads
        (:func:`is_road_name`)."""
        if self.linear_classes is not None:
            return tuple(c for c in self.spec.classes if c in self.linear_classes)
        return tuple(c for c in self.spec.classes if is_road_name(c))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in output-channel order (after the background channel for multiclass)."""
        return self.spec.classes

    @property
    def mode(self) -> OutputMode:
        """``binary``, ``multilabel`` or ``multiclass``."""
        return self.spec.mode

    @property
    def out_channels(self) -> int:
        """Channels of the model's logits."""
        return self.spec.out_channels

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (what ``model.metadata`` holds after loading)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        """The exact string stored in the header: compact JSON with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)


# -- arguments of save_checkpoint, coerced once into the stored form ---------------------------


def _coerce_thresholds(value: Any, classes: tuple[str, ...]) -> dict[str, float]:
    """One float for all classes, a list in class order, or a mapping -> {class: float}."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {c: float(value) for c in classes}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != len(classes):
            raise ConfigError(
                f"thresholds {list(value)!r} give {len(value)} values for {len(classes)} classes "
                f"{list(classes)!r}; give one per class, a single float, or a mapping"
            )
        return dict(zip(classes, value))
    raise ConfigError(
        f"thresholds {value!r} must be a float, a list with one float per class, or a mapping from class name to float"
    )


def _json_default(obj: Any) -> Any:
    """JSON form of the values provenance commonly holds: dates, paths, numpy scalars, sets."""
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} value {obj!r} is not JSON-serializable")


def _plain_json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Round-trip through JSON so the saved form equals what loading gives back."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__} {value!r}")
    try:
        return json.loads(json.dumps(dict(value), default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{what} must hold JSON values (strings, numbers, lists, mappings): {exc}; convert such values to strings"
        ) from None
