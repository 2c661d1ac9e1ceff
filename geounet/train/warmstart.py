"""Start a training run from an existing checkpoint's weights (``model.init``): fine-tuning.

A user with a few hundred labelled buildings of their own area gets further by continuing
from a model that already knows buildings (the shipped ``default``, or ``synthetic``) than
by starting from random weights. :func:`warm_start` builds the config's model with the
checkpoint's architecture, copies every tensor of the checkpoint into it, and leaves the
last convolution of the output head freshly initialized when the config's classes or output
mode differ from the checkpoint's (its channels then mean something else). The run keeps the checkpoint's
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

from geounet.checkpoint import load_checkpoint
from geounet.errors import ConfigError
from geounet.models.base import ModelSpec, SegmentationModel
from geounet.models.registry import create_model
from geounet.scene.normalize import MeanStd, Percentile, parse_normalization
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
    fresh: list[str]  # tensors left at their random initialization (the output layer when the classes differ)

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


def load_init(settings: TrainingSettings) -> SegmentationModel | None:
    """The checkpoint ``model.init`` names, loaded with every check and its architecture
    compared with the config's; None without ``model.init``. Runs before the output folder is
    touched, so a bad ``model.init`` costs nothing and an ``overwrite`` cannot delete a
    checkpoint the run was to start from.

    The architecture (``arch``, ``width``, ``depth``, ``options``) is the checkpoint's; a key
    the config sets to another value is an error rather than silently replaced.

    Raises:
        CheckpointError: the checkpoint is missing or invalid (named, with the cause).
        ConfigError: the config sets another architecture.
    """
    path = init_path(settings)
    if path is None:
        return None
    source = load_checkpoint(path)
    spec = source.spec
    ours = settings.model
    clashes = [
        f"model.{key} is {getattr(ours, key)!r} but the checkpoint's is {getattr(spec, key)!r}"
        for key in _ARCH_KEYS
        if key in ours.model_fields_set and getattr(ours, key) != getattr(spec, key)
    ]
    if clashes:
        raise ConfigError(
            f"model.init {path}: {'; '.join(clashes)}; the architecture comes from model.init, so leave "
            f"those keys out of the config (or set them to the checkpoint's values)"
        )
    return source


def with_architecture(settings: TrainingSettings, spec: ModelSpec) -> TrainingSettings:
    """``settings`` whose ``model`` section names the architecture a warm start took from its
    checkpoint, so the run's provenance records the model it trained."""
    arch = {key: getattr(spec, key) for key in _ARCH_KEYS}
    return settings.model_copy(update={"model": settings.model.model_copy(update=arch)})


def warm_start(
    settings: TrainingSettings, bands: Sequence[int], source: SegmentationModel | None = None
) -> WarmStart | None:
    """The config's model, started from ``model.init``'s weights; None without ``model.init``.

    ``source``: the checkpoint :func:`load_init` loaded (loaded here when not given). Every
    tensor is copied except, when the config's classes or output mode differ from the
    checkpoint's, the last convolution of the output head (a ResUNet's head BatchNorm is kept);
    its random initialization is seeded by ``compute.seed``.

    Raises:
        CheckpointError: the checkpoint is missing or invalid (named, with the cause).
        ConfigError: the checkpoint's architecture or band count does not fit the config.
    """
    if source is None:
        source = load_init(settings)
    if source is None:
        return None
    path = Path(str(source.checkpoint_path))
    spec = source.spec
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
        mode=settings.model.mode,
        width=spec.width,
        depth=spec.depth,
        **spec.options,
    )
    same_head = list(spec.classes) == settings.class_names and spec.mode == settings.model.mode
    fresh = [] if same_head else output_layer(model)
    theirs = source.state_dict()
    state = model.state_dict()
    missing = [k for k in state if k not in fresh and (k not in theirs or theirs[k].shape != state[k].shape)]
    if missing:  # never for the same architecture and width, unless the registry's layers changed
        raise ConfigError(f"model.init {path} lacks tensors {missing[:5]} of a {spec.arch}; retrain or re-export it")
    with torch.no_grad():
        for key, tensor in state.items():
            if key not in fresh:
                tensor.copy_(theirs[key])
    start = WarmStart(
        given=str(settings.model.init),
        path=path,
        hash=str(meta["hash"]),
        model=model,
        normalization=parse_normalization(meta["normalization"], f"checkpoint {path}"),
        fresh=fresh,
    )
    log.info(
        "model.init: weights of %s (hash %s); %s",
        path,
        start.hash[:12],
        f"new output layer ({', '.join(fresh)})" if fresh else "all tensors copied",
    )
    return start


def output_layer(model: SegmentationModel) -> list[str]:
    """State-dict names of the last convolution of ``model.head``: the layer whose output
    channels are the classes."""
    convs = [name for name, m in model.get_submodule("head").named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no convolution in its output head; model.init cannot use it")
    prefix = f"{HEAD_PREFIX}{convs[-1]}." if convs[-1] else HEAD_PREFIX
    return [k for k in model.state_dict() if k.startswith(prefix)]
