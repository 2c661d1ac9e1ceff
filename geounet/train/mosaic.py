"""Chips that touch, read as one scene (``data.sources[].mosaic``).

Chip data sets (XYZ tiles of OpenAerialMap, 256 px crops of a survey) cut one orthophoto into
pieces a few dozen metres wide. Read one by one, a training window at the model's pixel size
holds one chip and a frame of nodata around it, always the same framing; read as one mosaic,
windows fall anywhere on the ground the chips cover, with the chips' neighbours as context.

Steps: :func:`plan_mosaics` (pure) groups the chips that share a CRS, pixel size, pixel grid,
bands, dtype and area, and joins those whose footprints touch or overlap into connected groups
(each chip on whole pixels of its group's grid); :func:`write_mosaic` writes a group of two or
more chips as one tiled GeoTIFF, chip by chip (never the whole mosaic in memory), the chips'
valid pixels as its internal mask, so the gaps between chips are invalid (not scored in
training) exactly as nodata around a lone chip is. The file is named by a digest of its chips'
paths, sizes, modification times and places, so a later run with the same chips reuses it
(mosaics of chips that changed since stay in the folder until it is deleted).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.windows import Window

from geounet.atomic import atomic_output
from geounet.scene.read import open_with

__all__ = ["Chip", "MosaicPlan", "plan_mosaics", "mosaic_path", "write_mosaic"]

# A chip is on its group's grid when its offset is within this many pixels of a whole number.
GRID_TOLERANCE_PX = 1e-3
TIFF_PROFILE = {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}


@dataclass(frozen=True)
class Chip:
    """What a chip's header says, and the area it belongs to."""

    path: Path
    crs_wkt: str
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    area: str


@dataclass(frozen=True)
class MosaicPlan:
    """Chips joined into one raster: chip ``k`` lies at ``offsets[k]`` (row, col) of it."""

    chips: tuple[Chip, ...]
    offsets: tuple[tuple[int, int], ...]
    transform: Affine
    width: int
    height: int

    @property
    def first(self) -> Chip:
        return self.chips[0]


def _grid_key(chip: Chip) -> tuple[object, ...] | None:
    """Chips with the same key may share a grid; None: rotated or sheared (never joined)."""
    t = chip.transform
    if t.b != 0 or t.d != 0:
        return None
    phase_x = round(((t.c / t.a) % 1.0) / GRID_TOLERANCE_PX) % round(1 / GRID_TOLERANCE_PX)
    phase_y = round(((t.f / t.e) % 1.0) / GRID_TOLERANCE_PX) % round(1 / GRID_TOLERANCE_PX)
    return (chip.crs_wkt, round(t.a, 9), round(t.e, 9), phase_x, phase_y, chip.count, chip.dtype, chip.area)


def _components(rects: Sequence[tuple[int, int, int, int]]) -> list[list[int]]:
    """Indexes of ``(row0, col0, row1, col1)`` rectangles joined where they share an edge or
    overlap (corners alone do not join), as groups in the order of their first member."""
    parent = list(range(len(rects)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(rects)), key=lambda i: rects[i][1])
    for n, i in enumerate(order):  # sweep along columns: only rectangles that reach i's columns
        r0, c0, r1, c1 = rects[i]
        for j in order[n + 1 :]:
            s0, d0, s1, d1 = rects[j]
            if d0 > c1:
                break
            rows = min(r1, s1) - max(r0, s0)
            cols = min(c1, d1) - max(c0, d0)
            if (rows > 0 and cols >= 0) or (rows >= 0 and cols > 0):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(rects)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def plan_mosaics(chips: Sequence[Chip]) -> list[MosaicPlan]:
    """Group ``chips`` into mosaics of touching chips; a chip that touches none is a plan of one.

    Plans come in the order of their first chip in ``chips``; chips keep their order within a
    plan (where chips overlap, the later one's pixels are written last).
    """
    by_key: dict[object, list[int]] = {}
    for i, chip in enumerate(chips):
        key = _grid_key(chip)
        by_key.setdefault(key if key is not None else ("alone", i), []).append(i)
    plans: list[tuple[int, MosaicPlan]] = []
    for members in by_key.values():
        t0 = chips[members[0]].transform
        rects = []
        for i in members:
            c = chips[i]
            col = round((c.transform.c - t0.c) / t0.a)
            row = round((c.transform.f - t0.f) / t0.e)
            rects.append((row, col, row + c.height, col + c.width))
        for group in _components(rects):
            row0 = min(rects[g][0] for g in group)
            col0 = min(rects[g][1] for g in group)
            row1 = max(rects[g][2] for g in group)
            col1 = max(rects[g][3] for g in group)
            plans.append(
                (
                    members[group[0]],
                    MosaicPlan(
                        chips=tuple(chips[members[g]] for g in group),
                        offsets=tuple((rects[g][0] - row0, rects[g][1] - col0) for g in group),
                        transform=t0 @ Affine.translation(col0, row0),
                        width=col1 - col0,
                        height=row1 - row0,
                    ),
                )
            )
    return [p for _, p in sorted(plans, key=lambda ip: ip[0])]


def mosaic_path(plan: MosaicPlan, folder: Path, source: str) -> Path:
    """Where ``plan``'s mosaic is kept: ``<folder>/<source>-<first chip>-<n>chips-<digest>.tif``,
    the digest over the chips' paths, sizes, modification times and places."""
    h = hashlib.sha256()
    for chip, off in zip(plan.chips, plan.offsets):
        st = os.stat(chip.path)
        h.update(f"{chip.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{off}\n".encode())
    h.update(repr(tuple(plan.transform)).encode())
    return folder / f"{source}-{plan.first.path.stem}-{len(plan.chips)}chips-{h.hexdigest()[:12]}.tif"


def write_mosaic(plan: MosaicPlan, path: Path, drivers: tuple[str, ...]) -> Path:
    """Write ``plan`` to ``path`` (atomically; kept as it is when it exists): the chips' pixels at
    their offsets, their valid pixels as the internal mask, everything between them invalid.

    Raises:
        RasterioError: a chip cannot be read.
        OutputError: the folder cannot take the file.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    first = plan.first
    with (
        atomic_output(path) as tmp,
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK="YES", GDAL_DISABLE_READDIR_ON_OPEN="TRUE"),
        rasterio.open(
            tmp,
            "w",
            width=plan.width,
            height=plan.height,
            count=first.count,
            dtype=first.dtype,
            crs=rasterio.crs.CRS.from_wkt(first.crs_wkt),
            transform=plan.transform,
            **TIFF_PROFILE,
        ) as dst,
    ):
        # blocks no chip writes stay unwritten: their pixels and mask read as 0 (invalid)
        for chip, (row, col) in zip(plan.chips, plan.offsets):
            with open_with(str(chip.path), drivers) as src:
                pixels = src.read()
                valid = src.read_masks().min(axis=0)  # valid in every band
            window = Window(col, row, chip.width, chip.height)
            dst.write(pixels, window=window)
            dst.write_mask(valid, window=window)
    return path
