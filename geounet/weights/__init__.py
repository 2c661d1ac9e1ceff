"""Weights shipped with geounet.

``default.safetensors`` is a small UNet (multilabel: ``building``, ``road``) trained on
synthetic scenes only, reproducibly, with ``geounet train workflows/train-default.yaml``;
its metadata records the training configuration, data seeds and validation metrics
(``geounet info`` shows them). It is meant for demos and tests of the pipeline, not for
real imagery.
"""

from __future__ import annotations

import os
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


def shipped_models() -> dict[str, Path]:
    """Names of the checkpoints shipped with geounet (file stem -> path), e.g. ``default``."""
    folder = Path(__file__).resolve().parent
    return {p.name[: -len(".safetensors")]: p for p in sorted(folder.glob("*.safetensors"))}


def resolve_model_name(model: str | os.PathLike[str], base: Path | None = None) -> str:
    """The checkpoint a ``--model``/``model:`` value names: a shipped model's name
    (``default``, see :func:`shipped_models`) gives its weights, anything else is a path;
    a relative path is taken from ``base`` (the workflow file's folder) when it exists there
    and not in the working folder. The one place where model names resolve, for
    ``predict``, ``run`` and ``info`` alike.

    Raises:
        CheckpointError: ``default`` is named but its weights are not installed.
    """
    text = os.fspath(model)
    if text == "default":
        return str(default_weights())
    shipped = shipped_models()
    if text in shipped:
        return str(shipped[text])
    p = Path(text)
    if not p.is_absolute() and base is not None and not p.exists() and (base / p).exists():
        p = base / p
    return os.path.abspath(p)
