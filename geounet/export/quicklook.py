"""The quicklook's picture, built from the blocks the workers already read.

The quicklook is the scene averaged over cells of ``factor x factor`` pixels. Each block
task sums the valid pixels of its core per cell (:func:`block_thumbnail`) and the client
adds the parts into a :class:`ThumbnailCanvas` of the quicklook's size, so the scene is
never read a second time (a decimated re-read cost 0.6 s of a 4096^2 px scene's 1.5 s
write tail on 2 cores, and grows with the scene). A cell that straddles a block edge gets
its sums from both blocks: the average is exact, whatever the block grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image

from geounet.atomic import atomic_output


def thumbnail_factor(width: int, height: int, size: int) -> int:
    """Scene pixels per quicklook pixel (per side) so the longest side is at most ``size``."""
    if size < 1:
        raise ValueError(f"quicklook size must be >= 1 px, got {size}")
    return max(1, math.ceil(max(width, height) / size))


def thumbnail_shape(width: int, height: int, factor: int) -> tuple[int, int]:
    """(rows, cols) of the quicklook for a scene and a cell factor."""
    return math.ceil(height / factor), math.ceil(width / factor)


@dataclass
class ThumbnailPart:
    """Per-cell sums of one block's valid pixels: small, sent from worker to client."""

    row: int  # first quicklook row covered
    col: int  # first quicklook column covered
    sums: np.ndarray  # (3, rows, cols) float32: sum of each display band over valid pixels
    counts: np.ndarray  # (rows, cols) uint32: number of valid pixels


def display_bands(raw: np.ndarray) -> np.ndarray:
    """The three bands shown: the first three of the model's input, or one band repeated."""
    return raw[:3] if raw.shape[0] >= 3 else np.repeat(raw[:1], 3, axis=0)


