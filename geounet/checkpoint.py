"""Checkpoints: safetensors weights plus everything inference needs, and nothing pickled.

A geounet checkpoint is an ordinary `safetensors <https://huggingface.co/docs/safetensors>`_
file. Its tensors are the model's ``state_dict`` (BatchNorm buffers included). Its header
metadata holds one key, ``"geounet"``, whose value is a JSON document
(:class:`CheckpointMetadata`) describing inference completely: the architecture
(:class:`~geounet.models.base.ModelSpec`), which scene bands feed the model and how they
are normalized, class names and output mode, the receptive-field radius, a suggested tile
size and halo, per-class thresholds, training provenance and a content hash of the weights.

Why not ``torch.save``? A pickle can execute arbitrary code when it is loaded, and model files
are exactly what people download from strangers. :func:`load_checkpoint` and
:func:`read_metadata` never unpickle: they parse the safetensors header themselves (8-byte
little-endian length, then JSON) and refuse anything else with a :class:`CheckpointError`
that says what the file looks like. :func:`import_torch_checkpoint` converts an existing
``.pt``/``.pth`` state dict using only ``torch.load(..., weights_only=True)``.

The metadata of a width-4, depth-2 binary UNet saved with defaults (keys sorted, compact in
the file)::

    {"bands": [1, 2, 3], "extra": {}, "format": "geounet.checkpoint", "format_version": 1,
     "geounet_version": "0.1.0", "halo": 24, "hash": "c2f467a8e44c…(64 hex)",
     "normalization": {"kind": "meanstd", "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]},
     "provenance": {"epochs": 3}, "receptive_field_radius": 23,
     "spec": {"arch": "unet", "classes": ["building"], "depth": 2, "in_channels": 3,
              "mode": "binary", "options": {}, "width": 4},
     "thresholds": {"building": 0.5}, "tile_size": 1024}

The content hash is SHA-256 over the tensors' names, dtypes, shapes and bytes in sorted name
order, so it identifies the weights independently of the metadata and of the order tensors
were written in. It keys worker-side model caches and is checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError, model_validator
from safetensors.torch import save as _safetensors_save

from geounet import __version__
from geounet.compute import DEFAULT_TILE_SIZE, default_halo, default_tile_size, round_up
from geounet.config import StrictModel, describe_validation_error
from geounet.errors import CheckpointError, ConfigError, OutputError
from geounet.models.base import ModelSpec, OutputMode, SegmentationModel
from geounet.models.registry import build, list_models
from geounet.scene.normalize import MeanStd, Normalization, Percentile, default_normalization, parse_normalization

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "METADATA_KEY", "DEFAULT_TILE_SIZE", "CheckpointMetadata",
    "save_checkpoint", "read_metadata", "load_checkpoint", "checkpoint_hash", "content_hash",
    "import_torch_checkpoint", "default_tile_size", "model_card",
]

FORMAT = "geounet.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "geounet"  # the one key of the safetensors header metadata that geounet uses
_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
_HASH_CHUNK = 1 << 24

# safetensors dtype names <-> torch dtypes and their sizes in bytes.
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
for _name, _attr, _size in (
    ("U16", "uint16", 2), ("U32", "uint32", 4), ("U64", "uint64", 8),
    ("F8_E4M3", "float8_e4m3fn", 1), ("F8_E5M2", "float8_e5m2", 1),
):
    if hasattr(torch, _attr):
        _DTYPES[_name] = (getattr(torch, _attr), _size)
_DTYPE_NAMES: dict[torch.dtype, str] = {dt: name for name, (dt, _) in _DTYPES.items()}

_RESAVE_HINT = (
    "load it with torch.load(path, weights_only=True) in a trusted environment and re-save it "
    "with geounet.save_checkpoint (geounet.checkpoint.import_torch_checkpoint does both)"
)


# -- metadata --------------------------------------------------------------------------------


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
    module docstring. Validated on read and on write: band counts agree with
    ``spec.in_channels``, thresholds name exactly the classes, tile size and halo are
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
            raise ValueError(
                f"'bands' = {self.bands!r} must be distinct 1-based band indexes (1 is the first band)"
            )
        if self.normalization.band_count != n:
            raise ValueError(
                f"'normalization' describes {self.normalization.band_count} bands but the model "
                f"takes {n}; give one statistic per input band"
            )
        if set(self.thresholds) != set(spec.classes):
            raise ValueError(
                f"'thresholds' = {self.thresholds!r} must give one threshold for each class "
                f"{list(spec.classes)!r}"
            )
        bad = {k: v for k, v in self.thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"thresholds {bad!r} must be probabilities between 0 and 1")
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
    def short_hash(self) -> str:
        """First 12 hex characters of the content hash: for file names and log lines."""
        return self.hash[:12]

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


# -- the safetensors header ------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data section
    end: int


@dataclass(frozen=True)
class _Header:
    data_start: int  # 8 + header length
    tensors: dict[str, _Entry]
    metadata: dict[str, str]


def _open(path: Path) -> tuple[IO[bytes], int]:
    """Open ``path`` for reading; a :class:`CheckpointError` says why it cannot be."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise CheckpointError(path, "file does not exist; check the path") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory; give the path of a .safetensors file") from None
    except PermissionError:
        raise CheckpointError(path, "permission denied; make the file readable") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot be opened: {exc.strerror or exc}") from None
    return f, os.fstat(f.fileno()).st_size


