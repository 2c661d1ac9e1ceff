"""The content hash: what identifies a checkpoint's weights, and how it is checked.

SHA-256 over the tensors' names, dtypes, shapes and bytes in sorted name order, so it
identifies the weights independently of the metadata and of the order tensors were
written in. :func:`content_hash` computes it from a state dict (saving), the private
helpers from a file's raw data section (loading); both feed the same records to
:func:`_hash_items`, so they agree by construction. The hash keys worker-side model
caches and is checked on every load. :func:`_describe_mismatch` explains how a file's
tensors differ from what a model expects.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping

import torch

from geounet.checkpoint.header import (
    _DTYPE_NAMES,
    _DTYPES,
    CheckpointSource,
    _Header,
    _metadata_from_header,
    _open,
    _read_header,
)
from geounet.checkpoint.metadata import CheckpointMetadata
from geounet.errors import CheckpointError, ConfigError

__all__ = ["checkpoint_hash", "content_hash"]

_HASH_CHUNK = 1 << 24


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
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex of a state dict, identical to the hash stored by ``save_checkpoint``.

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
    """The content hash of a file's data section, read in 16 MiB chunks without a copy."""
    return _hash_items(
        (name, e.dtype, e.shape, _chunks(data, e.begin, e.end)) for name, e in sorted(header.tensors.items())
    )


def _check_hash(name: str, meta: CheckpointMetadata, actual: str) -> None:
    if actual != meta.hash:
        raise CheckpointError(
            name,
            f"content hash mismatch: the metadata records {meta.short_hash}… but the tensors hash "
            f"to {actual[:12]}…; the weights were modified or corrupted after saving: copy the "
            "file again from its source",
        )


def _verify_hash(name: str, meta: CheckpointMetadata, header: _Header, data: bytearray) -> None:
    """Recompute the hash of ``data`` (the data section) and check it against ``meta``."""
    _check_hash(name, meta, _hash_data(header, memoryview(data)))


def checkpoint_hash(source: CheckpointSource, *, verify: bool = True, name: str | None = None) -> str:
    """The checkpoint's content hash (SHA-256 hex of its tensors).

    Args:
        source: the checkpoint's path, or its bytes.
        verify: recompute the hash from the tensor bytes (one read of the whole file, in
            16 MiB chunks) and check it against the stored one. With ``False`` only the
            header is read and the stored value is returned.
        name: what messages call the checkpoint (default: its path, or ``<checkpoint bytes>``).

    Raises:
        CheckpointError: as ``read_metadata``, or the recomputed hash differs.
    """
    with _open(source, name) as raw:
        header = _read_header(raw)
        meta = _metadata_from_header(header, raw.name)
        if not verify:
            return meta.hash
        data = raw.data(header.data_start)
    _verify_hash(raw.name, meta, header, data)
    return meta.hash


def _describe_mismatch(
    found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], limit: int = 5
) -> str:
    """Human summary of tensor-name and shape differences, or '' when they agree."""
    parts = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))

    def listing(names: list[str], fmt: Callable[[str], str]) -> str:
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
