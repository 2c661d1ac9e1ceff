"""Weights shipped with geounet (``geounet info NAME`` shows each one's card).

``default.safetensors``: a UNet (multilabel: ``building``, ``road``) at 0.5 m, started from
the synthetic model's weights and fine-tuned on real imagery whose terms allow sharing
trained weights (SpaceNet 1 Rio, OpenAerialMap with OpenStreetMap buildings from HOT's fAIr,
Humans in the Loop Dubai, Inria Chicago) with generated synthetic scenes kept in the mix and
the OpenAerialMap chips read as mosaics of touching chips, with
``geounet train workflows/train-real-mosaic.yaml``; stored in half precision. Its card lists every source
with its terms and attribution, the checkpoint it started from, and the accuracy on held-out
areas.

``synthetic.safetensors``: a small UNet trained on synthetic scenes only, reproducibly, with
``geounet train workflows/train-synthetic.yaml``: for the demo and the tests of the pipeline
(it knows the synthetic scenes' look exactly), not for real imagery.
"""

from __future__ import annotations

import os
from pathlib import Path

from geounet.errors import CheckpointError

DEFAULT_NAME = "default.safetensors"
SYNTHETIC_NAME = "synthetic.safetensors"


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
            "or train them with `geounet train workflows/train-real-mosaic.yaml` and scripts/ship_model.py, "
            "or pass your own checkpoint with --model",
        )
    return path


def synthetic_weights() -> Path:
    """Path of the shipped synthetic-trained checkpoint (demo and tests).

    Raises:
        CheckpointError: the file is not installed; the message says how to train it.
    """
    path = Path(__file__).resolve().with_name(SYNTHETIC_NAME)
    if not path.is_file():
        raise CheckpointError(
            path,
            "the synthetic weights are not installed with this copy of geounet; reinstall geounet, "
            "or train them with `geounet train workflows/train-synthetic.yaml` (which writes this file)",
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
        CheckpointError: ``default`` or ``synthetic`` is named but its weights are not installed.
    """
    text = os.fspath(model)
    if text == "default":
        return str(default_weights())
    if text == "synthetic":
        return str(synthetic_weights())
    shipped = shipped_models()
    if text in shipped:
        return str(shipped[text])
    p = Path(text)
    if not p.is_absolute() and base is not None and not p.exists() and (base / p).exists():
        p = base / p
    return os.path.abspath(p)
