"""Bad scenes, a full disk and an output folder that takes no files -- through the real
``geounet run``: exit codes 1, 5 and 4, what run.json says, and what is left on disk."""

from __future__ import annotations

import contextlib
import functools
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import smooth_image, write_tif
from tests.workflow._helpers import (
    STEMS,
    Job,
    Reference,
    assert_clean,
    assert_same_scene,
    digest,
    partials,
    read_json,
    run,
)


def _bad_scenes(folder: Path) -> dict[str, Path]:
    """Scenes that fail for different reasons: not a TIFF, missing, truncated pixel data."""
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / "html.tif"
    html.write_text("<html>not a tiff</html>")
    trunc = write_tif(folder / "trunc.tif", smooth_image((3, 300, 300), seed=9), blockxsize=64, blockysize=64)
    with open(trunc, "r+b") as f:  # keep the header, cut the tiles
        f.truncate(trunc.stat().st_size // 3)
    return {"html": html, "trunc": trunc, "missing": folder / "missing.tif"}


def test_some_scenes_fail_exit_1_the_others_complete(job: Job, reference: Reference, tmp_path: Path) -> None:
    bad = _bad_scenes(tmp_path / "bad")
    listing = tmp_path / "bad" / "scenes.txt"  # relative lines are taken from the list's folder
    listing.write_text(f"# a good scene and three bad ones\n{job.scenes / 'a.tif'}\nhtml.tif\ntrunc.tif\nmissing.tif\n")
    out = tmp_path / "out"
    rc, stdout, stderr = run(job, "--out", str(out), "--scenes", str(listing), "--no-progress")
    assert rc == 1, stderr[-3000:]
    rec = read_json(out / "run.json")
    assert rec["counts"] == {"success": 1, "skipped": 0, "failed": 3}
    by = {s["stem"]: s for s in rec["scenes"]}
    assert by["a"]["status"] == "success"
    assert "html.tif" in by["html"]["error"] and "GeoTIFF" in by["html"]["error"]
    assert "missing.tif" in by["missing"]["error"] and "does not exist" in by["missing"]["error"]
    assert str(bad["trunc"]) in by["trunc"]["error"]
    for name in ("html", "trunc", "missing"):
        assert f"FAILED scene {bad[name]}" in stderr
        assert not (out / name).exists()
    assert_same_scene(out / "a", reference.out / "a")
    assert_clean(out)


def test_every_scene_fails_exit_5(job: Job, tmp_path: Path) -> None:
    bad = _bad_scenes(tmp_path / "bad")
    out = tmp_path / "out"
    rc, stdout, stderr = run(job, "--out", str(out), "--scenes", str(tmp_path / "bad" / "*.tif"), "--no-progress")
    assert rc == 5, stderr[-3000:]
    rec = read_json(out / "run.json")
    assert rec["counts"]["failed"] == 2 and rec["counts"]["success"] == 0  # html + trunc (glob: existing files)
    assert {s["scene"] for s in rec["scenes"]} == {str(bad["html"]), str(bad["trunc"])}
    assert all(s["error"] for s in rec["scenes"])
    assert_clean(out)


# --------------------------------------------------------------------------- disk full
def _files_up_to(limit: int) -> None:
    """In the child: writing a file past ``limit`` bytes fails with EFBIG (SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


# Bytes per file. Both let run.json, the log and the worker's copy of the model (132 kB)
# be written; 400 kB stops the first vector writer of the new scene, 150 kB stops its
# staging probability raster when GDAL flushes it at close.
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "limit",
    [400_000, pytest.param(150_000, marks=pytest.mark.soak)],  # the raster flush: `make test-soak`
    ids=["vector-writer", "raster-flush"],
)
def test_disk_full_stops_with_exit_4_and_earlier_outputs_stay_intact(
    job: Job, reference: Reference, tmp_path: Path, limit: int
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference.out, out)  # earlier, complete outputs
    before = {k: v for k, v in digest(out).items() if k.split("/")[0] in STEMS}
    listing = tmp_path / "scenes.txt"
    listing.write_text(
        "".join(f"{job.scenes / f}\n" for f in ("a.tif", "sub1/b.tif", "sub2/b.tif")) + f"{job.more / 'm1.tif'}\n"
    )
    rc, stdout, stderr = run(
        job,
        "--out",
        str(out),
        "--scenes",
        str(listing),
        "--no-progress",
        preexec_fn=functools.partial(_files_up_to, limit),
    )
    assert rc == 4, stderr[-3000:]
    assert f"error: cannot write {out / 'm1'}" in stderr, stderr[-3000:]
    after = {k: v for k, v in digest(out).items() if k.split("/")[0] in STEMS}
    assert after == before  # earlier outputs untouched
    assert not partials(out)
    assert not (out / "m1" / "scene.json").exists()
    assert not (out / "m1").exists() or not any((out / "m1").iterdir())
    rec = read_json(out / "run.json")
    assert rec["status"] == "stopped" and "OutputError" in rec["error"]
    assert_clean(out)


@contextlib.contextmanager
def _tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mnt`` for the block's duration. Skips the test where mounting is not allowed."""
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True, timeout=30
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); see the file-size-limit and ENOTDIR tests")
    try:
        yield mnt
    finally:
        for args in (["umount", str(mnt)], ["umount", "-l", str(mnt)]):
            if subprocess.run(args, capture_output=True, timeout=30).returncode == 0:
                break


