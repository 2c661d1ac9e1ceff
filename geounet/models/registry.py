"""Model registry: names in configs map to classes in exactly one place."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from geounet.errors import ConfigError
from geounet.models.base import ModelSpec, OutputMode, SegmentationModel

_REGISTRY: dict[str, type[SegmentationModel]] = {}


def register(name: str) -> Callable[[type[SegmentationModel]], type[SegmentationModel]]:
    """Class decorator adding an architecture to the registry under ``name``."""

    def deco(cls: type[SegmentationModel]) -> type[SegmentationModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def build(spec: ModelSpec) -> SegmentationModel:
    """Instantiate the architecture described by ``spec`` (random weights)."""
    try:
        cls = _REGISTRY[spec.arch]
    except KeyError:
        raise ConfigError(
            f"unknown model architecture {spec.arch!r}; choose one of {', '.join(list_models())}"
        ) from None
    return cls(spec)


def create_model(
    name: str = "unet",
    *,
    in_channels: int = 3,
    classes: Sequence[str] = ("building",),
    mode: OutputMode = "binary",
    width: int = 64,
    depth: int = 4,
    **options: Any,
) -> SegmentationModel:
    """Create a segmentation model by registry name.

    Args:
        name: architecture, one of :func:`list_models`.
        in_channels: input bands.
        classes: class names; ``binary`` takes exactly one.
        mode: ``binary``, ``multilabel`` or ``multiclass``.
        width: channels of the first stage (64 in the paper).
        depth: number of poolings (4 in the paper: 64 -> 1024).
        **options: architecture-specific extras, stored in the spec.
    """
    spec = ModelSpec(
        arch=name,
        in_channels=in_channels,
        classes=tuple(classes),
        mode=mode,
        width=width,
        depth=depth,
        options=dict(options),
    )
    return build(spec)