def _not_safetensors(path: Path, prefix: bytes) -> CheckpointError:
    """Explain what a non-safetensors file looks like, with the fix."""
    if prefix.startswith(b"PK\x03\x04"):
        what = "is a zip archive, the format torch.save writes, which holds a pickle"
    elif len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        what = "is a pickle (a legacy torch.save file or pickle.dump)"
    else:
        what = ""
    if what:
        return CheckpointError(
            path,
            f"{what}; pickle-based checkpoints can run arbitrary code when loaded, so geounet "
            f"refuses them. To convert a file you trust, {_RESAVE_HINT}",
        )
    text = prefix.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return CheckpointError(
            path,
            f"is an HTML/XML document (starts with {prefix[:16]!r}), not a model; a download "
            "probably returned an error or login page: download the file again",
        )
    return CheckpointError(
        path,
        f"is not a safetensors file (first bytes {prefix[:16]!r}); geounet checkpoints are "
        "written by geounet.save_checkpoint",
    )


def _read_header(f: IO[bytes], size: int, path: Path) -> _Header:
    """Parse and check the safetensors header. Reads only the header, never tensor data."""
    prefix = f.read(16)
    if size < 8:
        raise CheckpointError(
            path,
            f"is only {size} bytes, too short for a safetensors header (empty or truncated); "
            "copy or download it again",
        )
    n = int.from_bytes(prefix[:8], "little")
    first = prefix[8:9]
    if first not in (b"{", b"") or n < 2 or n > _MAX_HEADER_BYTES:
        raise _not_safetensors(path, prefix)
    if 8 + n > size:
        raise CheckpointError(
            path,
            f"is truncated: its header declares {n} bytes but the file has only {size} bytes in "
            "all (an interrupted copy or download?); copy it again",
        )
    f.seek(8)
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            path, f"has a corrupt safetensors header (not valid JSON: {exc}); copy the file again"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(
            path, f"has a corrupt safetensors header (a JSON {type(header).__name__}, not an object)"
        )
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(
            path, "has a corrupt safetensors header: '__metadata__' must map strings to strings"
        )
    tensors = {name: _parse_entry(path, name, entry) for name, entry in header.items()}
    _check_layout(path, tensors, size - 8 - n)
    return _Header(data_start=8 + n, tensors=tensors, metadata=metadata)


