"""``geounet predict``: segment GeoTIFF scenes into polygons with one checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from geounet.batch.workflow import predict_scenes
from geounet.cli.options import inference_options, inference_overrides, output_folder
from geounet.cli.summary import exit_code_for_outcomes, print_summary
from geounet.config import load_config
from geounet.errors import EXIT_INTERRUPTED
from geounet.settings import InferenceSettings
from geounet.weights import resolve_model_name


@click.command("predict")
@click.argument("scenes", nargs=-1, required=True)
@click.option(
    "-m",
    "--model",
    "model",
    required=True,
    help="Checkpoint (.safetensors) to run, or the name of a shipped model ('default').",
)
@click.option(
    "-o",
    "--out",
    required=True,
    callback=output_folder,
    help="Output folder; each scene gets OUT/<scene-stem>/.",
)
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False),
    help="Inference settings YAML (see configs/inference.yaml); flags win over it.",
)
@inference_options
@click.option("--workers", type=int, help="Embedded cluster: worker processes. Default: 1 per GPU, else 1.")
@click.option(
    "--scheduler", help="Address of an existing Dask scheduler (tcp://host:8786) instead of an embedded cluster."
)
@click.option("--force", is_flag=True, help="Recompute scenes whose outputs are already complete.")
@click.option("--progress/--no-progress", default=None, help="Progress bars. Default: on when stderr is a terminal.")
def command(
    scenes: tuple[str, ...],
    model: str,
    out: str,
    config: str | None,
    workers: int | None,
    scheduler: str | None,
    force: bool,
    progress: bool | None,
    **kw: object,
) -> None:
    """Segment SCENES (GeoTIFF paths or GDAL URLs) and write, per scene, OUT/<stem>/ with
    <class>.geojson (RFC 7946), polygons.gpkg, probability.tif (COG), quicklook.png and
    scene.json (written last). Holds OUT's lock while it runs, as `geounet run` does.

    Exit codes: 0 all scenes done or skipped, 1 some failed, 5 all failed,
    2 configuration error, 3 output folder locked by another run or predict,
    4 output folder not writable, 130 interrupted (SIGTERM, Ctrl-C).
    """
    settings = load_config(InferenceSettings, config, inference_overrides(dict(kw)))
    show = sys.stderr.isatty() if progress is None else progress
    outcomes, interrupted = predict_scenes(
        list(scenes),
        resolve_model_name(model),
        Path(out),
        settings,
        scheduler=scheduler,
        workers=workers,
        force=force,
        progress=show,
    )
    print_summary(outcomes)
    if interrupted:
        click.echo("interrupted: unfinished scenes were removed; run again to continue", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(exit_code_for_outcomes(outcomes))