# A real full disk (ENOSPC) on a small tmpfs. 300 kB: the staged probability raster fails at its
# flush (GDAL prints ERROR 1: lines) and the GeoJSON writer with [Errno 28]; 1 MB with only the
# GeoPackage: SQLite finds the disk full and GDAL raises "Failed to commit transaction"; 600 kB
# with the probability raster: GDAL logs the COG's short write, which published an unreadable
# probability.tif with exit 0 until the COG was read back before publishing.
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("size", "formats"),
    [
        pytest.param("300k", [], marks=pytest.mark.soak),  # `make test-soak`: the messages are also
        pytest.param("1m", ["--formats", "gpkg"], marks=pytest.mark.soak),  # tested with EFBIG above
        ("600k", ["--formats", "probability,quicklook"]),
    ],
    ids=["all", "gpkg", "cog"],
)
def test_full_disk_says_no_space_left_in_geounets_words_only(
    job: Job, tmp_path: Path, size: str, formats: list[str]
) -> None:
    with _tmpfs(tmp_path / "disk", size) as disk:
        out = disk / "out"
        rc, stdout, stderr = run(
            job, "--out", str(out), "--scenes", str(job.more / "m1.tif"), "--no-progress", *formats, timeout=180
        )
        assert rc == 4, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {out}"), stderr[-3000:]
        assert errors[0].endswith(
            ": no space left on device; free disk space or choose another --out "
            "(finished scenes are kept: run again to continue)"
        )
        noise = [line for line in stderr.splitlines() if line.startswith(("ERROR 1:", "Warning 1:"))]
        assert noise == [], stderr[-3000:]  # GDAL's own lines go to the log (here: the full disk)
        assert "Failed to commit transaction" not in stderr and "[Errno" not in stderr
        assert "Traceback" not in stderr and "CancelledError" not in stderr
        assert not partials(out)
        assert not (out / "m1").exists() or not any((out / "m1").iterdir())
        rec = read_json(out / "run.json")
        assert rec["status"] == "stopped" and "no space left on device" in rec["error"]


# --------------------------------------------------------------------------- read-only
@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding a copy of earlier outputs, remounted read-only (root can write
    through chmod 555, not through a read-only mount). Skipped where mounting is not allowed."""
    with _tmpfs(tmp_path / "ro", "32m") as mnt:
        yield mnt


@pytest.mark.timeout(120)
def test_read_only_output_folder_fails_before_computing(job: Job, reference: Reference, read_only_mount: Path) -> None:
    out = read_only_mount / "out"
    shutil.copytree(reference.out / "a", out / "a")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True, timeout=30)
    before = digest(out)
    t = time.monotonic()
    rc, stdout, stderr = run(job, "--out", str(out), "--force", "--no-progress", timeout=120)
    assert rc == 4, stderr[-3000:]
    assert f"output folder {out} is not writable: Read-only file system" in stderr
    assert "Dask" not in stderr  # nothing was started, nothing computed
    assert time.monotonic() - t < 60
    assert digest(out) == before


def test_output_folder_under_a_file_fails_before_computing(job: Job, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    rc, stdout, stderr = run(job, "--out", str(blocker / "out"), "--no-progress", timeout=120)
    assert rc == 4, stderr[-3000:]
    assert f"output folder {blocker / 'out'} is not writable" in stderr
    assert "Dask" not in stderr
    assert blocker.read_text() == "x"


def test_truncated_scene_is_readable_up_to_its_header() -> None:
    """The truncated scene above fails in the workers (pixel reads), not at validation."""
    import tempfile

    from geounet.scene.source import open_scene

    with tempfile.TemporaryDirectory() as d:
        bad = _bad_scenes(Path(d))
        info = open_scene(bad["trunc"], in_channels=3)
        assert info.width == 300 and np.dtype(info.dtype) == np.uint8