def _cell_sums(a: np.ndarray, row_off: int, col_off: int, factor: int) -> np.ndarray:
    """Sum ``a`` (k, h, w), whose top-left pixel is scene pixel (``row_off``, ``col_off``),
    over the ``factor x factor`` cells of the scene it overlaps: (k, rows, cols).

    The core is copied into a zeroed buffer aligned to the cell grid and summed by
    reshaping (3x faster than ``np.add.reduceat``, which is strided along rows). Integer
    pixels are summed exactly (in 64 bits unless 32 cannot overflow), floats in float32.
    """
    k, h, w = a.shape
    r, c = row_off % factor, col_off % factor  # offset of the core in its first cell
    rows, cols = -(-(r + h) // factor), -(-(c + w) // factor)
    buf = np.zeros((k, rows * factor, cols * factor), a.dtype)
    buf[:, r : r + h, c : c + w] = a
    if a.dtype.kind == "f":
        acc: type = np.float32
    else:
        acc = np.uint32 if a.dtype.kind in "bu" and a.dtype.itemsize == 1 and factor * factor < 2**24 else np.int64
    part = buf.reshape(k, rows, factor, cols * factor).sum(axis=2, dtype=acc)
    return part.reshape(k, rows, cols, factor).sum(axis=3, dtype=acc)


def block_thumbnail(rgb: np.ndarray, valid: np.ndarray, *, row_off: int, col_off: int, factor: int) -> ThumbnailPart:
    """Cell sums of a block core ``rgb`` (3, h, w) whose top-left scene pixel is
    (``row_off``, ``col_off``); pixels where ``valid`` is False (nodata) count for nothing.

    Cost: a copy and two summing passes over the core (about 2.5 ms for 3 x 800^2 uint8 px on
    this project's CPU).
    """
    h, w = valid.shape
    if rgb.shape[1:] != (h, w):
        raise ValueError(f"rgb {rgb.shape} and valid {valid.shape} differ in size")
    q0, p0 = row_off // factor, col_off // factor  # first quicklook row and column covered
    all_valid = bool(valid.all())
    values = rgb
    if values.dtype.kind == "f":
        values = np.nan_to_num(values)
    if not all_valid:
        values = np.where(valid, values, values.dtype.type(0))
    sums = _cell_sums(values, row_off, col_off, factor).astype(np.float32)
    if all_valid:  # pixels per cell, from the cell edges
        heights = np.diff(np.clip(np.arange(q0, q0 + sums.shape[1] + 1) * factor - row_off, 0, h))
        widths = np.diff(np.clip(np.arange(p0, p0 + sums.shape[2] + 1) * factor - col_off, 0, w))
        counts = np.outer(heights, widths).astype(np.uint32)
    else:
        counts = _cell_sums(valid.view(np.uint8)[None], row_off, col_off, factor)[0].astype(np.uint32)
    return ThumbnailPart(row=q0, col=p0, sums=sums, counts=counts)


class ThumbnailCanvas:
    """Accumulates :class:`ThumbnailPart` s into the quicklook's mean picture.

    Memory: 16 bytes per quicklook pixel (16 MiB at the default 1024 px), whatever the scene.
    """

    def __init__(self, width: int, height: int, factor: int) -> None:
        self.factor = factor
        self.scene_shape = (height, width)
        rows, cols = thumbnail_shape(width, height, factor)
        self.sums = np.zeros((3, rows, cols), np.float32)
        self.counts = np.zeros((rows, cols), np.uint32)

    def add(self, part: ThumbnailPart) -> None:
        rows, cols = part.counts.shape
        self.sums[:, part.row : part.row + rows, part.col : part.col + cols] += part.sums
        self.counts[part.row : part.row + rows, part.col : part.col + cols] += part.counts

    def image(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean of each display band per cell (3, rows, cols) and the cells holding any valid pixel."""
        valid = self.counts > 0
        mean = self.sums / np.maximum(self.counts, 1).astype(np.float32)
        return mean, valid


# Vertices handled per step when drawing outlines (bounds the temporary arrays: a 12000^2 px
# scene's road network has 1.5 M vertices in one polygon).
OUTLINE_CHUNK_VERTICES = 200_000


def outline_mask(
    geoms: Sequence[Any] | np.ndarray, shape: tuple[int, int], *, factor: int, tolerance_px: float = 0.0
) -> np.ndarray:
    """Quicklook pixels crossed by the outlines (exterior and hole rings) of ``geoms``, or by
    the lines themselves where ``geoms`` are lines (road centerlines).

    ``geoms`` are polygons or lines in scene pixel coordinates (x right, y down), as post-processing
    keeps them beside the world ones (no CRS -> pixel round trip); quicklook pixel (r, c)
    covers scene pixels ``[c * factor, (c + 1) * factor)``
    and likewise for rows.
    Outlines are first simplified by ``tolerance_px`` quicklook pixels (detail finer than a
    quicklook pixel cannot show), then every ring segment is sampled at least twice per
    quicklook pixel and each sample marks the pixel it falls in. All in numpy: no Python
    object per vertex (``rasterio.features.rasterize`` builds one per vertex through
    ``__geo_interface__``: 0.5 s and about 240 MB for a 12000^2 px scene's outlines).

    Returns:
        ``shape`` bool array, True on outline pixels.
    """
    out = np.zeros(shape, dtype=bool)
    arr = np.asarray(geoms, dtype=object)
    if arr.size == 0:
        return out
    rows, cols = shape
    scale = 1.0 / factor
    # chunks of whole geometries holding about OUTLINE_CHUNK_VERTICES vertices each
    ends = np.cumsum(shapely.get_num_coordinates(arr))
    cuts = np.searchsorted(ends, np.arange(OUTLINE_CHUNK_VERTICES, int(ends[-1]), OUTLINE_CHUNK_VERTICES))
    for chunk in np.split(arr, np.unique(cuts + 1)):
        if len(chunk) == 0:
            continue
        chunk = chunk[~shapely.is_empty(chunk)]
        polygonal = np.isin(shapely.get_type_id(chunk), (3, 6))  # Polygon, MultiPolygon: their rings
        lines = shapely.get_parts(np.where(polygonal, shapely.boundary(chunk), chunk))
        if tolerance_px > 0:
            lines = shapely.simplify(lines, tolerance_px * factor, preserve_topology=False)
        xy, index = shapely.get_coordinates(lines, return_index=True)
        if len(xy) == 0:
            continue
        xy *= scale
        same = index[1:] == index[:-1]  # consecutive vertices of one line: a segment
        p0, step = xy[:-1][same], np.diff(xy, axis=0)[same]
        steps = np.ceil(2.0 * np.abs(step).max(axis=1)).astype(np.int64)  # samples after the start
        first = np.cumsum(steps + 1) - (steps + 1)
        seg = np.repeat(np.arange(len(p0)), steps + 1)
        t = (np.arange(len(seg)) - first[seg]) / np.maximum(steps, 1)[seg]
        pts = p0[seg] + step[seg] * t[:, None]
        c = np.clip(np.floor(pts[:, 0]).astype(np.int64), 0, cols - 1)
        r = np.clip(np.floor(pts[:, 1]).astype(np.int64), 0, rows - 1)
        out[r, c] = True
    return out


# Outlines on a downsampled quicklook are simplified to this tolerance, in quicklook pixels.
QUICKLOOK_TOLERANCE_PX = 0.25
# zlib level of quicklook.png: level 1 encodes a 1024^2 px picture in 0.09 s instead of 0.27 s
# (level 6) for a file 2 % larger.
PNG_LEVEL = 1
# Outline colours for the quicklook, by class index (RGB).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48),
    (255, 214, 0),
    (0, 200, 255),
    (170, 80, 255),
    (60, 255, 90),
    (255, 130, 0),
)
# Colour of road centerline graphs on the quicklook (RGB): drawn over the class outlines.
CENTERLINE_COLOUR = (255, 0, 255)
# Pixels sampled (evenly spaced) for the quicklook's 2-98 % contrast stretch.
STRETCH_SAMPLE = 250_000


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each band stretched linearly from its 2nd to its 98th percentile over the valid
    cells (estimated from an even sample of at most :data:`STRETCH_SAMPLE` of them)."""
    out = np.zeros(rgb.shape, np.uint8)
    for i, band in enumerate(rgb.astype(np.float32)):
        vals = band[valid] if valid.any() else band.ravel()
        vals = vals[:: max(1, vals.size // STRETCH_SAMPLE)]
        lo, hi = np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        band -= lo
        band *= 255.0 / (hi - lo)
        np.clip(band, 0, 255, out=band)
        out[i] = band
    return out


def write_quicklook(
    canvas: ThumbnailCanvas,
    layers: Sequence[Sequence[Any] | np.ndarray],
    final: Path,
    centerlines: Sequence[Any] | np.ndarray = (),
) -> Path:
    """Downsampled RGB (or grey) view with each class's outlines in :data:`CLASS_COLOURS`
    and the road centerline graphs over them in :data:`CENTERLINE_COLOUR`.

    ``canvas`` holds the scene's cell averages, gathered from the blocks the workers read
    (the scene is not read again); ``layers[k]`` holds class k's polygons and
    ``centerlines`` every linear class's graph edges, in scene pixel coordinates. Cells
    without a valid pixel are black.
    """
    mean, valid = canvas.image()
    img = _stretch(mean, valid)
    img[:, ~valid] = 0
    tolerance = QUICKLOOK_TOLERANCE_PX if canvas.factor > 1 else 0.0
    for k, geoms in enumerate(layers):
        edge = outline_mask(geoms, valid.shape, factor=canvas.factor, tolerance_px=tolerance)
        colour = CLASS_COLOURS[k % len(CLASS_COLOURS)]
        for c in range(3):
            img[c][edge] = colour[c]
    if len(centerlines):
        edge = outline_mask(centerlines, valid.shape, factor=canvas.factor, tolerance_px=tolerance)
        for c in range(3):
            img[c][edge] = CENTERLINE_COLOUR[c]
    with atomic_output(final) as tmp:
        Image.fromarray(np.moveaxis(img, 0, -1)).save(tmp, format="PNG", compress_level=PNG_LEVEL)
    return final
