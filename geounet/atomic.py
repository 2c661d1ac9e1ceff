"""The one way geounet writes a file: a temporary name beside it, then ``os.replace``.

Every writer in the package (scene outputs, scene.json and run.json, checkpoints and their
training state, ``log.csv``, evaluation JSON, synthetic scenes) writes to
``.partial-<pid>-<name>`` in the destination folder and renames it onto the final name
only when the file is complete, so an interrupted run never leaves a complete-looking
file, and :func:`remove_partials` recognizes every leftover by one prefix. The temporary
name keeps the final extension, so GDAL picks the right driver for it.

Errors of the file system (disk full, read-only folder, permissions, a file-size limit)
become :class:`~geounet.errors.OutputError`, whose message names the file, the cause and
the fix; the previous file of that name, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geounet.errors import OutputError

PARTIAL_PREFIX = ".partial-"


def partial_name(final: str | os.PathLike[str]) -> Path:
    """Temporary sibling of ``final`` (same folder, same extension)."""
    final = Path(final)
    return final.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{final.name}")


def is_partial(path: str | os.PathLike[str]) -> bool:
    """True for a name :func:`partial_name` makes (a leftover when no writer is running)."""
    return Path(path).name.startswith(PARTIAL_PREFIX)


def remove_partials(folder: str | os.PathLike[str], *, recursive: bool = False) -> int:
    """Delete leftovers of interrupted writes in ``folder`` (and below it when
    ``recursive``); returns how many were removed. Call it only where no other process
    is writing (the output folder's lock is held, or the folder is this process's own)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(f"{PARTIAL_PREFIX}*") if recursive else folder.glob(f"{PARTIAL_PREFIX}*")
    n = 0
    for p in found:
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def describe_os_error(path: str | os.PathLike[str], exc: OSError) -> str:
    """``cannot write PATH: CAUSE; FIX`` for a file-system error."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause, fix = "no space left on the device", "free disk space or choose another output folder"
    elif code == errno.EFBIG:
        cause, fix = "file size limit exceeded", "raise the file-size limit (ulimit -f) or free disk space"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause, fix = exc.strerror or "permission denied", "choose a folder you can write to"
    elif code == errno.ENOENT:
        cause, fix = exc.strerror or "no such folder", f"create the folder {Path(path).parent} first"
    elif code == errno.EISDIR:
        cause, fix = "it is a directory", "give a file name"
    else:
        cause, fix = exc.strerror or str(exc), "check the output folder"
    return f"cannot write {path}: {cause}; {fix} (the previous file, if any, is unchanged)"


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; not possible on every platform or file system."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` to; on success move it onto ``final``, on
    any failure remove it (and an SQLite journal GDAL may have left beside it).

    ``durable`` also fsyncs the folder after the rename (checkpoints: a crash right after
    saving must not lose the file); the writer fsyncs the file's own data.

    Raises:
        OutputError: the folder cannot take the file; names the file, the cause and the fix.
    """
    final = Path(final)
    tmp = partial_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as exc:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal"), tmp.with_name(tmp.name + "-wal")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(describe_os_error(final, exc)) from exc
        raise
    if durable:
        _fsync_folder(final.parent)


def write_bytes(final: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    """``data`` into ``final``, atomically and fsynced. Returns ``final`` as a Path."""
    final = Path(final)
    with atomic_output(final, durable=durable) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return final


def write_text(final: str | os.PathLike[str], text: str, *, durable: bool = False) -> Path:
    """UTF-8 ``text`` into ``final``, atomically."""
    return write_bytes(final, text.encode("utf-8"), durable=durable)


def write_json(obj: Any, final: str | os.PathLike[str], *, strict: bool = False) -> Path:
    """Pretty JSON, atomically. ``strict`` refuses NaN/inf (give them as None) and unknown
    types; otherwise they are written as ``NaN`` and ``str(value)``."""
    text = json.dumps(obj, indent=2, allow_nan=not strict, default=None if strict else str)
    return write_text(final, text + "\n")


def open_no_follow(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a file a run keeps open in its output folder (its lock, its log),
    refusing a symbolic link or anything but a regular file planted there: a link to another
    file would have that file truncated or appended to. Returns the descriptor.

    Raises:
        OutputError: the path is a symbolic link or not a regular file (remove it).
        OSError: any other reason it cannot be opened (the caller says what it means).
    """
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(
                f"{path} is a symbolic link; geounet never writes through links in its output "
                "folder: remove it and run again"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path} is not a regular file; remove it and run again")
    return fd
