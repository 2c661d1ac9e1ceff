"""Configuration files and scene lists that are broken or hostile: refused with exit code 2,
a message naming the file and the cause, within a second and in a few hundred characters.

In-process for the bounds (time, message size), then through the real command line for the
exit codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geounet.batch.workflow import discover_scenes, load_workflow
from geounet.config import MAX_ALIASED_VALUES, MAX_DEPTH, load_config
from geounet.errors import ConfigError, brief
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint
from tests.reliability._faults import bright_rect_scene, run_cli

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)  # the classic billion laughs: 9 levels of 9 aliases, 9**9 "lol"s when expanded

# name -> (file content, words of the message)
BAD_CONFIGS: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "latin-1": (
        "tile_size: 256\nsimplify_m: 0.5  # Genauigkeit in Metern für Gebäude\n".encode("latin-1"),
        (
            "is not UTF-8 text",
            "byte 0xfc at line 2, column 43",
            "save it as UTF-8",
        ),
    ),
    "utf-16": ("tile_size: 256\n".encode("utf-16"), ("is not UTF-8 text", "line 1, column 1")),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ("is not UTF-8 text",)),
    "nested-100000-flow": (b"a: " + b"[" * 100_000 + b"]" * 100_000, (f"nested more than {MAX_DEPTH} levels",)),
    "nested-100000-flow-mappings": (b"a: " + b"{a: " * 100_000 + b"}" * 100_000, ("nested more than",)),
    "nested-100000-block": (b"- " * 100_000 + b"x\n", ("nested more than",)),
    "nested-block-indentation": (
        "".join(" " * i + "k:\n" for i in range(200)).encode(),
        ("nested more than", "line 32"),
    ),
    "billion-laughs": (LAUGHS.encode(), (f"repeat more than {MAX_ALIASED_VALUES:,} values", "alias bomb")),
    "alias-into-itself": (b"inference: &x {thresholds: *x}\n", ("alias refers to the collection it is in",)),
    "integer-of-10000-digits": (b"tile_size: " + b"9" * 10_000 + b"\n", ("holds a value that cannot be read",)),
    "impossible-date": (b"note: 2026-13-45\n", ("holds a value that cannot be read", "month must be in 1..12")),
    "nul-byte": (b"tile_size: 256\x00\n", ("is not valid YAML", "#x0000")),
    "2-MiB": (b"tile_size: 256\n" + b"# padding\n" * 200_000, ("is larger than 1024 KiB",)),
    "a-list-not-a-mapping": (b"- 1\n- 2\n", ("must hold a mapping of keys, got list",)),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_file_is_refused_fast_with_a_short_message(tmp_path: Path, case: str) -> None:
    content, words = BAD_CONFIGS[case]
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    t = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(InferenceSettings, path, {})
    took = time.perf_counter() - t
    msg = str(err.value)
    assert took < 1.0, f"{case}: refused after {took:.2f} s"
    assert len(msg) < 2000, f"{case}: {len(msg)} characters"
    assert msg.startswith(f"config file {path} "), msg
    for w in words:
        assert w in msg, msg


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("simplify_m: &m 0.5\nmin_area_m2: *m\nthresholds: &t {building: 0.4}\n")
    assert load_config(InferenceSettings, path, {}).min_area_m2 == 0.5
    path.write_text("\ufefftile_size: 256\n", encoding="utf-8")  # a byte order mark is fine
    assert load_config(InferenceSettings, path, {}).tile_size == 256


def test_values_echoed_in_messages_are_cut(tmp_path: Path) -> None:
    """A huge value, a huge key or thousands of wrong keys give a message of a few lines."""
    path = tmp_path / "config.yaml"
    path.write_text(f"tile_size: {'x' * 100_000}\n{'k' * 1000}: 1\n" + "".join(f"bad{i}: {i}\n" for i in range(5000)))
    with pytest.raises(ConfigError) as err:
        load_config(InferenceSettings, path, {})
    msg = str(err.value)
    assert len(msg) < 2000 and "characters)" in msg and "more problem(s)" in msg, msg
    cut = brief("a" + "y" * 10_000 + "z")
    assert cut.startswith("ay") and cut.endswith("yz (10,002 characters)") and "…" in cut and len(cut) < 300
    assert len(brief([[[[["deep"]]]]] * 10_000, as_repr=True)) < 300


# -- a scene list that is not a list -------------------------------------------------------------
def _png(p: Path) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    return p


def _jp2_like(p: Path) -> Path:
    p.write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(range(256)))  # the JPEG 2000 signature box
    return p


def _zeros(p: Path) -> Path:
    p.write_bytes(bytes(64))  # NUL bytes only: valid UTF-8, still no text
    return p


NOT_LISTS: dict[str, Callable[[Path], Path]] = {
    "png": lambda d: _png(d / "photo.png"),
    "jp2": lambda d: _jp2_like(d / "scene.jp2"),
    "binary-zeros": lambda d: _zeros(d / "blob.bin"),
}


@pytest.mark.parametrize("case", list(NOT_LISTS))
def test_a_binary_file_given_as_scenes_is_no_list_file(tmp_path: Path, case: str) -> None:
    path = NOT_LISTS[case](tmp_path)
    with pytest.raises(ConfigError) as err:
        discover_scenes(str(path))
    msg = str(err.value)
    assert msg.startswith(f"scene list file {path} is not "), msg
    assert "a list file must be UTF-8 text with one scene path per line" in msg and "pass the folder" in msg
    assert len(msg) < 2000


def test_a_text_list_file_still_works(tmp_path: Path) -> None:
    listing = tmp_path / "scenes.txt"
    listing.write_text("\ufeff# tonight\nb.tif\n", encoding="utf-8")
    assert discover_scenes(str(listing)) == [str(tmp_path / "b.tif")]


# -- through the command line: exit code 2, one line, no traceback --------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("m") / "m.safetensors", arch="probe", width=1, depth=4)


def _assert_refused(proc, words: tuple[str, ...], out: Path) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr
    assert len(proc.stderr) < 2000
    assert not out.exists()  # nothing was done


def test_cli_scenes_given_a_png_exits_2(tmp_path: Path, model: Path) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"scenes: scenes\nmodel: {model}\nout: out\n")
    png = _png(tmp_path / "photo.png")
    out = tmp_path / "out"
    proc = run_cli(["run", str(workflow), "--scenes", str(png), "--out", str(out)])
    _assert_refused(proc, (f"scene list file {png} is not UTF-8 text", "one scene path per line"), out)


@pytest.mark.parametrize("case", ["billion-laughs", "nested-100000-flow", "latin-1"])
def test_cli_bad_config_exits_2(tmp_path: Path, model: Path, case: str) -> None:
    content, words = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    out = tmp_path / "out"
    scene = bright_rect_scene(tmp_path / "s.tif")
    if case == "billion-laughs":  # as a workflow file
        proc = run_cli(["run", str(config), "--out", str(out)])
    else:  # as predict's inference settings
        proc = run_cli(["predict", str(scene), "-m", str(model), "-o", str(out), "-c", str(config)])
    _assert_refused(proc, (f"config file {config} ", *words), out)


def test_workflow_loader_is_the_bounded_one(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_bytes(LAUGHS.encode())
    with pytest.raises(ConfigError, match="alias bomb"):
        load_workflow(path, {})
