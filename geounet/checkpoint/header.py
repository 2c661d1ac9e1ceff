"""Opening a checkpoint and reading its safetensors header, with every refusal explained.

A safetensors file is an 8-byte little-endian header length, a JSON header and the tensor
data. The header is parsed here, by geounet itself, so that nothing is ever unpickled:
a pickle, a ``torch.save`` zip, an HTML error page or random bytes is refused with a
:class:`~geounet.errors.CheckpointError` that says what the bytes look like and what to
do. The header is checked completely before any tensor data is touched: known dtypes,
shapes that match their byte spans, tensors that tile the data section with no gap,
overlap or missing byte, and valid geounet metadata.

A checkpoint comes from a path or from its bytes in memory (a worker receives the bytes
from the client); :func:`_open` gives both the same reader, so the checks and messages
are the same, only the name in the messages differs (the path, or ``<checkpoint bytes>``
unless the caller names it).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from pydantic import ValidationError

from geounet.checkpoint.metadata import FORMAT, FORMAT_VERSION, METADATA_KEY, CheckpointMetadata
from geounet.config import describe_validation_error
from geounet.errors import CheckpointError

__all__ = ["BYTES_NAME", "CheckpointSource"]

# A checkpoint file's path, or the checkpoint's bytes in memory.
CheckpointSource = str | os.PathLike[str] | bytes | bytearray | memoryview

BYTES_NAME = "<checkpoint bytes>"  # how messages name a checkpoint given as bytes
_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces

# safetensors dtype names <-> torch dtypes and their sizes in bytes.
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
for _name, _attr, _size in (
    ("U16", "uint16", 2),
    ("U32", "uint32", 4),
    ("U64", "uint64", 8),
    ("F8_E4M3", "float8_e4m3fn", 1),
    ("F8_E5M2", "float8_e5m2", 1),
):
    if hasattr(torch, _attr):
        _DTYPES[_name] = (getattr(torch, _attr), _size)
_DTYPE_NAMES: dict[torch.dtype, str] = {dt: name for name, (dt, _) in _DTYPES.items()}

_RESAVE_HINT = (
    "load it with torch.load(path, weights_only=True) in a trusted environment and re-save it "
    "with geounet.save_checkpoint (geounet.checkpoint.import_torch_checkpoint does both)"
)


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


# -- the source: a file or bytes in memory -------------------------------------------------------


class _Raw:
    """A checkpoint's bytes, in an open file or in memory, and the name messages give it.

    Reads at offsets, so the header can be parsed without reading the tensor data. Use it
    as a context manager: a file is closed on exit.
    """

    def __init__(
        self,
        name: str,
        size: int,
        *,
        path: Path | None = None,
        file: io.BufferedReader | None = None,
        buffer: memoryview | None = None,
    ) -> None:
        self.name = name  # what messages call the checkpoint
        self.size = size  # bytes in all
        self.path = path  # None for bytes
        self._file = file
        self._buffer = buffer

    def __enter__(self) -> _Raw:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the file, if any (bytes need nothing)."""
        if self._file is not None:
            self._file.close()

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset`` (fewer at the end)."""
        if self._buffer is not None:
            return bytes(self._buffer[offset : offset + n])
        assert self._file is not None
        self._file.seek(offset)
        return self._file.read(n)

    def data(self, start: int) -> bytearray:
        """Every byte from ``start`` to the end, as a private copy that nobody else can change
        (the content hash is checked on exactly the bytes that are loaded). One read of the
        file, or one copy of the buffer.

        Raises:
            CheckpointError: the file became shorter since it was opened.
        """
        n = self.size - start
        if self._buffer is not None:
            return bytearray(self._buffer[start:])
        assert self._file is not None
        buf = bytearray(n)
        self._file.seek(start)
        got = self._file.readinto(buf)
        if got != n:
            raise CheckpointError(
                self.name, f"is truncated: read {got} of {n} bytes of tensor data (was it being overwritten?)"
            )
        return buf


def _open(source: CheckpointSource, name: str | None = None) -> _Raw:
    """A reader for a checkpoint path or the checkpoint's bytes; a :class:`CheckpointError`
    says why a file cannot be opened. ``name`` replaces the path or :data:`BYTES_NAME` in
    messages. Bytes are not copied."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        view = view.cast("B")
        return _Raw(name or BYTES_NAME, view.nbytes, buffer=view)
    path = Path(source)
    label = name or str(path)
    try:  # before opening: opening a FIFO for reading waits for a writer, forever
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(label, "file does not exist; check the path") from None
    except OSError:
        mode = None  # let open() say why
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise CheckpointError(
            label, "is not a regular file (a FIFO, device or socket); give the path of a .safetensors file"
        )
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by _Raw.__exit__
    except FileNotFoundError:
        raise CheckpointError(label, "file does not exist; check the path") from None
    except IsADirectoryError:
        raise CheckpointError(label, "is a directory; give the path of a .safetensors file") from None
    except PermissionError:
        raise CheckpointError(label, "permission denied; make the file readable") from None
    except OSError as exc:
        raise CheckpointError(label, f"cannot be opened: {exc.strerror or exc}") from None
    return _Raw(label, os.fstat(f.fileno()).st_size, path=path, file=f)


