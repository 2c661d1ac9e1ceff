"""``geounet demo``: synthetic scenes -> batch workflow with shipped weights -> evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from geounet.batch.demo import run_demo


@click.command("demo")
@click.option(
    "-o",
    "--out",
    default="demo-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the demo's scenes, outputs and evaluation.",
)
@click.option(
    "--size",
    default=1024,
    show_default=True,
    type=click.IntRange(256, 8192),
    help="Side of each synthetic scene, pixels (0.5 m each).",
)
@click.option("--workers", type=int, help="Embedded cluster: worker processes. Default: sized to the machine.")
@click.option("--progress/--no-progress", default=None, help="Progress bars. Default: on when stderr is a terminal.")
def command(out: str, size: int, workers: int | None, progress: bool | None) -> None:
    """Generate synthetic scenes, segment them with the shipped weights on the embedded Dask
    cluster, evaluate against the exact ground truth, and print metrics and output paths."""
    show = sys.stderr.isatty() if progress is None else progress
    run_demo(Path(out), size=size, workers=workers, progress=show)
