"""One exception hierarchy for geounet.

Every error a user can cause derives from :class:`GeounetError`. Messages state the
file or scene, the offending value and what would fix it. I/O-flavoured errors are
also :class:`OSError` so callers can catch them naturally.

The command line maps the classes to exit codes (see ``geounet.cli.main``):

* :class:`ConfigError`, :class:`CheckpointError` -> 2 (configuration or usage error)
* :class:`LockHeldError` -> 3 (another run holds the output folder)
* :class:`OutputError` -> 4 (the environment cannot take the outputs: disk full, read-only)
* :class:`SceneError` -> recorded per scene; the run exits 1 when some scenes failed.
"""

from __future__ import annotations

import reprlib
from pathlib import Path


class GeounetError(Exception):
    """Root of every error raised on purpose by geounet."""


class ConfigError(GeounetError, ValueError):
    """A configuration file, option or argument is invalid."""


class CheckpointError(GeounetError, ValueError):
    """A model file is missing, unsafe, corrupt or does not match its metadata."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


class ModelInputError(GeounetError, ValueError):
    """A tensor handed to a model has the wrong shape or channel count."""


class SceneError(GeounetError):
    """A scene cannot be segmented: unreadable, unsafe or incompatible with the model."""

    def __init__(self, scene: str | Path, problem: str) -> None:
        self.scene = str(scene)
        self.problem = problem
        super().__init__(f"scene {self.scene}: {problem}")


class SceneReadError(SceneError, OSError):
    """Reading pixels of a scene failed (truncated file, corrupt tile, I/O error)."""


class OutputError(GeounetError, OSError):
    """Outputs cannot be written (disk full, read-only folder, permissions). ``path``: the file
    that could not be written, where the raiser names it apart from the message."""

    path: str | None = None


class LockHeldError(GeounetError):
    """Another run holds the lock on the output folder."""


# -- exit codes: the one table (the CLI, the summary and the README use these) -----------------
EXIT_OK = 0  # every scene done or skipped
EXIT_SOME_FAILED = 1  # some scenes failed (each recorded with its error); any other error
EXIT_CONFIG = 2  # configuration, usage or checkpoint error: nothing was computed
EXIT_LOCKED = 3  # another run holds the output folder's lock
EXIT_ENVIRONMENT = 4  # the environment: disk full, read-only or missing output folder
EXIT_ALL_FAILED = 5  # every scene failed
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an exception that ends a command."""
    if isinstance(exc, (ConfigError, CheckpointError)):
        return EXIT_CONFIG
    if isinstance(exc, LockHeldError):
        return EXIT_LOCKED
    if isinstance(exc, OutputError):
        return EXIT_ENVIRONMENT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED


# -- values in messages: the one helper that keeps them short ----------------------------------
BRIEF_CHARS = 200  # most characters of one value shown in a message


def brief(value: object, limit: int = BRIEF_CHARS, *, as_repr: bool = False) -> str:
    """``value`` as an error message shows it, at most about ``limit`` characters: a string as
    it is (its ``repr`` with ``as_repr``), anything else as a ``repr`` that stops a few levels
    and items deep (so a huge or deeply nested value costs little to show). A cut value keeps
    its start and its end (where a message says what to do) around ``…`` and ends in
    ``(N characters)``."""
    if isinstance(value, str):
        text = repr(value) if as_repr else value
    else:
        short = reprlib.Repr()
        short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
        short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
        text = short.repr(value)
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[: limit - tail]}…{text[-tail:]} ({len(text):,} characters)"