# -- the header ----------------------------------------------------------------------------------


def _not_safetensors(name: str, prefix: bytes) -> CheckpointError:
    """Explain what a non-safetensors file looks like, with the fix."""
    if prefix.startswith(b"PK\x03\x04"):
        what = "is a zip archive, the format torch.save writes, which holds a pickle"
    elif len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        what = "is a pickle (a legacy torch.save file or pickle.dump)"
    else:
        what = ""
    if what:
        return CheckpointError(
            name,
            f"{what}; pickle-based checkpoints can run arbitrary code when loaded, so geounet "
            f"refuses them. To convert a file you trust, {_RESAVE_HINT}",
        )
    text = prefix.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return CheckpointError(
            name,
            f"is an HTML/XML document (starts with {prefix[:16]!r}), not a model; a download "
            "probably returned an error or login page: download the file again",
        )
    return CheckpointError(
        name,
        f"is not a safetensors file (first bytes {prefix[:16]!r}); geounet checkpoints are "
        "written by geounet.save_checkpoint",
    )


def _read_header(raw: _Raw) -> _Header:
    """Parse and check the safetensors header. Reads only the header, never tensor data."""
    name, size = raw.name, raw.size
    prefix = raw.read(0, 16)
    if size < 8:
        raise CheckpointError(
            name,
            f"is only {size} bytes, too short for a safetensors header (empty or truncated); copy or download it again",
        )
    n = int.from_bytes(prefix[:8], "little")
    first = prefix[8:9]
    if first not in (b"{", b"") or n < 2 or n > _MAX_HEADER_BYTES:
        raise _not_safetensors(name, prefix)
    if 8 + n > size:
        raise CheckpointError(
            name,
            f"is truncated: its header declares {n} bytes but the file has only {size} bytes in "
            "all (an interrupted copy or download?); copy it again",
        )
    text = raw.read(8, n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            name, f"has a corrupt safetensors header (not valid JSON: {exc}); copy the file again"
        ) from None
    except RecursionError:
        raise CheckpointError(
            name, "has a corrupt safetensors header (JSON nested too deeply to be a checkpoint's); copy the file again"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(name, f"has a corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(name, "has a corrupt safetensors header: '__metadata__' must map strings to strings")
    tensors = {tensor: _parse_entry(name, tensor, entry) for tensor, entry in header.items()}
    _check_layout(name, tensors, size - 8 - n)
    return _Header(data_start=8 + n, tensors=tensors, metadata=metadata)


def _parse_entry(name: str, tensor: str, entry: Any) -> _Entry:
    """One tensor's dtype, shape and byte span, each checked."""

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(name, f"has a corrupt safetensors header: tensor '{tensor}' {why}")

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
        raise corrupt(f"spans {offsets[1] - offsets[0]} bytes but dtype {dtype} and shape {tuple(shape)} need {nbytes}")
    return _Entry(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _check_layout(name: str, tensors: dict[str, _Entry], data_len: int) -> None:
    """Tensors must tile the data section exactly: no gaps, no overlaps, nothing missing."""
    pos = 0
    for tensor, e in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            raise CheckpointError(
                name,
                f"has a corrupt safetensors header: tensor '{tensor}' starts at byte {e.begin} of "
                f"the data section, expected {pos} (tensors overlap or leave gaps)",
            )
        pos = e.end
    if pos > data_len:
        raise CheckpointError(
            name,
            f"is truncated: its tensors need {pos} bytes of data but only {data_len} are present "
            "(an interrupted copy or download?); copy it again",
        )
    if pos < data_len:
        raise CheckpointError(
            name,
            f"has {data_len - pos} unexpected bytes after the last tensor; the file is corrupt "
            "or was appended to: copy it again",
        )


def _metadata_from_header(header: _Header, name: str) -> CheckpointMetadata:
    """The geounet metadata of a parsed header, validated; refusals name the key at fault."""
    raw = header.metadata.get(METADATA_KEY)
    if raw is None:
        keys = sorted(header.metadata)
        raise CheckpointError(
            name,
            f"has no geounet metadata (no '{METADATA_KEY}' key in the safetensors header metadata; "
            f"keys present: {keys}); it was not written by geounet.save_checkpoint. Build the "
            "model with geounet.create_model, load these weights into it and save it with "
            "geounet.save_checkpoint",
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(name, f"geounet metadata is not valid JSON ({exc}); copy the file again") from None
    except RecursionError:
        raise CheckpointError(
            name, "geounet metadata is nested too deeply to be a checkpoint's; the file is corrupt or hostile"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(name, f"geounet metadata is a JSON {type(data).__name__}, not an object")
    if data.get("format") != FORMAT:
        raise CheckpointError(name, f"geounet metadata key 'format' = {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            name,
            f"was written by a newer geounet (checkpoint format version {version}; this geounet "
            f"reads up to {FORMAT_VERSION}); upgrade geounet",
        )
    try:
        return CheckpointMetadata.model_validate(data)
    except ValidationError as err:
        lines = describe_validation_error(err, "geounet metadata").splitlines()
        raise CheckpointError(name, "invalid " + "; ".join(lines)) from None
