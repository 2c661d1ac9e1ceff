"""What the user reads when the output folder cannot take the outputs, and what stays off the
console: one message per failure, naming the path, the cause and the fix; no ``ERROR 1:`` line
GDAL printed itself, no Dask report of a task geounet already reported or cancelled."""

from __future__ import annotations

import errno
import functools
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from geounet import atomic
from geounet.atomic import atomic_output
from geounet.batch.run import no_room_error
from geounet.errors import OutputError
from geounet.export.layout import check_writable
from tests.conftest import REPO, make_checkpoint
from tests.reliability._faults import bright_rect_scene, multiblock_scene, no_partials, run_cli
from tests.workflow._helpers import finish, kill_session, wait_for

FAST = ["--tile-size", "64", "--halo", "8", "--tiles-per-block", "1", "--workers", "1", "--no-progress"]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("unet") / "unet.safetensors", width=2, depth=2)


def console_noise(stderr: str) -> list[str]:
    """Lines of what GDAL or Dask printed beside geounet's own messages."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(("ERROR 1:", "Warning 1:"))
        or "CancelledError" in line
        or "Compute Failed" in line
        or "distributed.worker" in line
    ]


# --------------------------------------------------------------------------- the write probe
def _is_probe(fd_or_path: int | str | os.PathLike[str]) -> bool:
    name = os.readlink(f"/proc/self/fd/{fd_or_path}") if isinstance(fd_or_path, int) else os.fspath(fd_or_path)
    return "write-probe" in name


def test_write_probe_is_removed_when_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk takes the probe's name but not its bytes: the write fails, the file stays."""
    real_write = os.write

    def full_write(fd: int, data: bytes) -> int:
        if _is_probe(fd):
            raise ENOSPC
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_write)
    out = tmp_path / "out"
    with pytest.raises(OutputError) as err:
        check_writable(out)
    monkeypatch.undo()
    assert str(err.value) == (
        f"output folder {out} is not writable: no space left on device; free disk space or choose another --out"
    )
    assert no_partials(out) == []


def test_write_probe_is_removed_when_its_creation_fails_half_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def open_then_fail(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        fd = real_open(path, flags, mode, **kw)  # type: ignore[arg-type]
        if _is_probe(path):
            os.close(fd)
            raise ENOSPC
        return fd

    monkeypatch.setattr(os, "open", open_then_fail)
    with pytest.raises(OutputError, match="no space left on device"):
        check_writable(tmp_path)
    monkeypatch.undo()
    assert no_partials(tmp_path) == []


def _files_up_to(limit: int) -> None:
    """In the child: writing past ``limit`` bytes fails with EFBIG (as tests/workflow/test_failures.py)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_output_folder_that_takes_no_byte_leaves_no_probe(tmp_path: Path, unet: Path) -> None:
    """Through the command line: a folder that takes file names but no bytes (the lock file is
    created, empty) fails before anything starts, with exit 4, and leaves no ``.partial-*``."""
    out = tmp_path / "out"
    scene = bright_rect_scene(tmp_path / "a.tif")
    proc = run_cli(
        ["predict", str(scene), "-m", str(unet), "-o", str(out), *FAST], preexec_fn=functools.partial(_files_up_to, 0)
    )
    assert proc.returncode == 4, proc.stderr
    assert (
        f"error: output folder {out} is not writable: file size limit exceeded; raise the file-size limit "
        "(ulimit -f) or free disk space" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and console_noise(proc.stderr) == []
    assert sorted(p.name for p in out.iterdir()) == [".geounet.lock"]


# --------------------------------------------------------------------------- a full disk, in any writer's words
def _gdal_commit_failure(final: Path, tmp: Path) -> None:
    """What the GeoPackage writer raises when SQLite finds the disk full: GDAL's bare words."""
    tmp.write_bytes(b"SQLite format 3\0")
    try:
        raise RuntimeError("Failed to commit transaction")  # pyogrio's DataSourceError is a RuntimeError
    except RuntimeError as exc:
        raise OutputError(f"cannot write {final}: {exc}") from exc


def test_gdal_failure_on_a_full_disk_reads_as_no_space_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "polygons.gpkg"
    seen: list[bool] = []

    def no_space(folder: str | os.PathLike[str]) -> int:
        seen.append(atomic.partial_name(final).exists())  # measured before the leftovers go
        return 0

    monkeypatch.setattr(atomic, "free_bytes", no_space)
    with pytest.raises(OutputError) as err, atomic_output(final) as tmp:
        _gdal_commit_failure(final, tmp)
    assert str(err.value) == (
        f"cannot write {final}: no space left on device; free disk space or choose another output folder "
        "(the previous file, if any, is unchanged)"
    )
    assert err.value.path == str(final)
    assert seen == [True]
    assert no_partials(tmp_path) == []


def test_gdal_failure_with_room_left_keeps_its_own_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No guessing: with space left, GDAL's failure is not called a full disk."""
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10 * 2**30)
    final = tmp_path / "polygons.gpkg"
    words = r"^cannot write .*polygons\.gpkg: Failed to commit transaction$"
    with pytest.raises(OutputError, match=words), atomic_output(final) as tmp:
        _gdal_commit_failure(final, tmp)
    assert no_partials(tmp_path) == []


