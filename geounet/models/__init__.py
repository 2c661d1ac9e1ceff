"""Segmentation models: the classic UNet and its variants, behind one registry."""

from geounet.models import attention_unet, resunet, unet, unet_plus_plus  # noqa: F401  (register)
from geounet.models.base import OUTPUT_MODES, ModelSpec, OutputMode, SegmentationModel, activate
from geounet.models.registry import build, create_model, list_models, register

__all__ = [
    "OUTPUT_MODES",
    "ModelSpec",
    "OutputMode",
    "SegmentationModel",
    "activate",
    "build",
    "create_model",
    "list_models",
    "register",
]
