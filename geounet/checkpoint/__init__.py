"""Checkpoints: safetensors weights plus everything inference needs, and nothing pickled.

A geounet checkpoint is an ordinary `safetensors <https://huggingface.co/docs/safetensors>`_
file. Its tensors are the model's ``state_dict`` (BatchNorm buffers included). Its header
metadata holds one key, ``"geounet"``, whose value is a JSON document
(:class:`CheckpointMetadata`) describing inference completely: the architecture
(:class:`~geounet.models.base.ModelSpec`), which scene bands feed the model and how they
are normalized, class names and output mode, the receptive-field radius, a suggested tile
size and halo, per-class thresholds, training provenance and a content hash of the weights.

Why not ``torch.save``? A pickle can execute arbitrary code when it is loaded, and model files
are exactly what people download from strangers. :func:`load_checkpoint` and
:func:`read_metadata` never unpickle: they parse the safetensors header themselves (8-byte
little-endian length, then JSON) and refuse anything else with a :class:`CheckpointError`
that says what the file looks like. Both take a path or the checkpoint's bytes (workers
load the bytes the client sent them). :func:`import_torch_checkpoint` converts an existing
``.pt``/``.pth`` state dict using only ``torch.load(..., weights_only=True)``.

The metadata of a width-4, depth-2 binary UNet saved with defaults (keys sorted, compact in
the file)::

    {"bands": [1, 2, 3], "extra": {}, "format": "geounet.checkpoint", "format_version": 1,
     "geounet_version": "0.1.0", "halo": 24, "hash": "c2f467a8e44c…(64 hex)",
     "normalization": {"kind": "meanstd", "mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]},
     "provenance": {"epochs": 3}, "receptive_field_radius": 23,
     "spec": {"arch": "unet", "classes": ["building"], "depth": 2, "in_channels": 3,
              "mode": "binary", "options": {}, "width": 4},
     "thresholds": {"building": 0.5}, "tile_size": 1024}

The content hash is SHA-256 over the tensors' names, dtypes, shapes and bytes in sorted name
order, so it identifies the weights independently of the metadata and of the order tensors
were written in. It keys worker-side model caches and is checked on every load.

One idea per module:

* :mod:`~geounet.checkpoint.metadata`: the metadata document and its validation.
* :mod:`~geounet.checkpoint.header`: opening a file or bytes, parsing the safetensors
  header, and every refusal of something that is not a sound geounet checkpoint.
* :mod:`~geounet.checkpoint.hashing`: the content hash, computing and checking it.
* :mod:`~geounet.checkpoint.io`: save, load, read the metadata, convert a pickle.
* :mod:`~geounet.checkpoint.card`: the model card and a readable provenance summary.

The tile-size default is :mod:`geounet.compute`'s rule, re-exported here.
"""

from __future__ import annotations

from geounet.checkpoint.card import model_card
from geounet.checkpoint.hashing import checkpoint_hash, content_hash
from geounet.checkpoint.header import CheckpointSource
from geounet.checkpoint.io import import_torch_checkpoint, load_checkpoint, read_metadata, save_checkpoint
from geounet.checkpoint.metadata import FORMAT, FORMAT_VERSION, METADATA_KEY, CheckpointMetadata
from geounet.compute import DEFAULT_TILE_SIZE, default_tile_size

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "DEFAULT_TILE_SIZE",
    "CheckpointMetadata",
    "save_checkpoint",
    "read_metadata",
    "load_checkpoint",
    "checkpoint_hash",
    "content_hash",
    "import_torch_checkpoint",
    "default_tile_size",
    "model_card",
    "CheckpointSource",
]
