"""Checkpoints: exact round trips, atomic writes, every refusal with a useful message."""

from __future__ import annotations

import errno
import json
import os
import pickle
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import geounet.checkpoint as ckpt
import geounet.checkpoint.hashing as ckpt_hashing
import geounet.checkpoint.io as ckpt_io
from geounet import create_model, load_checkpoint, read_metadata, save_checkpoint
from geounet.checkpoint import (
    CheckpointMetadata,
    checkpoint_hash,
    content_hash,
    import_torch_checkpoint,
)
from geounet.errors import CheckpointError, ConfigError, OutputError
from geounet.models import ModelSpec, SegmentationModel, list_models
from geounet.scene.normalize import MeanStd, Percentile

DEPTH = 2


def tiny_model(seed: int = 0, **kw: Any) -> SegmentationModel:
    """Width-4 UNet with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    kw = {"in_channels": 3, "width": 4, "depth": DEPTH, **kw}
    model = create_model("unet", **kw)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def sample_input(channels: int = 3) -> torch.Tensor:
    return torch.rand(1, channels, 13, 11, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_checkpoint(tiny_model(), path, provenance={"epochs": 3, "seed": 0})
    return path


def rewrite(
    path: Path,
    *,
    meta: Callable[[dict[str, Any]], Any] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    rehash: bool = False,
    raw_metadata: dict[str, str] | None = None,
) -> Path:
    """Rewrite a checkpoint in place with edited metadata and/or tensors (test helper)."""
    state = load_file(str(path))
    if tensors is not None:
        tensors(state)
    md = read_metadata(path).to_dict()
    if meta is not None:
        meta(md)
    if rehash:
        md["hash"] = content_hash(state)
    header = raw_metadata if raw_metadata is not None else {"geounet": json.dumps(md)}
    save_file(state, str(path), metadata=header)
    return path


def write_raw(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def error_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(CheckpointError) as info:
        fn()
    return str(info.value)


# -- round trip --------------------------------------------------------------------------------


def test_round_trip_is_exact(saved: Path) -> None:
    original = tiny_model()
    loaded = load_checkpoint(saved)
    x = sample_input()
    with torch.inference_mode():
        assert torch.equal(original(x), loaded(x))
    assert not loaded.training
    assert loaded.checkpoint_path == str(saved)
    for name, t in original.state_dict().items():  # BN buffers included
        assert torch.equal(t, loaded.state_dict()[name]), name
    assert loaded.spec == original.spec


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_loads_exactly_without_random_init(arch: str, tmp_path: Path) -> None:
    """Loading builds the model without its random initialisation (meta device): every
    parameter and buffer must still come from the file, for every architecture."""
    torch.manual_seed(3)
    model = create_model(arch, in_channels=3, width=4, depth=DEPTH).eval()
    path = tmp_path / f"{arch}.safetensors"
    save_checkpoint(model, path)
    torch.manual_seed(99)  # a different global RNG state must not matter
    loaded = load_checkpoint(path)
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    for name, t in model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name
    x = sample_input()
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_save_of_load_reproduces_metadata_and_hash(saved: Path, tmp_path: Path) -> None:
    first = read_metadata(saved)
    loaded = load_checkpoint(saved)
    assert loaded.metadata == first.to_dict()
    again = tmp_path / "again.safetensors"
    digest = save_checkpoint(loaded, again)
    assert digest == first.hash
    assert read_metadata(again) == first
    assert again.read_bytes() == saved.read_bytes()


def test_defaults_describe_inference(saved: Path) -> None:
    model = tiny_model()
    meta = read_metadata(saved)
    radius = model.receptive_field_radius
    m = 2**DEPTH
    assert meta.format == "geounet.checkpoint" and meta.format_version == 1
    assert meta.spec == model.spec
    assert meta.bands == [1, 2, 3]
    assert meta.normalization == MeanStd(mean=[0, 0, 0], std=[255, 255, 255])
    assert meta.receptive_field_radius == radius
    assert meta.halo == -(-radius // m) * m and meta.halo >= radius
    assert meta.tile_size == 1024
    assert meta.thresholds == {"building": 0.5}
    assert meta.provenance == {"epochs": 3, "seed": 0}
    assert meta.class_names == ("building",) and meta.out_channels == 1 and meta.mode == "binary"
    assert meta.short_hash == meta.hash[:12] and len(meta.hash) == 64
    assert meta.content_hash == meta.hash == content_hash(model.state_dict())
    header = json.loads(saved.read_bytes()[8 : 8 + int.from_bytes(saved.read_bytes()[:8], "little")])
    assert set(header["__metadata__"]) == {"geounet"}


def test_default_tile_grows_with_a_large_halo() -> None:
    assert ckpt.default_tile_size(96, 16) == 1024
    assert ckpt.default_tile_size(400, 16) == 1600
    assert ckpt.default_tile_size(1000, 64) == 4032


def test_keyword_arguments_override_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = tiny_model(in_channels=2, classes=("building", "road"), mode="multilabel")
    save_checkpoint(
        model,
        path,
        bands=[4, 2],
        normalization={"kind": "percentile", "low": [1, 2], "high": [300, 400]},
        tile_size=512,
        halo=32,
        thresholds=[0.3, 0.7],
        provenance={"data": "tiles-v2", "date": date(2024, 5, 1), "epochs": 40},
        note="first",
    )
    meta = read_metadata(path)
    assert meta.bands == [4, 2]
    assert meta.normalization == Percentile(low=[1, 2], high=[300, 400])
    assert (meta.tile_size, meta.halo) == (512, 32)
    assert meta.thresholds == {"building": 0.3, "road": 0.7}
    assert meta.provenance == {"data": "tiles-v2", "date": "2024-05-01", "epochs": 40}
    assert meta.extra == {"note": "first"}

    # Values from the loaded model's metadata survive unless overridden.
    loaded = load_checkpoint(path)
    save_checkpoint(loaded, path, provenance={"epochs": 41}, thresholds={"building": 0.4, "road": 0.6}, stage="fine")
    meta2 = read_metadata(path)
    assert meta2.provenance == {"epochs": 41}  # replaced, not merged
    assert meta2.thresholds == {"building": 0.4, "road": 0.6}
    assert meta2.extra == {"note": "first", "stage": "fine"}  # merged key by key
    assert (meta2.bands, meta2.normalization, meta2.tile_size, meta2.halo) == (
        meta.bands,
        meta.normalization,
        meta.tile_size,
        meta.halo,
    )
    assert meta2.hash == meta.hash

    # A new halo that no longer fits the kept tile size brings the default tile back.
    save_checkpoint(load_checkpoint(path), path, halo=256)
    meta3 = read_metadata(path)
    assert (meta3.halo, meta3.tile_size) == (256, 1024)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"bands": [1, 2]}, ["bands", "[1, 2]", "3 input bands"]),
        ({"bands": [0, 1, 2]}, ["1-based"]),
        ({"bands": 3}, ["bands", "valid list"]),
        ({"halo": "8"}, ["halo = '8'", "whole number"]),
        ({"normalization": MeanStd(mean=[0], std=[1])}, ["normalization", "1 bands", "takes 3"]),
        ({"halo": 6}, ["'halo' = 6", "multiple of 2**depth = 4", "use 8"]),
        ({"tile_size": 30}, ["'tile_size' = 30", "use 32"]),
        ({"tile_size": 16, "halo": 8}, ["at least 2 * halo + 4 = 20"]),
        ({"thresholds": {"road": 0.5}}, ["thresholds", "'building'"]),
        ({"thresholds": 1.5}, ["between 0 and 1"]),
        ({"thresholds": [0.5, 0.5]}, ["2 values for 1 classes"]),
        ({"provenance": {"x": object()}}, ["provenance", "JSON"]),
        ({"provenance": {"loss": float("nan")}}, ["provenance", "JSON"]),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, kwargs: dict[str, Any], words: list[str]) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError) as info:
        save_checkpoint(tiny_model(), path, **kwargs)
    for w in words:
        assert w in str(info.value)
    assert os.listdir(tmp_path) == []


def test_save_refuses_a_plain_module(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SegmentationModel.*Conv2d"):
        save_checkpoint(torch.nn.Conv2d(1, 1, 1), tmp_path / "m.safetensors")  # type: ignore[arg-type]


def test_other_dtypes_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "bf16.safetensors"
    model = tiny_model().to(torch.bfloat16)
    digest = save_checkpoint(model, path)
    assert checkpoint_hash(path) == digest == content_hash(model.state_dict())
    loaded = load_checkpoint(path)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name].to(t.dtype), t), name


def test_content_hash_ignores_order_and_sees_every_field() -> None:
    a = {"x": torch.arange(4, dtype=torch.float32), "y": torch.ones(2, 2)}
    base = content_hash(a)
    assert content_hash(dict(reversed(list(a.items())))) == base
    assert content_hash({**a, "x": torch.arange(4, dtype=torch.float32) + 1}) != base
    assert content_hash({"x2": a["x"], "y": a["y"]}) != base
    assert content_hash({**a, "y": torch.ones(4)}) != base  # same bytes, other shape
    assert content_hash({**a, "x": torch.arange(4, dtype=torch.int32)}) != base  # same size, other dtype


# -- atomic writes -----------------------------------------------------------------------------


def test_no_temporary_file_is_left(saved: Path) -> None:
    save_checkpoint(tiny_model(seed=1), saved)  # overwrite
    assert sorted(os.listdir(saved.parent)) == ["model.safetensors"]


def test_failed_write_leaves_old_file_untouched(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = saved.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputError) as info:
        save_checkpoint(tiny_model(seed=1), saved)
    assert "No space left" in str(info.value) and "model.safetensors" in str(info.value)
    assert saved.read_bytes() == before
    assert sorted(os.listdir(saved.parent)) == ["model.safetensors"]


def test_nan_weights_are_never_written(saved: Path) -> None:
    before = saved.read_bytes()
    model = tiny_model(seed=1)
    name, param = next((n, p) for n, p in model.named_parameters() if p.ndim == 4)
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    msg = error_of(lambda: save_checkpoint(model, saved))
    assert name in msg and "NaN" in msg and "model.safetensors" in msg
    assert saved.read_bytes() == before


def test_missing_folder_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist; create it"):
        save_checkpoint(tiny_model(), tmp_path / "nope" / "m.safetensors")


# -- refusals on load ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    msg = error_of(lambda: load_checkpoint(tmp_path / "absent.safetensors"))
    assert "absent.safetensors" in msg and "does not exist" in msg


def test_directory_and_empty_file(tmp_path: Path) -> None:
    assert "is a directory" in error_of(lambda: load_checkpoint(tmp_path))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    msg = error_of(lambda: read_metadata(empty))
    assert "empty.safetensors" in msg and "0 bytes" in msg


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (pickle.dumps({"w": [1.0, 2.0]}, protocol=2), ["pickle", "arbitrary code", "geounet.save_checkpoint"]),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", ["HTML", "download the file again"]),
        (bytes(range(7, 71)), ["not a safetensors file"]),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", ["not a safetensors file"]),
    ],
)
def test_not_safetensors(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    msg = error_of(lambda: load_checkpoint(path))
    assert "weights.pt" in msg
    for w in words:
        assert w in msg


def test_torch_zip_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(tiny_model().state_dict(), path)
    msg = error_of(lambda: load_checkpoint(path))
    assert "model.pth" in msg and "zip archive" in msg and "arbitrary code" in msg


def test_truncated_files(saved: Path) -> None:
    data = saved.read_bytes()
    n = int.from_bytes(data[:8], "little")
    saved.write_bytes(data[: 8 + n // 2])  # cut inside the header
    msg = error_of(lambda: read_metadata(saved))
    assert "model.safetensors" in msg and "truncated" in msg and f"declares {n} bytes" in msg

    saved.write_bytes(data[:-100])  # cut inside the tensor data
    msg = error_of(lambda: load_checkpoint(saved))
    assert "truncated" in msg and "copy it again" in msg

    saved.write_bytes(data + b"junk")
    assert "4 unexpected bytes" in error_of(lambda: load_checkpoint(saved))


def test_corrupt_json_header(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "c.safetensors", b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]')
    msg = error_of(lambda: read_metadata(path))
    assert "c.safetensors" in msg and "not valid JSON" in msg


def test_corrupt_tensor_table(tmp_path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}'
    path = write_raw(tmp_path / "c.safetensors", header, b"\0" * 4)
    msg = error_of(lambda: read_metadata(path))
    assert "tensor 'w'" in msg and "need 8" in msg


def test_missing_geounet_metadata(saved: Path) -> None:
    rewrite(saved, raw_metadata={"format": "pt"})
    msg = error_of(lambda: load_checkpoint(saved))
    assert "model.safetensors" in msg and "no geounet metadata" in msg and "'geounet'" in msg


def test_metadata_not_json(saved: Path) -> None:
    rewrite(saved, raw_metadata={"geounet": "{not json"})
    assert "geounet metadata is not valid JSON" in error_of(lambda: read_metadata(saved))


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.pop("hash"), ["missing required key 'hash'"]),
        (lambda m: m.update(bands=[1, 2]), ["'bands'", "[1, 2]", "3 input bands"]),
        (lambda m: m.update(tile_size="big"), ["'tile_size'", "'big'"]),
        (lambda m: m.update(spec={**m["spec"], "mode": "fuzzy"}), ["spec", "fuzzy"]),
        (lambda m: m.update(colour="red"), ["unknown key 'colour'"]),
        (lambda m: m.update(format="other"), ["'format' = 'other'"]),
        (lambda m: m.update(format_version=99), ["newer geounet", "upgrade"]),
    ],
)
def test_invalid_metadata_names_the_key(saved: Path, edit: Callable[[dict], Any], words: list[str]) -> None:
    rewrite(saved, meta=edit)
    msg = error_of(lambda: read_metadata(saved))
    assert "model.safetensors" in msg
    for w in words:
        assert w in msg


def test_unknown_architecture(saved: Path) -> None:
    rewrite(saved, meta=lambda m: m["spec"].update(arch="nosuchnet"))
    read_metadata(saved)  # the header alone is fine
    msg = error_of(lambda: load_checkpoint(saved))
    assert "unknown architecture 'nosuchnet'" in msg and "unet" in msg


def test_missing_and_unexpected_tensors(saved: Path) -> None:
    name = sorted(load_file(str(saved)))[0]
    rewrite(saved, tensors=lambda s: (s.pop(name), s.update({"extra.weight": torch.zeros(2)})), rehash=True)
    msg = error_of(lambda: load_checkpoint(saved))
    assert f"missing tensors '{name}'" in msg and "unexpected tensors 'extra.weight' (2,)" in msg


def test_wrong_shape_names_tensor_and_both_shapes(saved: Path) -> None:
    state = load_file(str(saved))
    name, t = next((n, t) for n, t in sorted(state.items()) if t.ndim == 4)
    rewrite(saved, tensors=lambda s: s.update({name: torch.zeros(t.shape[0] + 1, *t.shape[1:])}), rehash=True)
    msg = error_of(lambda: load_checkpoint(saved))
    bigger = (t.shape[0] + 1, *t.shape[1:])
    assert f"'{name}' is {bigger} in the file but {tuple(t.shape)} in the model" in msg


def test_nan_and_inf_weights_name_the_tensor(saved: Path) -> None:
    state = load_file(str(saved))
    name = next(n for n, t in sorted(state.items()) if t.is_floating_point() and t.ndim == 4)

    def poison(s: dict[str, torch.Tensor]) -> None:
        s[name] = s[name].clone()
        s[name].view(-1)[0] = float("inf")
        s[name].view(-1)[1] = float("nan")

    rewrite(saved, tensors=poison, rehash=True)
    msg = error_of(lambda: load_checkpoint(saved))
    assert f"tensor '{name}' holds 2 NaN or infinite values" in msg and "earlier checkpoint" in msg


def test_hash_mismatch(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor
    saved.write_bytes(bytes(data))
    msg = error_of(lambda: load_checkpoint(saved))
    assert "model.safetensors" in msg and "content hash mismatch" in msg and "modified or corrupted" in msg
    assert read_metadata(saved).hash == checkpoint_hash(saved, verify=False)
    assert "content hash mismatch" in error_of(lambda: checkpoint_hash(saved))


def test_read_metadata_reads_no_weights(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(saved.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)  # garbage weights, same size
    saved.write_bytes(bytes(data))

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read_metadata touched the weights")

    monkeypatch.setattr(ckpt_io, "build", forbidden)
    monkeypatch.setattr(ckpt_io, "_tensor_from", forbidden)
    monkeypatch.setattr(ckpt_hashing, "_hash_data", forbidden)
    meta = read_metadata(saved)
    assert isinstance(meta, CheckpointMetadata) and meta.spec.arch == "unet"


def test_checkpoint_hash(saved: Path) -> None:
    assert checkpoint_hash(saved) == checkpoint_hash(saved, verify=False) == read_metadata(saved).hash


def test_load_to_device(saved: Path) -> None:
    model = load_checkpoint(saved, device=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in model.parameters())


# -- pickles: converted safely, never executed --------------------------------------------------


class Payload:
    """Unpickling this runs ``touch <marker>``: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_never_runs(tmp_path: Path) -> None:
    # Control: the payload is live; plain unpickling runs it.
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    marker = tmp_path / "MARKER"
    raw = tmp_path / "evil.pt"
    raw.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    zipped = tmp_path / "evil.pth"
    torch.save({"state_dict": {"weight": Payload(marker)}}, zipped)

    for path in (raw, zipped):
        for fn in (load_checkpoint, read_metadata, checkpoint_hash):
            assert "arbitrary code" in error_of(lambda fn=fn, path=path: fn(path))
        spec = ModelSpec("unet", width=4, depth=DEPTH)
        msg = error_of(lambda path=path, spec=spec: import_torch_checkpoint(path, tmp_path / "out.safetensors", spec))
        assert path.name in msg and "refused" in msg
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_import_torch_checkpoint(tmp_path: Path) -> None:
    model = tiny_model()
    src = tmp_path / "legacy.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, src)
    dst = tmp_path / "converted.safetensors"
    digest = import_torch_checkpoint(src, dst, model.spec.to_dict(), provenance={"source": "legacy.pth"})
    loaded = load_checkpoint(dst)
    x = sample_input()
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert digest == loaded.metadata["hash"] and loaded.metadata["provenance"] == {"source": "legacy.pth"}


