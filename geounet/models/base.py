"""What every segmentation model in geounet shares.

A model is an ``nn.Module`` built from a :class:`ModelSpec`. It maps a float tensor
``(N, in_channels, H, W)`` to logits ``(N, out_channels, H, W)`` for *any* H and W:
the input is zero-padded at the right and bottom to a multiple of ``2**depth`` and the
output is cropped back. The zero padding is part of the contract: the tiled inference in
``geounet.scene.plan`` relies on exactly this convention (right/bottom, value 0 in normalized
space) to reproduce whole-scene inference tile by tile.

Output modes:

* ``binary``     -- one class, one output channel, sigmoid;
* ``multilabel`` -- one channel per class, independent sigmoids;
* ``multiclass`` -- background + one channel per class, softmax.

Logits are turned into probabilities in one place only: :func:`activate`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from geounet.errors import ConfigError, ModelInputError

OutputMode = Literal["binary", "multilabel", "multiclass"]
OUTPUT_MODES: tuple[str, ...] = ("binary", "multilabel", "multiclass")
MAX_WIDTH = 512  # channels of the first stage; the paper uses 64


# A class name: a letter, then letters, digits, '_' or '-' (at most 64 characters). Class names
# come from checkpoint metadata (not covered by the content hash) and become output file and
# layer names, so nothing else may pass (no separators, no dots, no absolute paths).
CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture (not its weights)."""

    arch: str
    in_channels: int = 3
    classes: tuple[str, ...] = ("building",)
    mode: OutputMode = "binary"
    width: int = 64  # channels of the first stage; stage i has width * 2**i
    depth: int = 4  # number of 2x2 poolings; the bottleneck has width * 2**depth channels
    options: dict[str, Any] = field(default_factory=dict)  # architecture-specific extras

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.mode not in OUTPUT_MODES:
            raise ConfigError(f"model mode {self.mode!r} is not one of {', '.join(OUTPUT_MODES)}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"model classes {list(self.classes)!r:.200} must be non-empty and unique")
        bad = [c for c in self.classes if not isinstance(c, str) or not CLASS_NAME.fullmatch(c)]
        if bad:
            shown = ", ".join(repr(c)[:60] for c in bad[:3])
            raise ConfigError(
                f"model class name(s) {shown} not allowed: class names become file and layer names "
                "(buildings.geojson, GeoPackage layers), so each must start with a letter and hold only "
                "letters, digits, '_' or '-', at most 64 characters; rename the class"
            )
        if self.mode == "binary" and len(self.classes) != 1:
            raise ConfigError(
                f"mode 'binary' takes exactly one class, got {list(self.classes)!r}; "
                "use mode 'multilabel' or 'multiclass' for several"
            )
        if self.in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {self.in_channels}")
        if not 1 <= self.width <= MAX_WIDTH:
            # bounded so that a hostile checkpoint header cannot make us build a huge model
            raise ConfigError(f"width must be between 1 and {MAX_WIDTH}, got {self.width}")
        if not 1 <= self.depth <= 6:
            raise ConfigError(f"depth must be between 1 and 6, got {self.depth}")

    @property
    def out_channels(self) -> int:
        """Channels of the logits: 1 (binary), n classes (multilabel), n + 1 (multiclass)."""
        if self.mode == "multiclass":
            return len(self.classes) + 1
        return len(self.classes)

    @property
    def multiple(self) -> int:
        """Input sizes are padded to a multiple of this (2**depth)."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {"arch", "in_channels", "classes", "mode", "width", "depth", "options"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model spec keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**{**d, "classes": tuple(d.get("classes", ("building",)))})


def activate(logits: torch.Tensor, mode: OutputMode) -> torch.Tensor:
    """Logits -> per-class probabilities in [0, 1]. The only place sigmoid/softmax is applied.

    For ``multiclass`` the returned tensor keeps the background channel at index 0.
    """
    if mode == "multiclass":
        return torch.softmax(logits.float(), dim=1)
    return torch.sigmoid(logits.float())


class SegmentationModel(nn.Module):
    """Base class: pad/crop to any input size, probability output, receptive field.

    Subclasses implement :meth:`forward_padded` (input already a multiple of
    ``2**depth``) and :meth:`_receptive_field_radius`.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        # Free-form metadata attached by load_checkpoint (normalization, bands, provenance...).
        self.metadata: dict[str, Any] = {}

    # -- to be provided by each architecture ------------------------------------------
    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _receptive_field_radius(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared behaviour ---------------------------------------------------------------
    @property
    def receptive_field_radius(self) -> int:
        """Pixels: an output pixel depends on no input pixel farther than this (Chebyshev)."""
        return int(self._receptive_field_radius())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ModelInputError(f"{self.spec.arch} expects a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.spec.in_channels:
            raise ModelInputError(
                f"{self.spec.arch} was built for {self.spec.in_channels} input bands, "
                f"got {x.shape[1]} (tensor shape {tuple(x.shape)})"
            )
        h, w = x.shape[-2:]
        m = self.spec.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="constant", value=0.0)
        y = self.forward_padded(x)
        return y[..., :h, :w]

    @torch.inference_mode()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, out_channels, H, W) in [0, 1], computed in inference mode."""
        return activate(self(x), self.spec.mode)