@pytest.mark.parametrize(
    "cause",
    [ENOSPC, RuntimeError("sqlite3_exec(COMMIT) failed: database or disk is full")],
    ids=["errno-28", "sqlite-words"],
)
def test_a_writers_own_error_on_a_full_disk_reads_as_no_space_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cause: Exception
) -> None:
    """The GeoJSON writer's ``cannot write X: [Errno 28] No space left on device`` and SQLite's
    words read the same as any other full disk, whatever the free space says now."""
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10 * 2**30)
    final = tmp_path / "buildings.geojson"
    with pytest.raises(OutputError) as err, atomic_output(final):
        try:
            raise cause
        except Exception as exc:
            raise OutputError(f"cannot write {final}: {exc}") from exc
    assert str(err.value).startswith(f"cannot write {final}: no space left on device; free disk space")


def test_run_stopped_by_a_full_disk_names_the_fix_with_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the end of ``run`` and ``predict``: the same words whichever writer met the full disk,
    the staged rasters' included (their temporary files are gone by then)."""
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 150_000)
    stage = OutputError(
        f"cannot write {tmp_path}/m1/.partial-1-linear-stage.tif: the staged road mask reads back incomplete "
        "(Read failed. See previous exception for details.); check the free space of m1"
    )
    err = no_room_error(stage, tmp_path)
    assert err is not None and str(err) == (
        f"cannot write {tmp_path}: no space left on device; free disk space or choose another --out "
        "(finished scenes are kept: run again to continue)"
    )
    written = OutputError("cannot write X: no space left on device; ...")
    written.path = str(tmp_path / "m1" / "polygons.gpkg")
    written.__cause__ = ENOSPC
    assert str(no_room_error(written, tmp_path)).startswith(f"cannot write {tmp_path / 'm1' / 'polygons.gpkg'}: ")
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10 * 2**30)
    assert no_room_error(stage, tmp_path) is None  # room left: the disk is not what failed
    assert no_room_error(OutputError("cannot write X: Read-only file system"), tmp_path) is None


# --------------------------------------------------------------------------- --out names a file
def test_out_that_is_a_file_says_so(tmp_path: Path, unet: Path) -> None:
    scene = bright_rect_scene(tmp_path / "a.tif")
    file = tmp_path / "results"
    file.write_text("not a folder")
    proc = run_cli(["predict", str(scene), "-m", str(unet), "-o", str(file), *FAST])
    assert proc.returncode == 2, proc.stderr  # a usage error, found by the option itself
    assert f"{file} is a file, not a folder; choose a folder for --out (new or existing)" in proc.stderr
    workflow = tmp_path / "workflow.yaml"
    workflow.write_text(f"scenes: {scene}\nmodel: {unet}\nout: out\n")
    proc = run_cli(["run", str(workflow), "--out", str(file), "--no-progress"])
    assert proc.returncode == 4, proc.stderr  # OutputError, as every output folder that takes no files
    assert f"error: output folder {file} is a file, not a folder; choose a folder for --out (new or existing)" in (
        proc.stderr
    )
    proc = run_cli(["predict", str(scene), "-m", str(unet), "-o", str(file / "sub"), *FAST])
    assert proc.returncode == 4, proc.stderr
    assert (
        f"error: output folder {file / 'sub'} is not writable: {file} is a file, not a folder; choose another --out"
        in proc.stderr
    )
    assert file.read_text() == "not a folder"
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- what stays off the console
# A scene failing in a worker (truncated GeoTIFF) is checked in test_cli_faults.py
# (test_batch_with_bad_scenes_exits_1) and `run`'s Ctrl-C / SIGTERM in
# tests/workflow/test_resume_signals_lock.py, with console_noise below.
@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_leaves_no_dask_cancelled_error_on_the_console(tmp_path: Path, unet: Path) -> None:
    """Ctrl-C reaches the workers too; the tasks cancelled as the cluster closes are no news."""
    scenes = [multiblock_scene(tmp_path / f"s{i}.tif", size=512) for i in (1, 2)]
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geounet.cli", "predict", *map(str, scenes), "-m", str(unet), "-o", str(out), *FAST],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(out.glob("s1/.partial-*stage*")), 180, "the first scene to start", 0.005, proc)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
        rc, stdout, stderr = finish(proc, timeout=90)
    finally:
        kill_session(proc)
    assert rc == 130, stderr
    assert "interrupted: unfinished scenes were removed" in stderr
    assert console_noise(stderr) == [], stderr
    assert "Traceback" not in stderr