def _parse_entry(path: Path, name: str, entry: Any) -> _Entry:
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(path, f"has a corrupt safetensors header: tensor '{name}' {why}")

    if not isinstance(entry, dict):
        raise corrupt(f"is described by a {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPES:
        raise corrupt(f"has dtype {dtype!r}, not one of {', '.join(_DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise corrupt(f"has shape {shape!r}, not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise corrupt(f"has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
    nbytes = math.prod(shape) * _DTYPES[dtype][1]
    if offsets[1] - offsets[0] != nbytes:
        raise corrupt(
            f"spans {offsets[1] - offsets[0]} bytes but dtype {dtype} and shape {tuple(shape)} "
            f"need {nbytes}"
        )
    return _Entry(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _check_layout(path: Path, tensors: dict[str, _Entry], data_len: int) -> None:
    """Tensors must tile the data section exactly: no gaps, no overlaps, nothing missing."""
    pos = 0
    for name, e in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            raise CheckpointError(
                path,
                f"has a corrupt safetensors header: tensor '{name}' starts at byte {e.begin} of "
                f"the data section, expected {pos} (tensors overlap or leave gaps)",
            )
        pos = e.end
    if pos > data_len:
        raise CheckpointError(
            path,
            f"is truncated: its tensors need {pos} bytes of data but only {data_len} are present "
            "(an interrupted copy or download?); copy it again",
        )
    if pos < data_len:
        raise CheckpointError(
            path,
            f"has {data_len - pos} unexpected bytes after the last tensor; the file is corrupt "
            "or was appended to: copy it again",
        )


def _metadata_from_header(header: _Header, path: Path) -> CheckpointMetadata:
    raw = header.metadata.get(METADATA_KEY)
    if raw is None:
        keys = sorted(header.metadata)
        raise CheckpointError(
            path,
            f"has no geounet metadata (no '{METADATA_KEY}' key in the safetensors header metadata; "
            f"keys present: {keys}); it was not written by geounet.save_checkpoint. Build the "
            "model with geounet.create_model, load these weights into it and save it with "
            "geounet.save_checkpoint",
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"geounet metadata is not valid JSON ({exc}); copy the file again") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"geounet metadata is a JSON {type(data).__name__}, not an object")
    if data.get("format") != FORMAT:
        raise CheckpointError(
            path, f"geounet metadata key 'format' = {data.get('format')!r}, expected {FORMAT!r}"
        )
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"was written by a newer geounet (checkpoint format version {version}; this geounet "
            f"reads up to {FORMAT_VERSION}); upgrade geounet",
        )
    try:
        return CheckpointMetadata.model_validate(data)
    except ValidationError as err:
        lines = describe_validation_error(err, "geounet metadata").splitlines()
        raise CheckpointError(path, "invalid " + "; ".join(lines)) from None


# -- hashing ---------------------------------------------------------------------------------


def _hash_items(items: Iterable[tuple[str, str, tuple[int, ...], Iterable[memoryview]]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) records, which must come sorted by name.

    Every variable-length field is length-prefixed, so no two different tensor sets hash
    alike by concatenation accidents.
    """
    h = hashlib.sha256(b"geounet-tensors-v1\0")
    for name, dtype, shape, chunks in items:
        key = json.dumps([name, dtype, list(shape)], separators=(",", ":")).encode("utf-8")
        h.update(len(key).to_bytes(8, "little"))
        h.update(key)
        nbytes = math.prod(shape) * _DTYPES[dtype][1]
        h.update(nbytes.to_bytes(8, "little"))
        for chunk in chunks:
            h.update(chunk)
    return h.hexdigest()


def _chunks(buf: memoryview, begin: int, end: int) -> Iterable[memoryview]:
    for start in range(begin, end, _HASH_CHUNK):
        yield buf[start : min(start + _HASH_CHUNK, end)]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes as safetensors stores them (little-endian, C order), without a copy."""
    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex of a state dict, identical to the hash stored by :func:`save_checkpoint`.

    Covers names, dtypes, shapes and bytes in sorted name order; one pass over the tensors,
    no copy of contiguous CPU tensors (others are copied one at a time).

    Raises:
        ConfigError: a tensor has a dtype safetensors cannot store.
    """
    items = []
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.dtype not in _DTYPE_NAMES:
            raise ConfigError(f"tensor '{name}' has dtype {t.dtype}, which safetensors cannot store")
        if t.device.type != "cpu":
            t = t.cpu()
        items.append((name, _DTYPE_NAMES[t.dtype], tuple(t.shape), t))
    return _hash_items((n, d, s, [_tensor_bytes(t)]) for n, d, s, t in items)


def _hash_data(header: _Header, data: memoryview) -> str:
    return _hash_items(
        (name, e.dtype, e.shape, _chunks(data, e.begin, e.end))
        for name, e in sorted(header.tensors.items())
    )


# -- public API ------------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike[str]) -> CheckpointMetadata:
    """Read and validate a checkpoint's metadata from its header alone.

    Reads only the header (typically a few kilobytes): no tensor data is read, no model is
    built and the content hash is *not* verified (that needs every byte; use
    :func:`load_checkpoint` or :func:`checkpoint_hash`). Meant for checking scenes against
    the model before any work is scheduled. The architecture name is not checked against
    the registry here.

    Raises:
        CheckpointError: missing, not safetensors (a pickle, HTML, random bytes), truncated,
            corrupt header, or missing/invalid geounet metadata; the message names the file,
            the problem and the key at fault.
    """
    p = Path(path)
    f, size = _open(p)
    with f:
        header = _read_header(f, size, p)
    return _metadata_from_header(header, p)


def checkpoint_hash(path: str | os.PathLike[str], *, verify: bool = True) -> str:
    """The checkpoint's content hash (SHA-256 hex of its tensors).

    Args:
        path: the checkpoint.
        verify: recompute the hash from the tensor bytes (one read of the whole file, in
            16 MiB chunks) and check it against the stored one. With ``False`` only the
            header is read and the stored value is returned.

    Raises:
        CheckpointError: as :func:`read_metadata`, or the recomputed hash differs.
    """
    p = Path(path)
    f, size = _open(p)
    with f:
        header = _read_header(f, size, p)
        meta = _metadata_from_header(header, p)
        if not verify:
            return meta.hash
        f.seek(header.data_start)
        data = _read_exactly(f, size - header.data_start, p)
    _check_hash(p, meta, _hash_data(header, memoryview(data)))
    return meta.hash


def _read_exactly(f: IO[bytes], n: int, path: Path) -> bytearray:
    buf = bytearray(n)
    got = f.readinto(buf)
    if got != n:
        raise CheckpointError(
            path, f"is truncated: read {got} of {n} bytes of tensor data (was it being overwritten?)"
        )
    return buf


def _check_hash(path: Path, meta: CheckpointMetadata, actual: str) -> None:
    if actual != meta.hash:
        raise CheckpointError(
            path,
            f"content hash mismatch: the metadata records {meta.short_hash}… but the tensors hash "
            f"to {actual[:12]}…; the weights were modified or corrupted after saving: copy the "
            "file again from its source",
        )


def _describe_mismatch(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], limit: int = 5
) -> str:
    """Human summary of tensor-name and shape differences, or '' when they agree."""
    parts = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))

    def listing(names: list[str], fmt: Any) -> str:
        shown = ", ".join(fmt(k) for k in names[:limit])
        return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

    if missing:
        parts.append("missing tensors " + listing(missing, lambda k: f"'{k}' (model expects {tuple(expected[k])})"))
    if unexpected:
        parts.append("unexpected tensors " + listing(unexpected, lambda k: f"'{k}' {tuple(found[k])}"))
    if wrong:
        parts.append(
            "wrong shapes "
            + listing(wrong, lambda k: f"'{k}' is {tuple(found[k])} in the file but {tuple(expected[k])} in the model")
        )
    return "; ".join(parts)


def _build(spec: ModelSpec, path: Path) -> SegmentationModel:
    if spec.arch not in list_models():
        raise CheckpointError(
            path,
            f"unknown architecture {spec.arch!r}; this geounet knows {', '.join(list_models())}. "
            "The checkpoint needs a newer geounet or the plugin that registers that architecture",
        )
    try:
        # On the meta device: the random initialisation the weights overwrite is skipped (0.11 s
        # of a width-64 UNet's 0.44 s load on this project's machine); memory comes uninitialised
        with torch.device("meta"):
            model = build(spec)
    except ConfigError as exc:
        raise CheckpointError(path, f"cannot build architecture {spec.arch!r} from its metadata: {exc}") from None
    if any(m._non_persistent_buffers_set for m in model.modules()):
        # a buffer no checkpoint holds would stay uninitialised: build it for real
        return build(spec)
    return model.to_empty(device="cpu")


def load_checkpoint(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild a model from a checkpoint, with every check, ready for inference.

    Steps: parse the header (never unpickling anything), validate the metadata, build the
    architecture from the registry, compare tensor names and shapes with the model, read
    the tensor data once, verify the content hash, check the weights are finite, load them
    strictly, move the model to ``device`` and switch it to eval mode.

    Costs one read of the file; peak memory is about the file size (raw bytes, viewed
    without a copy) plus the model's own parameters.

    Args:
        path: a file written by :func:`save_checkpoint`.
        device: where the model goes (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device).

    Returns:
        The model in eval mode, with ``model.metadata`` (the :class:`CheckpointMetadata` as a
        dict, including ``"hash"``) and ``model.checkpoint_path`` set.

    Raises:
        CheckpointError: naming the file and the problem: missing, not safetensors (pickle,
            zip, HTML, random bytes), truncated, corrupt header, missing or invalid metadata,
            unknown architecture, missing/unexpected/mis-shaped tensors, hash mismatch,
            NaN or infinite weights.
    """
    p = Path(path)
    f, size = _open(p)
    with f:
        header = _read_header(f, size, p)
        meta = _metadata_from_header(header, p)
        model = _build(meta.spec, p)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        mismatch = _describe_mismatch({k: e.shape for k, e in header.tensors.items()}, expected)
        if mismatch:
            raise CheckpointError(
                p,
                f"weights do not match architecture {meta.spec.arch!r} (width {meta.spec.width}, "
                f"depth {meta.spec.depth}) described in its metadata: {mismatch}; re-save the "
                "checkpoint from the model that produced these weights",
            )
        f.seek(header.data_start)
        data = _read_exactly(f, size - header.data_start, p)
    _check_hash(p, meta, _hash_data(header, memoryview(data)))

    tensors = {name: _tensor_from(data, e) for name, e in header.tensors.items()}
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CheckpointError(
                    p,
                    f"tensor '{name}' holds {bad} NaN or infinite values (of {t.numel()}); training "
                    "diverged before this checkpoint was saved: use an earlier checkpoint",
                )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(p, f"weights cannot be loaded into the model: {exc}") from None
    del tensors, data

    model.to(device)
    model.eval()
    radius = model.receptive_field_radius
    record = meta.to_dict()
    if radius != meta.receptive_field_radius:
        log.warning(
            "checkpoint %s records a receptive-field radius of %d px but this geounet computes %d px "
            "for its architecture; using %d (check the halo, %d px)",
            p, meta.receptive_field_radius, radius, radius, meta.halo,
        )
        record["receptive_field_radius"] = radius
    model.metadata = record
    model.checkpoint_path = str(p)  # type: ignore[assignment]
    return model


def _tensor_from(data: bytearray, e: _Entry) -> torch.Tensor:
    """A tensor viewing ``data`` (no copy); the file's bytes are little-endian."""
    dtype, size = _DTYPES[e.dtype]
    count = math.prod(e.shape)
    if count == 0:
        return torch.empty(e.shape, dtype=dtype)
    t = torch.frombuffer(data, dtype=torch.uint8, count=count * size, offset=e.begin)
    if e.begin % size:  # misaligned for its dtype (not written by safetensors): copy
        t = t.clone()
    if sys.byteorder != "little" and size > 1:  # pragma: no cover - no big-endian CI
        t = t.reshape(count, size).flip(1).reshape(-1)
    return t.view(dtype).reshape(e.shape)


# -- saving ----------------------------------------------------------------------------------


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
        f"thresholds {value!r} must be a float, a list with one float per class, or a mapping "
        "from class name to float"
    )


def _json_default(obj: Any) -> Any:
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
            f"{what} must hold JSON values (strings, numbers, lists, mappings): {exc}; convert "
            "such values to strings"
        ) from None


def _state_tensors(model: SegmentationModel) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that own their storage, as safetensors requires."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        storage = t.untyped_storage()
        if t.numel() and (storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size()):
            t = t.clone()  # shared or partial storage (tied weights, views)
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save_checkpoint(
    model: SegmentationModel,
    path: str | os.PathLike[str],
    *,
    bands: Sequence[int] | None = None,
    normalization: MeanStd | Percentile | Mapping[str, Any] | None = None,
    tile_size: int | None = None,
    halo: int | None = None,
    thresholds: float | Sequence[float] | Mapping[str, float] | None = None,
    provenance: Mapping[str, Any] | None = None,
    **extra: Any,
) -> str:
    """Write ``model`` and everything inference needs to a safetensors checkpoint, atomically.

    Each metadata value comes from, in order of precedence: the keyword argument, the
    model's ``metadata`` (filled by :func:`load_checkpoint`, so ``save(load(x))`` round-trips),
    then the default. Architecture and receptive field always come from the model itself.

    Defaults: ``bands`` 1..in_channels; ``normalization`` mean 0 / std 255 per band (uint8 to
    [0, 1]); ``halo`` the receptive-field radius rounded up to ``2**depth`` (exact, seam-free
    tiling); ``tile_size`` 1024, or ``4 * halo`` if that is larger (see
    :func:`default_tile_size`; a tile size kept from ``model.metadata`` is replaced by the
    default when a new halo no longer fits in it); ``thresholds`` 0.5 per class;
    ``provenance`` empty.

    The file is written to a temporary name in the same folder, flushed to disk and moved
    into place with ``os.replace``: readers see the old file or the new one, never half of
    one, and a failure leaves the old file untouched. Costs one serialized copy of the
    weights in memory and one pass to hash them.

    Args:
        model: a geounet model (from ``create_model`` or ``load_checkpoint``).
        path: destination, conventionally ``*.safetensors``; overwritten if it exists.
        bands: 1-based scene band indexes feeding the model's input channels, in order.
        normalization: a ``MeanStd``/``Percentile`` or its mapping form.
        tile_size: suggested tile side in pixels, a multiple of ``2**depth``.
        halo: suggested context per tile side in pixels, a multiple of ``2**depth``.
        thresholds: one float for every class, a list in class order, or ``{class: float}``.
        provenance: free JSON mapping (data, epochs, seed, git commit, date...); replaces any
            provenance found in ``model.metadata``. Dates and paths become strings.
        **extra: further JSON values stored under ``extra``; merged key by key over
            ``model.metadata["extra"]``.

    Returns:
        The content hash (SHA-256 hex of the tensors).

    Raises:
        ConfigError: an argument is invalid (message names it, the value and the fix).
        CheckpointError: a weight is NaN or infinite (such a file could not be loaded).
        OutputError: the file cannot be written (missing folder, permissions, disk full).
    """
    if not isinstance(model, SegmentationModel):
        raise ConfigError(
            f"save_checkpoint needs a geounet SegmentationModel (from create_model or "
            f"load_checkpoint), got {type(model).__name__}"
        )
    p = Path(path)
    spec = model.spec
    prior: Mapping[str, Any] = getattr(model, "metadata", None) or {}

    def pick(name: str, given: Any) -> Any:
        return given if given is not None else prior.get(name)

    radius = model.receptive_field_radius
    halo_v = pick("halo", halo)
    if halo_v is None:
        halo_v = default_halo(radius, spec.multiple)
    if not isinstance(halo_v, int) or isinstance(halo_v, bool):
        raise ConfigError(f"halo = {halo_v!r} must be a whole number of pixels")
    tile_v = tile_size
    if tile_v is None:
        tile_v = prior.get("tile_size")
        fits = isinstance(tile_v, int) and tile_v % spec.multiple == 0 and tile_v >= 2 * halo_v + spec.multiple
        if not fits:
            tile_v = default_tile_size(halo_v, spec.multiple)
    bands_v = pick("bands", bands)
    if bands_v is None:
        bands_v = list(range(1, spec.in_channels + 1))
    norm_v = pick("normalization", normalization)
    norm = default_normalization(spec.in_channels) if norm_v is None else parse_normalization(norm_v)
    thr_v = pick("thresholds", thresholds)
    thr = _coerce_thresholds(0.5 if thr_v is None else thr_v, spec.classes)
    prov = _plain_json(pick("provenance", provenance) or {}, "provenance")
    extras = _plain_json({**(prior.get("extra") or {}), **extra}, "extra metadata")

    tensors = _state_tensors(model)
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                p,
                f"not written: tensor '{name}' holds NaN or infinite values, so the checkpoint "
                "could not be loaded; training diverged: save an earlier state",
            )
    digest = content_hash(tensors)

    try:
        meta = CheckpointMetadata(
            geounet_version=__version__, spec=spec, bands=bands_v, normalization=norm,
            receptive_field_radius=radius, tile_size=tile_v, halo=halo_v, thresholds=thr,
            provenance=prov, extra=extras, hash=digest,
        )
    except ValidationError as err:
        lines = describe_validation_error(err, "save_checkpoint").splitlines()
        raise ConfigError("; ".join(lines)) from None
    except TypeError as exc:
        raise ConfigError(f"save_checkpoint: {exc}") from None

    # A single metadata key: safetensors writes its metadata map in unspecified order, so one
    # key keeps the file byte-for-byte reproducible.
    blob = _safetensors_save(tensors, metadata={METADATA_KEY: meta.to_json()})
    _atomic_write(p, blob)
    return digest


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write checkpoint {path}: folder {folder} does not exist; create it first")
    if path.is_dir():
        raise OutputError(f"cannot write checkpoint {path}: it is a directory; give a file name")
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - best effort
            log.warning("could not remove temporary file %s", tmp)
        if isinstance(exc, OSError):
            raise OutputError(
                f"cannot write checkpoint {path}: {exc.strerror or exc}; free disk space or choose "
                "a writable folder (the previous file, if any, is unchanged)"
            ) from exc
        raise
    try:  # make the rename itself durable; not possible on every platform
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# -- converting pickled checkpoints ----------------------------------------------------------


