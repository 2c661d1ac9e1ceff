"""Entry point of the ``geounet`` command.

Each subcommand lives in its own module and only parses options and calls the library.
Exit codes: see :mod:`geounet.errors` (the one table).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from geounet.batch.workflow import GDAL_LOGGERS
from geounet.errors import EXIT_INTERRUPTED, GeounetError, exit_code_for

# Subcommand modules, each exposing ``command`` (a click.Command). A subcommand is listed
# here only once it works.
SUBCOMMANDS: tuple[str, ...] = ("info", "synth", "train", "predict", "run", "evaluate", "demo")


def setup_logging(verbosity: int) -> None:
    """Console logging at the chosen verbosity. What GDAL says (logged by rasterio and pyogrio)
    reaches the console from ``-v`` on only, and never during ``geounet run``, which writes it to
    OUT/geounet.log: geounet's own message on the same failure says it in words one can act on."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("geounet").setLevel(level)
    for name in GDAL_LOGGERS:
        logging.getLogger(name).setLevel(level if verbosity > 0 else logging.ERROR)


class GeounetGroup(click.Group):
    """Turns geounet errors into one clear line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> object:
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
