"""Start a training run from an existing checkpoint's weights (``model.init``): fine-tuning.

A user with a few hundred labelled buildings of their own area gets further by continuing
from a model that already knows buildings (the shipped ``default``, or ``synthetic``) than
by starting from random weights. :func:`warm_start` builds the config's model with the
checkpoint's architecture, copies every tensor of the checkpoint into it, and leaves the
output head freshly initialized when the config's classes or output mode differ from the
checkpoint's (the head's channels then mean something else). The run keeps the checkpoint's
input normalization: its first layer was trained on pixels scaled that way.

Resuming (``--resume``) is different: it continues one run, optimizer state included;
``model.init`` only starts a new run from weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.errors import ConfigError
from geounet.models.base import SegmentationModel
from geounet.models.registry import create_model
from geounet.scene.normalize import MeanStd, Percentile
from geounet.train.config import TrainingSettings
from geounet.weights import resolve_model_name, shipped_models

log = logging.getLogger(__name__)

HEAD_PREFIX = "head."  # the output layer of every architecture in geounet.models
_ARCH_KEYS = ("arch", "width", "depth", "options")  # model keys taken from the checkpoint


@dataclass
class WarmStart:
    """A new model holding a checkpoint's weights, and what the run records about it."""

    given: str  # model.init as the config gives it: a shipped name or a path
    path: Path
    hash: str
    model: SegmentationModel
    normalization: MeanStd | Percentile
    fresh: list[str]  # tensors left at their random initialization (the head when the classes differ)

    @property
    def provenance(self) -> dict[str, Any]:
        """What the checkpoints of the run record (``initialized_from``; ``geounet info`` shows it)."""
        return {"model": self.given, "checkpoint": str(self.path), "hash": self.hash, "fresh": list(self.fresh)}


def init_path(settings: TrainingSettings) -> Path | None:
    """The checkpoint ``model.init`` names: a shipped model's name or a path (taken from the
    config's folder when it is not in the working folder); None when not set."""
    name = settings.model.init
    if name is None:
        return None
    shipped = name in shipped_models() or name in ("default", "synthetic")
    return Path(resolve_model_name(name if shipped else str(settings.resolve(name))))


def warm_start(settings: TrainingSettings, bands: Sequence[int]) -> WarmStart | None:
    """The config's model, started from ``model.init``'s weights; None without ``model.init``.

    The architecture (``arch``, ``width``, ``depth``, ``options``) is the checkpoint's; a key
    the config sets to another value is an error rather than silently replaced. The random
    initialization of a fresh head is seeded by ``compute.seed``.

    Raises:
        CheckpointError: the checkpoint is missing or invalid (named, with the cause).
        ConfigError: the checkpoint's architecture or band count does not fit the config.
    """
    path = init_path(settings)
    if path is None:
        return None
    source = load_checkpoint(path)
    spec = source.spec
    given = settings.model.model_fields_set
    ours = settings.model
    clashes = [
        f"model.{key} is {getattr(ours, key)!r} but the checkpoint's is {getattr(spec, key)!r}"
        for key in _ARCH_KEYS
        if key in given and getattr(ours, key) != getattr(spec, key)
    ]
    if clashes:
        raise ConfigError(
            f"model.init {path}: {'; '.join(clashes)}; the architecture comes from model.init, so leave "
            f"those keys out of the config (or set them to the checkpoint's values)"
        )
    if spec.in_channels != len(bands):
        raise ConfigError(
            f"model.init {path} takes {spec.in_channels} input bands, the config reads {len(bands)} "
            f"(bands {list(bands)}); choose data.bands to match the checkpoint or leave model.init out"
        )
    meta = source.metadata
    if list(meta["bands"]) != list(bands):
        log.warning(
            "model.init %s was trained on scene bands %s, this run reads bands %s in their place",
            path,
            meta["bands"],
            list(bands),
        )
    torch.manual_seed(settings.compute.seed)
    model = create_model(
        spec.arch,
        in_channels=spec.in_channels,
        classes=tuple(settings.class_names),
        mode=ours.mode,
        width=spec.width,
        depth=spec.depth,
        **spec.options,
    )
    same_head = list(spec.classes) == settings.class_names and spec.mode == ours.mode
    theirs = source.state_dict()
    state = model.state_dict()
    fresh = [k for k in state if k.startswith(HEAD_PREFIX)] if not same_head else []
    missing = [k for k in state if k not in fresh and (k not in theirs or theirs[k].shape != state[k].shape)]
    if missing:  # never for the same architecture and width, unless the registry's layers changed
        raise ConfigError(f"model.init {path} lacks tensors {missing[:5]} of a {spec.arch}; retrain or re-export it")
    with torch.no_grad():
        for key, tensor in state.items():
            if key not in fresh:
                tensor.copy_(theirs[key])
    norm = read_metadata(path).normalization
    start = WarmStart(
        given=str(settings.model.init), path=path, hash=str(meta["hash"]), model=model, normalization=norm, fresh=fresh
    )
    log.info(
        "model.init: weights of %s (hash %s); %s",
        path,
        start.hash[:12],
        f"new output head ({', '.join(fresh)})" if fresh else "all tensors copied",
    )
    return start
