"""``geounet train``: train a model on scenes with vector labels; flags win over the config file."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from geounet.train import load_training_settings, train


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)


@click.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--epochs", type=click.IntRange(min=1), help="Number of epochs (optim.epochs). Default: the file's, else 20."
)
@click.option(
    "--out",
    help="Output folder for checkpoints, log.csv and curves.png (output.dir). Default: the file's, else runs/train.",
)
@click.option(
    "--resume",
    "resume",
    type=click.Path(exists=True, dir_okay=False),
    help="Continue a run from its last.safetensors (the .state.json/.state.safetensors sidecar must be beside it); "
    "training goes on with the next epoch, in --out.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Compute device (compute.device). Default: auto (CUDA if visible).",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    help="Autocast precision (compute.precision). Default: auto (bf16 where native, else fp32).",
)
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads (compute.threads). Default: all cores.")
@click.option(
    "--seed", type=click.IntRange(min=0), help="Seed of weights, windows and augmentation (compute.seed). Default: 0."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Windows per optimizer step (sampling.batch_size). Default: 8."
)
@click.option(
    "--windows-per-epoch",
    type=click.IntRange(min=1),
    help="Training windows per epoch (sampling.windows_per_epoch). Default: 512.",
)
@click.option(
    "--window", type=click.IntRange(min=16), help="Training window side, pixels (sampling.window). Default: 256."
)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate (optim.lr). Default: 0.003."
)
@click.option("--export", help="Also copy the best checkpoint to this path at the end (output.export). Default: none.")
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Start afresh in an --out folder that holds an earlier run (output.overwrite). Default: refuse.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar with loss and metrics. Default: on when stderr is a terminal.",
)
def command(
    config: str,
    epochs: int | None,
    out: str | None,
    resume: str | None,
    device: str | None,
    precision: str | None,
    threads: int | None,
    seed: int | None,
    batch_size: int | None,
    windows_per_epoch: int | None,
    window: int | None,
    lr: float | None,
    export: str | None,
    overwrite: bool | None,
    progress: bool | None,
) -> None:
    """Train a segmentation model as CONFIG (YAML, see configs/training.yaml) says.

    Writes OUT/best.safetensors (best epoch by validation.best_metric), OUT/last.safetensors
    with its training state (.state.json, .state.safetensors) for --resume, OUT/log.csv and
    OUT/curves.png. Prints the best epoch's metrics at the end.

    Exit codes: 0 trained, 2 configuration error (file, key and value named), 4 an output
    cannot be written (disk full, read-only folder; the file is named and earlier files, such
    as the best checkpoint so far, are left intact), 1 other failure.
    """
    overrides = {
        "optim.epochs": epochs,
        "output.dir": out,
        "compute.device": device,
        "compute.precision": precision,
        "compute.threads": threads,
        "compute.seed": seed,
        "sampling.batch_size": batch_size,
        "sampling.windows_per_epoch": windows_per_epoch,
        "sampling.window": window,
        "optim.lr": lr,
        "output.export": export,
        "output.overwrite": overwrite,
    }
    settings = load_training_settings(config, overrides)
    show = sys.stderr.isatty() if progress is None else progress

    def echo(row: dict[str, Any]) -> None:
        if not show:
            keys = ["train_loss", "val_loss", *(f"{n}_iou" for n in settings.class_names), "building_f1"]
            click.echo(f"epoch {row['epoch']}: " + ", ".join(f"{k} {_fmt(row[k])}" for k in keys if k in row), err=True)

    result = train(settings, resume=resume, progress=show, on_epoch=echo)
    click.echo(f"best epoch {result.best_epoch} of {result.epochs} by {result.metric} = {_fmt(result.best_value)}")
    for k, v in result.metrics.items():
        if k not in ("epoch",):
            click.echo(f"  {k}: {_fmt(v)}")
    click.echo(f"best checkpoint: {result.best_checkpoint}")
    if result.exported is not None:
        click.echo(f"exported to: {result.exported}")
    click.echo(f"wall time: {result.wall_time_s:.0f} s")
