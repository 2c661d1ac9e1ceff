"""Start a training run from an existing checkpoint's weights (``model.init``): fine-tuning.

A user with a few hundred labelled buildings of their own area gets further by continuing
from a model that already knows buildings (the shipped ``default``, or ``synthetic``) than
by starting from random weights. :func:`warm_start` builds the config's model with the
checkpoint's architecture, copies every tensor of the checkpoint into it, and leaves the
last convolution of the output head freshly initialized when the config's classes or output
mode differ from the checkpoint's (its channels then mean something else). The run keeps the checkpoint's
input normalization: its first layer was trained on pixels scaled that way.

A plain ``unet`` checkpoint can also start a **wider** model (``model.width`` larger than the
checkpoint's): :func:`widen` copies its weights into the first channels of every layer and
starts the added channels from random weights whose path into the original channels is zero,
so the wider model computes exactly the checkpoint's function at the first step and the added
channels learn from there (a larger model that keeps what the smaller one knew).

Resuming (``--resume``) is different: it continues one run, optimizer state included;
``model.init`` only starts a new run from weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from geounet.checkpoint import load_checkpoint
from geounet.errors import ConfigError, GeounetError
from geounet.models.base import ModelSpec, SegmentationModel
from geounet.models.layers import UpBlock
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
    widened_from: int | None = None  # the checkpoint's width when the model is wider (widen), else None

    @property
    def provenance(self) -> dict[str, Any]:
        """What the checkpoints of the run record (``initialized_from``; ``geounet info`` shows it)."""
        record: dict[str, Any] = {
            "model": self.given,
            "checkpoint": str(self.path),
            "hash": self.hash,
            "fresh": list(self.fresh),
        }
        if self.widened_from is not None:
            record["widened_from_width"] = self.widened_from
        return record


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
    the config sets to another value is an error rather than silently replaced, except a larger
    ``width`` for a plain ``unet`` checkpoint (the model is widened: :func:`widen`).

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
        if key in ours.model_fields_set
        and getattr(ours, key) != getattr(spec, key)
        and not (key == "width" and widens(settings, spec))
    ]
    if clashes:
        raise ConfigError(
            f"model.init {path}: {'; '.join(clashes)}; the architecture comes from model.init, so leave "
            f"those keys out of the config (or set them to the checkpoint's values; a larger model.width "
            f"widens a plain 'unet' checkpoint)"
        )
    return source


def widens(settings: TrainingSettings, spec: ModelSpec) -> bool:
    """Whether the config asks for a wider model than the ``unet`` checkpoint ``spec``
    (``model.width`` set and larger): the run then trains a widened copy (:func:`widen`)."""
    ours = settings.model
    return spec.arch == "unet" and "width" in ours.model_fields_set and ours.width > spec.width


def with_architecture(settings: TrainingSettings, spec: ModelSpec) -> TrainingSettings:
    """``settings`` whose ``model`` section names the architecture a warm start took from its
    checkpoint, so the run's provenance records the model it trained."""
    arch = {key: getattr(spec, key) for key in _ARCH_KEYS}
    if widens(settings, spec):
        arch["width"] = settings.model.width
    return settings.model_copy(update={"model": settings.model.model_copy(update=arch)})


