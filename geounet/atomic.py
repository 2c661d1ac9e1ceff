"""The one way geounet writes a file: a temporary name beside it, then ``os.replace``.

Every writer in the package (scene outputs, scene.json and run.json, checkpoints and their
training state, ``log.csv``, evaluation JSON, synthetic scenes) writes to
``.partial-<pid>-<name>`` in the destination folder and renames it onto the final name
only when the file is complete, so an interrupted run never leaves a complete-looking
file, and :func:`remove_partials` recognizes every leftover by one prefix. The temporary
name keeps the final extension, so GDAL picks the right driver for it.

Errors of the file system (disk full, read-only folder, permissions, a file-size limit)
become :class:`~geounet.errors.OutputError`, whose message names the file, the cause and
the fix; the previous file of that name, if any, is left as it was. A full disk reads the
same whichever library found it (:func:`no_room`): Python's ``[Errno 28]``, SQLite's
``database or disk is full`` and GDAL's bare ``Failed to commit transaction`` all become
``no space left on device``.
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


# errno of a file system that takes no more data: full, over the user's quota, past the file-size limit
NO_ROOM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How a full disk reads in the messages GDAL, SQLite and libtiff raise with (they carry no errno).
FULL_DISK_WORDS = {
    "no space left on device": errno.ENOSPC,
    "database or disk is full": errno.ENOSPC,  # SQLite (GeoPackage)
    "disk quota exceeded": errno.EDQUOT,
}
# GDAL often reports a write that found the disk full only as failed ("Failed to commit transaction",
# "Write failed"): such a failure is a full disk when less than this is free where the file was written.
LOW_SPACE_BYTES = 64 * 2**20


def os_error_cause(exc: OSError, elsewhere: str = "another output folder") -> tuple[str, str]:
    """``(cause, fix)`` of a file-system error; ``elsewhere`` is where the fix sends the outputs
    instead (``another --out`` where the command has that option)."""
    code = exc.errno
    if code == errno.ENOSPC:
        return "no space left on device", f"free disk space or choose {elsewhere}"
    if code == errno.EDQUOT:
        return "disk quota exceeded", f"free space within your quota or choose {elsewhere}"
    if code == errno.EFBIG:
        return "file size limit exceeded", "raise the file-size limit (ulimit -f) or free disk space"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return exc.strerror or "permission denied", "choose a folder you can write to"
    if code == errno.EISDIR:
        return "it is a directory", "give a file name"
    return exc.strerror or str(exc), "check the output folder"


def describe_os_error(path: str | os.PathLike[str], exc: OSError) -> str:
    """``cannot write PATH: CAUSE; FIX`` for a file-system error."""
    if exc.errno == errno.ENOENT:
        cause, fix = exc.strerror or "no such folder", f"create the folder {Path(path).parent} first"
    else:
        cause, fix = os_error_cause(exc)
    return f"cannot write {path}: {cause}; {fix} (the previous file, if any, is unchanged)"


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Bytes this process may still write on the file system of ``folder`` (root may use the
    blocks reserved for it); None where that cannot be known."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # gone, or no statvfs on this platform
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def no_room(exc: BaseException, folder: str | os.PathLike[str]) -> OSError | None:
    """The file system's ``OSError`` when ``exc``, a failed write into ``folder``, failed for lack of
    room (full disk, quota, file-size limit), else None.

    Found in ``exc`` or the exceptions it came from: an errno of :data:`NO_ROOM_ERRNOS`, the words
    of :data:`FULL_DISK_WORDS`; or, for an ``OSError`` that says nothing of the cause (GDAL's
    ``Failed to commit transaction``), less than :data:`LOW_SPACE_BYTES` free in ``folder`` now.
    Call it before removing what the write left: that is part of what filled the disk.
    """
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno in NO_ROOM_ERRNOS:
            return e
    text = " ".join(str(e) for e in chain).lower()
    for words, code in FULL_DISK_WORDS.items():
        if words in text:
            return OSError(code, os.strerror(code))
    if isinstance(exc, OSError) and not any(isinstance(e, OSError) and e.errno is not None for e in chain):
        free = free_bytes(folder)
        if free is not None and free < LOW_SPACE_BYTES:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


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
        full = no_room(exc, final.parent) if isinstance(exc, Exception) else None  # before the leftovers go
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal"), tmp.with_name(tmp.name + "-wal")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        cause = full
        if cause is None and isinstance(exc, OSError) and not isinstance(exc, OutputError):
            cause = exc
        if cause is not None:
            err = OutputError(describe_os_error(final, cause))
            err.path = str(final)
            raise err from exc
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
