"""Entry point of the ``geounet`` command.

Each subcommand lives in its own module and only parses options and calls the library.
Exit codes: 0 success, 1 some scenes failed, 2 configuration or usage error,
3 output folder locked by another run, 4 environment error (disk full, read-only output),
5 every scene failed, 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from geounet.errors import CheckpointError, ConfigError, GeounetError, LockHeldError, OutputError

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_ENVIRONMENT = 4
EXIT_ALL_FAILED = 5
EXIT_INTERRUPTED = 130

# Subcommand modules, each exposing ``command`` (a click.Command). A subcommand is listed
# here only once it works.
SUBCOMMANDS: tuple[str, ...] = ("info", "synth", "train", "predict", "run", "evaluate", "demo")


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit code."""
    if isinstance(exc, (ConfigError, CheckpointError)):
        return EXIT_CONFIG
    if isinstance(exc, LockHeldError):
        return EXIT_LOCKED
    if isinstance(exc, OutputError):
        return EXIT_ENVIRONMENT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED


def setup_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("geounet").setLevel(level)


class GeounetGroup(click.Group):
    """Turns geounet errors into one clear line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except GeounetError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_code_for(exc))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=GeounetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on the log.")
@click.version_option(package_name="geounet")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """geounet: segment GeoTIFF scenes into building and road polygons with a UNet."""
    setup_logging(-1 if quiet else verbose)
    ctx.ensure_object(dict)


for _name in SUBCOMMANDS:
    cli.add_command(importlib.import_module(f"geounet.cli.{_name}").command)