def warm_start(
    settings: TrainingSettings, bands: Sequence[int], source: SegmentationModel | None = None
) -> WarmStart | None:
    """The config's model, started from ``model.init``'s weights; None without ``model.init``.

    ``source``: the checkpoint :func:`load_init` loaded (loaded here when not given). Every
    tensor is copied except, when the config's classes or output mode differ from the
    checkpoint's, the last convolution of the output head (a ResUNet's head BatchNorm is kept);
    its random initialization is seeded by ``compute.seed``. With ``model.width`` larger than
    a ``unet`` checkpoint's (:func:`widens`; ``settings`` as :func:`with_architecture` returns
    them), the checkpoint is copied into a wider model by :func:`widen`.

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
    wider = widens(settings, spec)
    torch.manual_seed(settings.compute.seed)
    model = create_model(
        spec.arch,
        in_channels=spec.in_channels,
        classes=tuple(settings.class_names),
        mode=settings.model.mode,
        width=settings.model.width if wider else spec.width,
        depth=spec.depth,
        **spec.options,
    )
    same_head = list(spec.classes) == settings.class_names and spec.mode == settings.model.mode
    fresh = [] if same_head else output_layer(model)
    if wider:
        widen(source, model, skip=fresh)
    else:
        theirs = source.state_dict()
        state = model.state_dict()
        missing = [k for k in state if k not in fresh and (k not in theirs or theirs[k].shape != state[k].shape)]
        if missing:  # never for the same architecture and width, unless the registry's layers changed
            raise ConfigError(
                f"model.init {path} lacks tensors {missing[:5]} of a {spec.arch}; retrain or re-export it"
            )
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
        widened_from=spec.width if wider else None,
    )
    log.info(
        "model.init: weights of %s (hash %s); %s%s",
        path,
        start.hash[:12],
        f"new output layer ({', '.join(fresh)})" if fresh else "all tensors copied",
        f"; widened from width {spec.width} to {settings.model.width}" if wider else "",
    )
    return start


def widen(source: SegmentationModel, model: SegmentationModel, skip: Sequence[str] = ()) -> None:
    """Copy the plain UNet ``source`` into the wider UNet ``model`` (same depth and bands) so
    that ``model`` computes ``source``'s function exactly, in place.

    Each layer's original channels are the first ones (a decoder's input is ``[skip, up]``
    concatenated: the original channels lead each part). Every original output channel gets
    its weights from the original input channels and weight 0 from the added ones; the added
    output channels and BatchNorms keep their random initialization. The added channels thus
    compute features from the first step, but nothing reaches the original channels or the
    logits until training moves those zero weights, and gradients reach them through their
    inputs. Tensors named in ``skip`` (an output layer started afresh) are left random.

    Raises:
        ConfigError: ``source`` or ``model`` is not a plain ``unet``, or ``model`` is narrower.
        GeounetError: the widened model's logits differ from the source's (a layer this
            function does not know).
    """
    spec, wide = source.spec, model.spec
    if spec.arch != "unet" or wide.arch != "unet" or wide.depth != spec.depth or wide.width < spec.width:
        raise ConfigError(
            f"widening copies a plain 'unet' into a wider one of the same depth, not a {spec.arch} of "
            f"width {spec.width} into a {wide.arch} of width {wide.width}; set model.width to the checkpoint's"
        )
    theirs = dict(source.named_modules())
    cols = _input_channels(source, model)
    with torch.no_grad():
        for name, layer in model.named_modules():
            old = theirs.get(name)
            if f"{name}.weight" in skip or old is None:
                continue
            if isinstance(layer, torch.nn.ConvTranspose2d) and isinstance(old, torch.nn.ConvTranspose2d):
                n = old.out_channels  # weight: (in, out, kh, kw)
                layer.weight[:, :n] = 0.0
                layer.weight[: old.in_channels, :n] = old.weight
            elif isinstance(layer, torch.nn.Conv2d) and isinstance(old, torch.nn.Conv2d):
                n = old.out_channels  # weight: (out, in, kh, kw)
                layer.weight[:n] = 0.0
                layer.weight[:n, cols.get(name, list(range(old.in_channels)))] = old.weight
            elif isinstance(layer, torch.nn.BatchNorm2d) and isinstance(old, torch.nn.BatchNorm2d):
                n = old.num_features
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(layer, attr)[:n] = getattr(old, attr)
                if layer.num_batches_tracked is not None and old.num_batches_tracked is not None:
                    layer.num_batches_tracked.copy_(old.num_batches_tracked)
                continue
            else:
                continue
            if layer.bias is not None and old.bias is not None:
                layer.bias[:n] = old.bias
    # the check: the features entering the output layer (its original channels) are the
    # source's, so the logits are too unless the output layer starts afresh
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen[name] = args[0]

        return hook

    was_training = model.training
    model.eval()
    source.eval()
    hooks = [m.get_submodule("head").register_forward_pre_hook(keep(k)) for k, m in (("wide", model), ("src", source))]
    try:
        with torch.no_grad():
            x = torch.rand(1, spec.in_channels, 2 ** (spec.depth + 2), 2 ** (spec.depth + 2))
            model(x)
            source(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    original = seen["src"]
    diff = float((seen["wide"][:, : original.shape[1]] - original).abs().max())
    if not diff <= 1e-4 * max(1.0, float(original.abs().max())):
        raise GeounetError(
            f"widening {spec.arch} width {spec.width} -> {wide.width} changed its features by {diff:g} (a layer "
            f"widen does not know: a geounet bug); train at the checkpoint's width {spec.width} (leave model.width out)"
        )


def _input_channels(source: SegmentationModel, model: SegmentationModel) -> dict[str, list[int]]:
    """The wide model's input channels of each decoder's first convolution that hold the
    source's ones: ``[skip, up]`` is concatenated, so the up-path channels start after all of
    the wide skip channels."""
    cols: dict[str, list[int]] = {}
    olds = cast(torch.nn.ModuleList, source.get_submodule("decoder"))
    news = cast(torch.nn.ModuleList, model.get_submodule("decoder"))
    for i, (a, b) in enumerate(zip(olds, news)):
        old, new = cast(UpBlock, a), cast(UpBlock, b)
        up_old, up_new = old.up.out_channels, new.up.out_channels
        skip_old = cast(torch.nn.Conv2d, old.conv[0]).in_channels - up_old
        skip_new = cast(torch.nn.Conv2d, new.conv[0]).in_channels - up_new
        cols[f"decoder.{i}.conv.0"] = list(range(skip_old)) + [skip_new + k for k in range(up_old)]
    return cols


def output_layer(model: SegmentationModel) -> list[str]:
    """State-dict names of the last convolution of ``model.head``: the layer whose output
    channels are the classes."""
    convs = [name for name, m in model.get_submodule("head").named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no convolution in its output head; model.init cannot use it")
    prefix = f"{HEAD_PREFIX}{convs[-1]}." if convs[-1] else HEAD_PREFIX
    return [k for k in model.state_dict() if k.startswith(prefix)]
