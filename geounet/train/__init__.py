"""Training: vector labels and GeoTIFF scenes in, a geounet checkpoint out.

::

    from geounet.train import load_training_settings, train
    result = train(load_training_settings("configs/training.yaml"))
    print(result.best_checkpoint, result.metrics["building_f1"])

Modules, in the order data flows through them: :mod:`~geounet.train.config` (settings),
:mod:`~geounet.train.labels` (vector labels -> window rasters),
:mod:`~geounet.train.sampling` (split and windows), :mod:`~geounet.train.data` (scenes and
batches, read through :mod:`geounet.scene.read` as inference reads),
:mod:`~geounet.train.augment`, :mod:`~geounet.train.losses` and :mod:`~geounet.train.optim`
(loss, optimizer groups, learning-rate schedule), :mod:`~geounet.train.validation` (scores
through inference's forward, masks and polygons and the evaluate package),
:mod:`~geounet.train.state` (progress and the optimizer-state sidecar for resume),
:mod:`~geounet.train.report` (log.csv, curves.png, provenance) and
:mod:`~geounet.train.loop` (the run as named steps).
"""

from __future__ import annotations

from pathlib import Path

from geounet.train.config import TrainingSettings, load_training_settings
from geounet.train.loop import EpochCallback, TrainResult, run

__all__ = ["TrainingSettings", "TrainResult", "load_training_settings", "train"]


def train(
    settings: TrainingSettings,
    *,
    resume: str | Path | None = None,
    progress: bool | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train as ``settings`` says and return where the checkpoints and logs are.

    See :func:`geounet.train.loop.run` for the steps, the arguments and the errors.
    """
    return run(settings, resume=resume, progress=progress, on_epoch=on_epoch)
