"""geounet: tiled, seam-free UNet segmentation of GeoTIFF scenes into GIS-ready polygons.

Public API::

    from geounet import create_model, save_checkpoint, load_checkpoint

Names are imported lazily so that light modules (planning, configs) do not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "geounet.models",
    "list_models": "geounet.models",
    "save_checkpoint": "geounet.checkpoint",
    "load_checkpoint": "geounet.checkpoint",
    "read_metadata": "geounet.checkpoint",
}
__all__ = ["__version__", "create_model", "list_models", "load_checkpoint", "read_metadata", "save_checkpoint"]

if TYPE_CHECKING:  # pragma: no cover
    from geounet.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from geounet.models import create_model, list_models


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geounet' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
