"""Nothing read from a file may choose where geounet writes: class names from a checkpoint's
metadata (not covered by its content hash) and scene file names become folder, file and layer
names only when they are safe, and never those of the run's own files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from geounet import read_metadata
from geounet.batch.run import run_scenes
from geounet.cli.main import cli
from geounet.errors import CheckpointError, ConfigError
from geounet.export.layout import RUN_FILES
from geounet.models.base import ModelSpec
from geounet.scene.source import unique_stems
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, smooth_image, write_tif

HOSTILE_CLASSES = ["../../../../victim", "/tmp/x/ABSOLUTE", "a/b", ".hidden", "..", "x" * 65, "", "ü"]


@pytest.mark.parametrize("name", HOSTILE_CLASSES)
def test_model_specs_refuse_class_names_that_are_not_identifiers(name: str) -> None:
    with pytest.raises(ConfigError, match="rename the class"):
        ModelSpec("unet", classes=(name,), mode="binary")


def _with_classes(src: Path, dst: Path, classes: list[str]) -> Path:
    """A copy of the checkpoint ``src`` whose metadata names other classes (the tensors, and
    so the content hash, are unchanged: the metadata is not hashed)."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    record = json.loads(meta["geounet"])
    record["spec"]["classes"] = classes
    record["thresholds"] = dict.fromkeys(classes, 0.5)
    save_file(load_file(str(src)), str(dst), metadata={"geounet": json.dumps(record)})
    return dst


@pytest.mark.parametrize("name", ["../../victim", "/tmp/geounet-test-ABSOLUTE/victim"])
def test_a_checkpoint_naming_a_path_as_class_is_refused_before_any_write(tmp_path: Path, name: str) -> None:
    good = make_checkpoint(tmp_path / "good.safetensors", arch="unet", width=2, depth=2)
    bad = _with_classes(Path(good), tmp_path / "bad.safetensors", [name])
    with pytest.raises(CheckpointError, match="rename the class"):
        read_metadata(bad)
    victim = tmp_path / "victims.geojson"  # what a class '../../victim' would have overwritten
    victim.write_text("keep me")
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 64, 64)), crs="EPSG:32633")
    out = tmp_path / "deep" / "er" / "out"
    res = CliRunner().invoke(cli, ["predict", str(scene), "-m", str(bad), "-o", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "rename the class" in res.output
    assert victim.read_text() == "keep me"
    assert not out.exists() or not any(out.iterdir())


def test_scene_folder_names_are_safe_distinct_and_never_a_run_file() -> None:
    paths = [
        "/d/...tif",
        "/d/..tif",
        "/d/.hidden.tif",
        "/d/x y.tif",
        "/d/x_y.tif",
        "/d/x_y_2.tif",
        "/d/geounet.log.tif",
        "/d/run.json.tif",
        "/d/a\\b.tif",
        "/d/ünï.tif",
        "/a/x/s.tif",
        "/b/x/s.tif",
    ]
    stems = unique_stems(paths, reserved=RUN_FILES)
    assert len(set(stems)) == len(stems), stems
    for s in stems:
        assert s and not s.startswith(".") and "/" not in s and "\\" not in s, s
        assert s.lower() not in {r.lower() for r in RUN_FILES}, s
    assert stems[-2:] == ["a_x_s", "b_x_s"]  # parents tell these two apart
    assert stems[3:6] == ["x_y", "x_y_3", "x_y_2"]  # same folder: numbered, never onto x_y_2


def test_a_scene_named_dot_dot_writes_inside_out(tmp_path: Path, dask_local) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    scene = write_tif(scenes / "...tif", smooth_image((3, 64, 64)), crs="EPSG:32633")
    log_named = write_tif(scenes / "geounet.log.tif", smooth_image((3, 64, 64), seed=1), crs="EPSG:32633")
    ckpt = make_checkpoint(tmp_path / "m.safetensors", arch="unet", width=2, depth=2)
    out = tmp_path / "runs" / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_scenes(
        [str(scene), str(log_named)], ckpt, out, InferenceSettings(tile_size=64), client=dask_local, progress=False
    )
    assert [r.status for r in res] == ["success", "success"], [r.error for r in res]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "runs"])  # nothing else beside
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["out"]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["geounet.log_scene", "scene"]
    assert sorted(p.name for p in out.iterdir() if not p.is_dir()) == ["catalog.json"]
    assert all((out / f / "scene.json").is_file() for f in folders)


@pytest.mark.timeout(60)
def test_a_model_path_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO as --model would block its reader forever: refused before it is opened, by
    predict and info alike (exit 2)."""
    import os

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_metadata(fifo)
    scene = write_tif(tmp_path / "s.tif", smooth_image((3, 64, 64)), crs="EPSG:32633")
    for args in (["info", str(fifo)], ["predict", str(scene), "-m", str(fifo), "-o", str(tmp_path / "out")]):
        res = CliRunner().invoke(cli, [*args])
        assert res.exit_code == 2, res.output
        assert "not a regular file" in res.output


@pytest.mark.parametrize("planted", [".geounet.lock", "geounet.log"])
def test_symlinks_planted_in_out_are_never_written_through(tmp_path: Path, planted: str) -> None:
    """OUT/.geounet.lock or OUT/geounet.log pointing at another file: the run refuses
    (exit 4, names the link) and the other file keeps its bytes."""
    from geounet.batch.workflow import output_lock, run_log
    from geounet.errors import OutputError

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / planted).symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        if planted == ".geounet.lock":
            with output_lock(out):
                pass
        else:
            with run_log(out):
                pass
    assert victim.read_text() == "keep me"


def test_a_header_declaring_a_huge_model_is_refused_before_any_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata claiming width 512, depth 6 over a small model's tensors: the shapes are
    compared on the meta device, so loading refuses it before giving the model memory (~38 GB)."""
    from safetensors import safe_open

    import geounet.checkpoint.io as io
    from geounet.checkpoint import load_checkpoint

    given_memory: list[int] = []
    real = io._materialize
    monkeypatch.setattr(io, "_materialize", lambda model, spec: given_memory.append(spec.width) or real(model, spec))

    src = make_checkpoint(tmp_path / "small.safetensors", width=4, depth=2)
    with safe_open(str(src), "pt") as f:
        record = json.loads(f.metadata()["geounet"])
    record["spec"].update(width=512, depth=6)
    record["tile_size"], record["halo"] = 1024, 0
    huge = tmp_path / "huge.safetensors"
    save_file(load_file(str(src)), str(huge), metadata={"geounet": json.dumps(record)})
    with pytest.raises(CheckpointError, match=r"width 512, depth 6"):
        load_checkpoint(huge)
    assert given_memory == []  # refused on shapes alone
    load_checkpoint(src)
    assert given_memory == [4]


@pytest.mark.parametrize("where", ["header", "metadata"])
def test_a_checkpoint_nested_200000_levels_deep_is_refused(tmp_path: Path, where: str) -> None:
    from geounet.checkpoint import load_checkpoint

    deep = "[" * 200_000 + "]" * 200_000
    if where == "header":
        header = ('{"x": ' + deep + "}").encode()
    else:
        header = json.dumps({"__metadata__": {"geounet": deep}}).encode()
    path = tmp_path / f"deep-{where}.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint(path)
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 2 and "nested too deeply" in res.output and "Traceback" not in res.output
