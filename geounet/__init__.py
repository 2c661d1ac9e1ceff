"""geounet: tiled, seam-free UNet segmentation of GeoTIFF scenes into GIS-ready polygons.

Public API::

    from geounet import create_model, save_checkpoint, load_checkpoint
"""

from geounet.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from geounet.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_checkpoint", "read_metadata", "save_checkpoint", "__version__"]
