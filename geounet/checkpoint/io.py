"""Saving and loading checkpoints, and converting pickled ones without running them.

:func:`save_checkpoint` validates everything inference needs into a
:class:`~geounet.checkpoint.metadata.CheckpointMetadata`, hashes the weights and writes
one safetensors file through :func:`geounet.atomic.write_bytes`. :func:`load_checkpoint`
runs every check of :mod:`geounet.checkpoint.header` and
:mod:`geounet.checkpoint.hashing` before a weight reaches the model; it and
:func:`read_metadata` take a path or the checkpoint's bytes (a worker loads the bytes the
client sent it, without a temporary file). :func:`import_torch_checkpoint` converts a
``torch.save`` state dict using only ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import save as _safetensors_save

from geounet import __version__
from geounet.atomic import write_bytes
from geounet.checkpoint.hashing import _describe_mismatch, _verify_hash, content_hash
from geounet.checkpoint.header import (
    _DTYPES,
    CheckpointSource,
    _Entry,
    _metadata_from_header,
    _open,
    _read_header,
)
from geounet.checkpoint.metadata import METADATA_KEY, CheckpointMetadata, _coerce_thresholds, _plain_json
from geounet.compute import default_halo, default_tile_size
from geounet.config import describe_validation_error
from geounet.errors import CheckpointError, ConfigError, OutputError
from geounet.models.base import ModelSpec, SegmentationModel
from geounet.models.registry import build, list_models
from geounet.scene.normalize import MeanStd, Percentile, default_normalization, parse_normalization

log = logging.getLogger(__name__)

__all__ = ["import_torch_checkpoint", "load_checkpoint", "read_metadata", "save_checkpoint"]


# -- loading ---------------------------------------------------------------------------------


def read_metadata(source: CheckpointSource, *, name: str | None = None) -> CheckpointMetadata:
    """Read and validate a checkpoint's metadata from its header alone.

    Reads only the header (typically a few kilobytes): no tensor data is read, no model is
    built and the content hash is *not* verified (that needs every byte; use
    :func:`load_checkpoint` or :func:`~geounet.checkpoint.hashing.checkpoint_hash`). Meant
    for checking scenes against the model before any work is scheduled. The architecture
    name is not checked against the registry here.

    Args:
        source: the checkpoint's path, or its bytes (``bytes``, ``bytearray`` or
            ``memoryview``; not copied).
        name: what messages call the checkpoint (default: its path, or ``<checkpoint bytes>``).

    Raises:
        CheckpointError: missing, not safetensors (a pickle, HTML, random bytes), truncated,
            corrupt header, or missing/invalid geounet metadata; the message names the file,
            the problem and the key at fault.
    """
    with _open(source, name) as raw:
        header = _read_header(raw)
    return _metadata_from_header(header, raw.name)


def load_checkpoint(
    source: CheckpointSource, *, device: str | torch.device = "cpu", name: str | None = None
) -> SegmentationModel:
    """Rebuild a model from a checkpoint, with every check, ready for inference.

    Steps: parse the header (never unpickling anything), validate the metadata, build the
    architecture from the registry, compare tensor names and shapes with the model, read
    the tensor data once, verify the content hash, check the weights are finite, load them
    strictly, move the model to ``device`` and switch it to eval mode.

    Costs one read of the file, or one copy of the given bytes' tensor data (the hash is
    checked on a private copy, which nothing else can change before it is loaded); peak
    memory is about the checkpoint's size (the tensors view that copy) plus the model's
    own parameters.

    Args:
        source: a file written by :func:`save_checkpoint`, or that file's bytes (``bytes``,
            ``bytearray`` or ``memoryview``), as a worker receives them from the client.
        device: where the model goes (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device).
        name: what messages call the checkpoint (default: its path, or ``<checkpoint bytes>``).

    Returns:
        The model in eval mode, with ``model.metadata`` (the :class:`CheckpointMetadata` as a
        dict, including ``"hash"``) and ``model.checkpoint_path`` set (the path as a string;
        None when loaded from bytes).

    Raises:
        CheckpointError: naming the file and the problem: missing, not safetensors (pickle,
            zip, HTML, random bytes), truncated, corrupt header, missing or invalid metadata,
            unknown architecture, missing/unexpected/mis-shaped tensors, hash mismatch,
            NaN or infinite weights.
    """
    with _open(source, name) as raw:
        where, path = raw.name, raw.path
        header = _read_header(raw)
        meta = _metadata_from_header(header, where)
        model = _build(meta.spec, where)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        mismatch = _describe_mismatch({k: e.shape for k, e in header.tensors.items()}, expected)
        if mismatch:
            raise CheckpointError(
                where,
                f"weights do not match architecture {meta.spec.arch!r} (width {meta.spec.width}, "
                f"depth {meta.spec.depth}) described in its metadata: {mismatch}; re-save the "
                "checkpoint from the model that produced these weights",
            )
        model = _materialize(model, meta.spec)
        data = raw.data(header.data_start)
    _verify_hash(where, meta, header, data)

    tensors = {tensor: _tensor_from(data, e) for tensor, e in header.tensors.items()}
    for tensor in sorted(tensors):
        t = tensors[tensor]
        if t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CheckpointError(
                    where,
                    f"tensor '{tensor}' holds {bad} NaN or infinite values (of {t.numel()}); training "
                    "diverged before this checkpoint was saved: use an earlier checkpoint",
                )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(where, f"weights cannot be loaded into the model: {exc}") from None
    del tensors, data

    model.to(device)
    model.eval()
    radius = model.receptive_field_radius
    record = meta.to_dict()
    if radius != meta.receptive_field_radius:
        log.warning(
            "checkpoint %s records a receptive-field radius of %d px but this geounet computes %d px "
            "for its architecture; using %d (check the halo, %d px)",
            where,
            meta.receptive_field_radius,
            radius,
            radius,
            meta.halo,
        )
        record["receptive_field_radius"] = radius
    model.metadata = record
    model.checkpoint_path = None if path is None else str(path)  # type: ignore[assignment]
    return model


def _build(spec: ModelSpec, name: str) -> SegmentationModel:
    """The architecture of ``spec`` on the meta device: shapes without memory, so a header
    whose metadata declares a huge model is refused (shape check) before anything is
    allocated; :func:`_materialize` gives it memory."""
    if spec.arch not in list_models():
        raise CheckpointError(
            name,
            f"unknown architecture {spec.arch!r}; this geounet knows {', '.join(list_models())}. "
            "The checkpoint needs a newer geounet or the plugin that registers that architecture",
        )
    try:
        # On the meta device: the random initialisation the weights overwrite is skipped (0.11 s
        # of a width-64 UNet's 0.44 s load on this project's machine); memory comes uninitialised
        with torch.device("meta"):
            model = build(spec)
    except ConfigError as exc:
        raise CheckpointError(name, f"cannot build architecture {spec.arch!r} from its metadata: {exc}") from None
    return model


def _materialize(model: SegmentationModel, spec: ModelSpec) -> SegmentationModel:
    """``model`` (from :func:`_build`) with CPU memory, uninitialised: the checkpoint fills it."""
    if any(m._non_persistent_buffers_set for m in model.modules()):
        # a buffer no checkpoint holds would stay uninitialised: build it for real
        return build(spec)
    return model.to_empty(device="cpu")


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
    gsd_m: float | None = None,
    linear_classes: Sequence[str] | None = None,
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
    :func:`geounet.compute.default_tile_size`; a tile size kept from ``model.metadata`` is
    replaced by the default when a new halo no longer fits in it); ``thresholds`` 0.5 per
    class; ``provenance`` empty.

    The file is written by :func:`geounet.atomic.write_bytes` to ``.partial-<pid>-<name>``
    in the same folder, fsynced and moved into place with ``os.replace`` (the folder is
    fsynced too): readers see the old file or the new one, never half of one, and a failure
    leaves the old file untouched. Costs one serialized copy of the weights in memory and
    one pass to hash them.

    Args:
        model: a geounet model (from ``create_model`` or ``load_checkpoint``).
        path: destination, conventionally ``*.safetensors``; overwritten if it exists.
        bands: 1-based scene band indexes feeding the model's input channels, in order.
        normalization: a ``MeanStd``/``Percentile`` or its mapping form.
        tile_size: suggested tile side in pixels, a multiple of ``2**depth``.
        halo: suggested context per tile side in pixels, a multiple of ``2**depth``.
        thresholds: one float for every class, a list in class order, or ``{class: float}``.
        gsd_m: ground pixel size the model was trained at, metres (inference resamples each
            scene to it); None keeps ``model.metadata``'s, else unknown.
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
            geounet_version=__version__,
            spec=spec,
            bands=bands_v,
            normalization=norm,
            receptive_field_radius=radius,
            tile_size=tile_v,
            halo=halo_v,
            thresholds=thr,
            gsd_m=pick("gsd_m", gsd_m),
            linear_classes=pick("linear_classes", list(linear_classes) if linear_classes is not None else None),
            provenance=prov,
            extra=extras,
            hash=digest,
        )
    except ValidationError as err:
        lines = describe_validation_error(err, "save_checkpoint").splitlines()
        raise ConfigError("; ".join(lines)) from None
    except TypeError as exc:
        raise ConfigError(f"save_checkpoint: {exc}") from None

    # A single metadata key: safetensors writes its metadata map in unspecified order, so one
    # key keeps the file byte-for-byte reproducible.
    blob = _safetensors_save(tensors, metadata={METADATA_KEY: meta.to_json()})
    _write(p, blob)
    return digest


def _write(path: Path, blob: bytes) -> None:
    """``blob`` into ``path`` through the project's one atomic writer, durably (a crash right
    after saving must not lose a checkpoint), with the checkpoint's own messages."""
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write checkpoint {path}: folder {folder} does not exist; create it first")
    if path.is_dir():
        raise OutputError(f"cannot write checkpoint {path}: it is a directory; give a file name")
    try:
        write_bytes(path, blob, durable=True)
    except OutputError as exc:
        cause = exc.__cause__
        if not isinstance(cause, OSError):
            raise
        raise OutputError(
            f"cannot write checkpoint {path}: {cause.strerror or cause}; free disk space or choose "
            "a writable folder (the previous file, if any, is unchanged)"
        ) from cause


# -- converting pickled checkpoints ----------------------------------------------------------


def _find_state_dict(obj: Any, src: Path) -> dict[str, torch.Tensor]:
    """The state dict inside what ``torch.load`` returned: at the top or under a usual key."""

    def is_state(d: Any) -> bool:
        return (
            isinstance(d, Mapping)
            and bool(d)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())
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
    _open(s).close()  # the loader's refusals for a missing, unreadable or directory path
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
    except Exception as exc:
        raise CheckpointError(s, f"torch.load(weights_only=True) cannot read it: {exc}") from None
    state = _find_state_dict(obj, s)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    model = _materialize(_build(model_spec, str(s)), model_spec)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = _describe_mismatch({k: tuple(v.shape) for k, v in state.items()}, expected)
    if mismatch:
        raise CheckpointError(s, f"weights do not match architecture {model_spec.arch!r} as specified: {mismatch}")
    model.load_state_dict(state, strict=True)
    return save_checkpoint(model, dst, **save_kwargs)
