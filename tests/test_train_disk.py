"""Training on a full disk: every file it writes is atomic, a failed write raises OutputError
naming the file and leaves the previous file as it was; ``geounet train`` exits 4.

A full disk is simulated with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): a write
past the limit is cut short and then fails with EFBIG, as on a full device.
"""

from __future__ import annotations

import contextlib
import functools
import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from geounet.atomic import is_partial
from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.errors import OutputError
from geounet.train.report import plot_curves, write_csv
from geounet.train.state import save_state, state_paths
from tests.reliability._faults import run_cli
from tests.test_train import write_config


@contextlib.contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """In this process: files cannot grow past ``nbytes`` while the block runs (soft limit only,
    restored afterwards)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _files_up_to(limit: int) -> None:
    """In a child process: writing a file past ``limit`` bytes fails with EFBIG (SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _assert_unchanged_and_clean(folder: Path, before: dict[str, bytes]) -> None:
    """Only the files that were there (none partial), with the same bytes."""
    left = sorted(p.name for p in folder.iterdir())
    assert [n for n in left if not is_partial(n)] == sorted(before), left
    assert [n for n in left if is_partial(n)] == []  # the failed write removed its temporary file
    assert _snapshot(folder) == before


def _history(epochs: int) -> list[dict[str, float | int]]:
    return [
        {
            "epoch": e,
            "step": 4 * e,
            "train_loss": 1.0 / e,
            "val_loss": 1.1 / e,
            "building_iou": 0.1 * e,
            "building_f1": 0.05 * e,
            "score": 0.07 * e,
            "epoch_time_s": 1.5,
        }
        for e in range(1, epochs + 1)
    ]


def _optimizer(features: int) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    layer = torch.nn.Linear(features, features)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.randn(2, features)).sum().backward()
    opt.step()
    return opt


def test_log_csv_failing_midway_keeps_the_previous_log(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    write_csv(path, _history(2))
    before = _snapshot(tmp_path)
    with file_size_limit(300), pytest.raises(OutputError) as err:
        write_csv(path, _history(40))  # ~3 kB: cut short at 300 bytes
    assert str(path) in str(err.value) and "file size limit" in str(err.value)
    _assert_unchanged_and_clean(tmp_path, before)


def test_curves_png_failing_midway_keeps_the_previous_picture(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    plot_curves(path, _history(2), ["building"])
    before = _snapshot(tmp_path)
    with file_size_limit(2000), pytest.raises(OutputError, match=str(path)):
        plot_curves(path, _history(3), ["building"])
    _assert_unchanged_and_clean(tmp_path, before)


def test_state_tensors_failing_midway_keep_the_previous_sidecar(tmp_path: Path) -> None:
    checkpoint = tmp_path / "last.safetensors"
    opt = _optimizer(64)  # two 64 x 64 float32 moments: ~33 kB of tensors
    save_state(checkpoint, opt, {"epoch": 1, "history": _history(1)})
    before = _snapshot(tmp_path)
    opt.step()
    with file_size_limit(8000), pytest.raises(OutputError) as err:
        save_state(checkpoint, opt, {"epoch": 2, "history": _history(2)})
    assert str(state_paths(checkpoint)[1]) in str(err.value)
    _assert_unchanged_and_clean(tmp_path, before)


def test_state_json_failing_midway_keeps_the_previous_record(tmp_path: Path) -> None:
    checkpoint = tmp_path / "last.safetensors"
    jpath, tpath = state_paths(checkpoint)
    opt = _optimizer(2)  # tensors of a few hundred bytes: written; the long JSON is not
    save_state(checkpoint, opt, {"epoch": 1, "history": _history(1)})
    before = jpath.read_bytes()
    with file_size_limit(4000), pytest.raises(OutputError) as err:
        save_state(checkpoint, opt, {"epoch": 2, "history": _history(60)})
    assert str(jpath) in str(err.value)
    assert jpath.read_bytes() == before and json.loads(before)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([jpath.name, tpath.name])


@pytest.mark.timeout(120)
def test_train_on_a_full_disk_exits_4_and_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = write_config(tmp_path, out, optim={"epochs": 1})
    # 55 kB per file: the checkpoints (~40 kB) are written, the optimizer state (~69 kB) is not.
    res = run_cli(
        ["train", str(config), "--no-progress"], timeout=120, preexec_fn=functools.partial(_files_up_to, 55_000)
    )
    assert res.returncode == 4, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"cannot write {out / 'last.state.safetensors'}: file size limit exceeded" in res.stderr
    best = out / "best.safetensors"
    model = load_checkpoint(best)  # complete, and its content hash verifies
    assert list(model.spec.classes) == ["building", "road"]
    assert read_metadata(best).provenance["epochs"] == 1
    assert not [p for p in out.iterdir() if is_partial(p)]
    assert not (out / "last.state.safetensors").exists()
