"""Builders for broken, hostile and odd inputs, and checks shared by the reliability tests.

Every builder writes one small file (or link) and returns its path; none needs more than a
few milliseconds or a few hundred kilobytes on disk.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from tests.conftest import REPO, write_tif

UTM33 = ("EPSG:32633", Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0))
SCENE_OUTPUTS = (
    "item.json",
    "buildings.geojson",
    "roads.geojson",
    "road_centerlines.geojson",
    "polygons.gpkg",
    "probability.tif",
    "quicklook.png",
    "scene.json",
)


# --------------------------------------------------------------------------- good scenes
def bright_rect_scene(
    path: Path,
    rect: tuple[int, int, int, int] = (10, 8, 40, 30),
    *,
    shape: tuple[int, int] = (48, 64),
    crs: str = UTM33[0],
    transform: Affine = UTM33[1],
    bands: int = 3,
) -> Path:
    """Band 1 is 255 inside ``rect`` (col0, row0, col1, row1), other bands 90: the probe
    model's polygon is exactly that rectangle."""
    img = np.zeros((bands, *shape), np.uint8)
    c0, r0, c1, r1 = rect
    img[0, r0:r1, c0:c1] = 255
    img[1:] = 90
    return write_tif(path, img, crs=crs, transform=transform)


def multiblock_scene(path: Path, *, size: int = 256, tile: int = 64) -> Path:
    """A tiled, DEFLATE GeoTIFF of ``(size / tile)**2`` internal tiles written in row-major
    order after the header (checked by :func:`tile_span`)."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
    return write_tif(path, img, blockxsize=tile, blockysize=tile)


def tile_span(path: Path, col: int, row: int) -> tuple[int, int]:
    """Byte offset and length of internal tile (col, row) of band 1."""
    with rasterio.open(path) as ds:
        off = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
        size = ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
    return int(off), int(size)


# --------------------------------------------------------------------------- bad scenes
def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def text_file(path: Path) -> Path:
    path.write_text("scene,x,y\n1,2,3\n")
    return path


def html_file(path: Path) -> Path:
    path.write_text("<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>")
    return path


def vrt_named_tif(path: Path, target: Path) -> Path:
    """VRT XML that would make GDAL read ``target`` (any file) if VRT were allowed."""
    path.write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="48"><SRS>EPSG:32633</SRS>'
        "<GeoTransform>500000,0.5,0,4650000,0,-0.5</GeoTransform>"
        + "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{target}</SourceFilename><SourceBand>{b}</SourceBand>'
            "</SimpleSource></VRTRasterBand>"
            for b in (1, 2, 3)
        )
        + "</VRTDataset>"
    )
    return path


def truncated_after(path: Path, src: Path, tile_row: int) -> Path:
    """``src`` cut 100 bytes into the first tile of ``tile_row``: the header and every tile
    before that row survive, later tiles are missing."""
    shutil.copy(src, path)
    off, _ = tile_span(path, 0, tile_row)
    os.truncate(path, off + 100)
    return path


def corrupt_tile(path: Path, src: Path, col: int, row: int, *, where: str = "middle") -> Path:
    """``src`` with 16 bytes overwritten inside the compressed tile (col, row): at the start
    (the zlib header) or in the middle of the DEFLATE stream."""
    shutil.copy(src, path)
    off, size = tile_span(path, col, row)
    pos = off if where == "start" else off + size // 2
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(b"\xff" * 16)
    return path


def sparse_scene(path: Path, width: int, height: int, *, block: int, sparse: bool = True, bands: int = 3) -> Path:
    """A GeoTIFF that declares ``width x height`` pixels but is tiny on disk.

    ``sparse=True``: no tile is written (GDAL ``SPARSE_OK``); ``sparse=False``: every tile is a
    real DEFLATE stream of zeros (a ~1000:1 decompression bomb).
    """
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype="uint8",
        crs=UTM33[0],
        transform=UTM33[1],
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
        BIGTIFF="YES",
    )
    if sparse:
        profile["SPARSE_OK"] = True
    with rasterio.open(path, "w", **profile):
        pass
    return path


def dangling_link(path: Path) -> Path:
    os.symlink(path.with_name("gone-" + path.name), path)
    return path


# --------------------------------------------------------------------------- model files
class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the marker file proves the code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def malicious_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle whose loading creates ``marker``."""
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=4))
    return path


def malicious_torch_zip(path: Path, marker: Path) -> Path:
    """A ``torch.save`` zip archive whose loading (without ``weights_only``) creates ``marker``."""
    import torch

    torch.save({"state_dict": _Payload(marker)}, path)
    return path


def payload_runs(path: Path, marker: Path) -> bool:
    """Sanity check in a throwaway process: does loading ``path`` naively create ``marker``?"""
    code = (
        "import pickle, sys, torch\np = sys.argv[1]\n"
        "try:\n    torch.load(p, weights_only=False)\n"
        "except Exception:\n    pickle.load(open(p, 'rb'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    return marker.exists()


def truncated_checkpoint(path: Path, good: Path) -> Path:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _rewrite(path: Path, tensors: dict, meta: dict) -> Path:
    """A checkpoint with these tensors and metadata and a *correct* content hash, so that only
    the property under test is wrong."""
    from safetensors.torch import save_file

    from geounet.checkpoint import METADATA_KEY, content_hash

    meta = {**meta, "hash": content_hash(tensors)}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return path


def wrong_shape_checkpoint(path: Path, good: Path, other: Path) -> Path:
    """``good``'s metadata over ``other``'s tensors (a different width)."""
    from safetensors.torch import load_file

    from geounet.checkpoint import read_metadata

    return _rewrite(path, load_file(str(other)), read_metadata(good).to_dict())


def nan_checkpoint(path: Path, good: Path) -> Path:
    """``good`` with NaN in one convolution weight."""
    import torch
    from safetensors.torch import load_file

    from geounet.checkpoint import read_metadata

    tensors = load_file(str(good))
    name = next(k for k, v in sorted(tensors.items()) if k.endswith("weight") and v.ndim == 4)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = torch.nan
    return _rewrite(path, tensors, read_metadata(good).to_dict())


# --------------------------------------------------------------------------- checks
def assert_no_finished_output(folder: Path) -> None:
    """A failed scene leaves nothing that looks finished: no scene.json, no outputs, no
    temporary files (the folder may be absent or empty)."""
    if not folder.exists():
        return
    left = sorted(p.name for p in folder.iterdir())
    assert left == [], f"failed scene left {left} in {folder}"


def assert_complete(folder: Path, names: tuple[str, ...] = SCENE_OUTPUTS) -> dict:
    """Every expected output is present, nothing temporary remains; returns scene.json."""
    present = sorted(p.name for p in folder.iterdir())
    assert present == sorted(names), present
    rec = json.loads((folder / "scene.json").read_text())
    assert rec["status"] == "success"
    return rec


def no_partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.startswith(".partial")]


def geounet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "geounet.cli", *args]


def run_cli(
    args: list[str], *, timeout: int = 240, prefix: list[str] | None = None, **kw: object
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*(prefix or []), *geounet_cmd(*args)], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, **kw
    )
