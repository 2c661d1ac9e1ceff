"""Weights shipped with geounet.

``default.safetensors`` is a small UNet (multilabel: ``building``, ``road``) trained on
synthetic scenes only, reproducibly, with ``geounet train workflows/train-default.yaml``;
its metadata records the training configuration, data seeds and validation metrics
(``geounet info`` shows them). It is meant for demos and tests of the pipeline, not for
real imagery.
"""

from __future__ import annotations

from pathlib import Path

from geounet.errors import CheckpointError

DEFAULT_NAME = "default.safetensors"


def default_weights() -> Path:
    """Path of the shipped default checkpoint.

    Raises:
        CheckpointError: the file is not installed (e.g. a source checkout without it); the
            message says how to train it.
    """
    path = Path(__file__).resolve().with_name(DEFAULT_NAME)
    if not path.is_file():
        raise CheckpointError(
            path,
            "the default weights are not installed with this copy of geounet; reinstall geounet, "
            "or train them with `geounet train workflows/train-default.yaml` (which writes this file), "
            "or pass your own checkpoint with --model",
        )
    return path