def _find_state_dict(obj: Any, src: Path) -> dict[str, torch.Tensor]:
    def is_state(d: Any) -> bool:
        return isinstance(d, Mapping) and bool(d) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items()
        )

    if is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if is_state(obj.get(key)):
                return dict(obj[key])
        found = sorted(str(k) for k in obj)[:10]
        raise CheckpointError(
            src,
            f"holds no state dict (a mapping of names to tensors) at the top level or under "
            f"'state_dict', 'model_state_dict' or 'model'; top-level keys: {found}",
        )
    raise CheckpointError(src, f"holds a {type(obj).__name__}, not a state dict of tensors")


def import_torch_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    spec: ModelSpec | Mapping[str, Any],
    **save_kwargs: Any,
) -> str:
    """Convert a ``torch.save`` state dict into a geounet checkpoint, without running its code.

    Uses only ``torch.load(src, weights_only=True)``, whose restricted unpickler accepts
    tensors and plain containers and refuses any other object, so a malicious pickle fails
    instead of executing. Still, only convert files whose origin you trust: the weights
    themselves are not vetted. A ``module.`` prefix (DataParallel) is removed.

    Args:
        src: ``.pt``/``.pth`` file holding a state dict, or a dict with it under
            ``state_dict``, ``model_state_dict`` or ``model``.
        dst: the safetensors checkpoint to write.
        spec: the architecture the weights belong to (``ModelSpec`` or its dict form).
        **save_kwargs: passed to :func:`save_checkpoint` (bands, normalization, provenance...).

    Returns:
        The content hash of the written checkpoint.

    Raises:
        CheckpointError: ``src`` is missing, not loadable with ``weights_only=True`` or its
            tensors do not fit ``spec``.
    """
    s = Path(src)
    f, _ = _open(s)
    f.close()
    model_spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(dict(spec))
    try:
        obj = torch.load(s, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            s,
            f"refused: it contains objects other than tensors and plain containers, which could "
            f"run code when unpickled (torch weights_only: {first}); export a plain state_dict "
            "with torch.save(model.state_dict(), path) where the model is defined",
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(s, f"torch.load(weights_only=True) cannot read it: {exc}") from None
    state = _find_state_dict(obj, s)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model = _build(model_spec, s)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = _describe_mismatch({k: tuple(v.shape) for k, v in state.items()}, expected)
    if mismatch:
        raise CheckpointError(
            s, f"weights do not match architecture {model_spec.arch!r} as specified: {mismatch}"
        )
    model.load_state_dict(state, strict=True)
    return save_checkpoint(model, dst, **save_kwargs)


# -- model card ------------------------------------------------------------------------------


def model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything about a checkpoint a person wants to see, as a JSON-compatible dict.

    Loads the checkpoint with every check of :func:`load_checkpoint` (one read of the file,
    the model built on the CPU), so a card is also proof that the file is intact. Returns
    the metadata (:meth:`CheckpointMetadata.to_dict`) plus ``path``, ``parameters``
    (trainable and frozen parameters, buffers excluded) and ``out_channels``.

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    model = load_checkpoint(path)
    card: dict[str, Any] = {"path": str(path)}
    card.update(model.metadata)
    card["parameters"] = sum(p.numel() for p in model.parameters())
    card["out_channels"] = model.spec.out_channels
    return card