def test_import_checks_the_spec(tmp_path: Path) -> None:
    src = tmp_path / "legacy.pth"
    torch.save(tiny_model().state_dict(), src)
    dst = tmp_path / "o.safetensors"
    msg = error_of(lambda: import_torch_checkpoint(src, dst, ModelSpec("unet", width=8, depth=DEPTH)))
    assert "legacy.pth" in msg and "wrong shapes" in msg
    assert "does not exist" in error_of(lambda: import_torch_checkpoint(tmp_path / "nope.pt", dst, ModelSpec("unet")))
    assert not dst.exists()


def test_weights_are_little_endian_safetensors(saved: Path) -> None:
    """Other tools can read the file: the plain safetensors loader agrees with ours."""
    state = load_file(str(saved))
    loaded = load_checkpoint(saved).state_dict()
    assert set(state) == set(loaded)
    for name, t in state.items():
        assert np.array_equal(t.numpy(), loaded[name].numpy()), name


def test_hostile_header_cannot_request_a_huge_model(tmp_path) -> None:
    """A checkpoint whose spec asks for an enormous width fails before anything is built."""
    import json
    import struct

    from geounet.checkpoint import load_checkpoint
    from geounet.errors import CheckpointError

    good = tmp_path / "good.safetensors"
    from tests.conftest import make_checkpoint

    make_checkpoint(good, width=2, depth=2)
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["geounet"])
    meta["spec"]["width"] = 10**7
    header["__metadata__"]["geounet"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    with pytest.raises(CheckpointError, match="width"):
        load_checkpoint(bad)


# -- from bytes: the same checks, no file ------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_loading_from_bytes_equals_loading_the_file(saved: Path, kind: type) -> None:
    blob = kind(saved.read_bytes())
    from_file = load_checkpoint(saved)
    from_bytes = load_checkpoint(blob)
    assert from_bytes.state_dict().keys() == from_file.state_dict().keys()
    for name, t in from_file.state_dict().items():
        assert torch.equal(t, from_bytes.state_dict()[name]), name
    assert from_bytes.metadata == from_file.metadata
    assert from_bytes.checkpoint_path is None and not from_bytes.training
    assert read_metadata(blob) == read_metadata(saved)
    assert checkpoint_hash(blob) == checkpoint_hash(saved)


def _corrupt(data: bytes) -> dict[str, bytes]:
    """Damaged versions of a good checkpoint's bytes, each refused for another reason."""
    n = int.from_bytes(data[:8], "little")
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    return {
        "empty": b"",
        "pickle": pickle.dumps({"w": [1.0]}, protocol=2),
        "html": b"<!DOCTYPE html><html>Not found</html>",
        "header cut": data[: 8 + n // 2],
        "data cut": data[:-100],
        "appended": data + b"junk",
        "hash": bytes(flipped),
    }


@pytest.mark.parametrize("case", ["empty", "pickle", "html", "header cut", "data cut", "appended", "hash"])
def test_corrupt_bytes_are_refused_like_the_file(saved: Path, tmp_path: Path, case: str) -> None:
    blob = _corrupt(saved.read_bytes())[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    for fn in (load_checkpoint, read_metadata) if case not in ("data cut", "appended", "hash") else (load_checkpoint,):
        with pytest.raises(CheckpointError) as from_file:
            fn(path)
        with pytest.raises(CheckpointError) as from_bytes:
            fn(blob)
        assert from_bytes.value.path == "<checkpoint bytes>"
        assert from_bytes.value.problem == from_file.value.problem
        assert str(from_bytes.value) == str(from_file.value).replace(str(path), "<checkpoint bytes>")
    named = error_of(lambda: load_checkpoint(blob, name="<model from the client>"))
    assert named.startswith("checkpoint <model from the client>: ")


def test_get_model_from_bytes_writes_no_file(saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker builds the model from the bytes the client sent it: no temporary file."""
    import builtins
    import tempfile

    import geounet.infer.model_cache as model_cache

    blob = saved.read_bytes()
    digest = read_metadata(blob).hash
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    monkeypatch.setattr(tempfile, "tempdir", str(spool))

    def no_files(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a file was opened or created: {args!r}")

    for name in ("NamedTemporaryFile", "TemporaryFile", "mkstemp", "SpooledTemporaryFile"):
        monkeypatch.setattr(tempfile, name, no_files)
    monkeypatch.setattr(model_cache, "_MODELS", {})
    monkeypatch.setattr(builtins, "open", no_files)
    model = model_cache.get_model(blob, digest, torch.device("cpu"))
    monkeypatch.undo()  # builtins.open back before anything else runs
    assert os.listdir(spool) == [] and sorted(os.listdir(saved.parent)) == ["model.safetensors", "tmp"]
    x = sample_input()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), tiny_model()(x), rtol=1e-4, atol=1e-5)
    assert model.metadata["hash"] == digest and model.checkpoint_path is None


def test_write_goes_through_a_partial_name(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new file is complete under ``.partial-<pid>-<name>`` before it replaces the old one."""
    seen: list[list[str]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        seen.append(sorted(os.listdir(saved.parent)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_checkpoint(tiny_model(seed=1), saved)
    assert seen[0] == sorted([f".partial-{os.getpid()}-model.safetensors", "model.safetensors"])
    assert sorted(os.listdir(saved.parent)) == ["model.safetensors"]
    assert read_metadata(saved).hash == content_hash(tiny_model(seed=1).state_dict())


def test_directory_as_destination_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").mkdir()
    with pytest.raises(OutputError, match="is a directory; give a file name"):
        save_checkpoint(tiny_model(), tmp_path / "m.safetensors")
