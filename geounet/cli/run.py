"""``geounet run``: a batch job over directories of scenes, defined in a workflow YAML."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from geounet.batch.workflow import load_workflow, run_workflow
from geounet.cli.options import inference_options, inference_overrides
from geounet.cli.summary import exit_code_for_outcomes, print_summary
from geounet.errors import EXIT_INTERRUPTED
from geounet.scene.source import is_remote
from geounet.weights import shipped_models

DRY_RUN_LABELS = {"success": "would run", "skipped": "complete, would skip", "failed": "REFUSED"}


def _from_cwd(path: str | None) -> str | None:
    """Paths given on the command line are relative to the current folder (paths inside
    the workflow file are relative to the file's folder)."""
    if path is None or is_remote(path) or os.path.isabs(path) or path in shipped_models():
        return path
    return os.path.join(os.getcwd(), path)


@click.command("run")
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option("--scenes", help="Scene folder, glob, or text file of paths (overrides the workflow's `scenes`).")
@click.option("--out", help="Output folder (overrides the workflow's `out`).")
@click.option("--model", help="Checkpoint, or 'default' (overrides the workflow's `model`).")
@click.option("--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://127.0.0.1:8786.")
@click.option("--workers", type=int, help="Embedded cluster: number of worker processes.")
@click.option("--force", is_flag=True, help="Recompute scenes whose outputs are already complete.")
@click.option(
    "--dry-run", is_flag=True, help="List the scenes, validate them and say which would run; compute nothing."
)
@click.option("--progress/--no-progress", default=None, help="Progress bars. Default: on when stderr is a terminal.")
@inference_options
def command(
    workflow: str,
    scenes: str | None,
    out: str | None,
    model: str | None,
    scheduler: str | None,
    workers: int | None,
    force: bool,
    dry_run: bool,
    progress: bool | None,
    **kw: object,
) -> None:
    """Run WORKFLOW (see workflows/segment-scenes.yaml) over every scene it names.

    Writes OUT/<scene>/... for each scene, OUT/run.json and OUT/geounet.log. Scenes whose
    scene.json records success for the same input, model and settings are skipped.
    Relative paths in WORKFLOW are taken from its folder; relative paths given as
    options, from the current folder.

    Exit codes: 0 all scenes succeeded (or were already complete), 1 some failed,
    5 all failed, 2 configuration or usage error, 3 output folder locked by another run,
    4 environment error (output not writable, disk full), 130 interrupted.
    """
    overrides = {
        "scenes": _from_cwd(scenes),
        "out": _from_cwd(out),
        "model": _from_cwd(model),
        "cluster.scheduler": scheduler,
        "cluster.workers": workers,
        **inference_overrides(dict(kw), prefix="inference."),
    }
    wf = load_workflow(workflow, overrides)
    show = sys.stderr.isatty() if progress is None else progress
    outcomes, record = run_workflow(
        wf,
        base=Path(workflow).resolve().parent,
        force=force,
        dry_run=dry_run,
        progress=show,
        announce=lambda msg: click.echo(msg, err=True),
    )
    if dry_run:
        for o in outcomes:
            click.echo(f"{o.stem}: {DRY_RUN_LABELS[o.status]} ({o.scene})" + (f" -- {o.error}" if o.error else ""))
        sys.exit(0)
    print_summary(outcomes)
    if record.get("interrupted"):
        unfinished = sum(o.status != "success" and o.status != "skipped" for o in outcomes)
        if unfinished or len(outcomes) < record.get("total", 0):
            click.echo("interrupted: unfinished scenes were removed; run again to continue", err=True)
        else:
            click.echo("interrupted, after every scene had finished", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(exit_code_for_outcomes(outcomes))
