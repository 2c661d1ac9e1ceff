"""Pure planning of tiles and blocks over a scene (no I/O).

Vocabulary:

* a **tile** is one model input window of at most ``tile_size`` pixels per side (the fewest
  tiles that cover the scene, each as small as that count allows); only its *core* (the
  tile minus a ``halo`` on each side that is not the scene's border) is kept;
* a **block** is one Dask task: a group of ``tiles_per_block**2`` neighbouring tiles whose
  union of inputs is read from the file in one windowed read.

Why it is seam-free: the model pads its input on the right and bottom with zeros up to a
multiple of ``2**depth`` (``multiple``). Tiling works on that same *padded* scene
(``ceil(width / multiple) * multiple`` pixels wide): every tile origin is a multiple of
``multiple`` (so max-pooling sees the same grid as on the whole scene), tiles never extend
beyond the padded scene (they are shifted inward at its edges, so the scene border is
the tensor border exactly as in whole-scene inference), and each core keeps ``halo``
pixels of context on every side that is not the padded scene's border. With a halo of at
least the model's receptive-field radius the stitched probabilities equal whole-scene
inference up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.windows import Window

from geounet.compute import round_up
from geounet.errors import ConfigError


@dataclass(frozen=True)
class Tile:
    """One model input. Windows are in scene pixel coordinates (may reach into the padding)."""

    read: Window  # model input, inside the padded scene
    core: Window  # pixels kept, inside the real scene


@dataclass(frozen=True)
class Block:
    """One Dask task: a few tiles read with one windowed read."""

    index: int
    grid: tuple[int, int]  # (row, col) of the block in the block grid
    core: Window  # union of tile cores: tiles the real scene without overlap
    read: Window  # union of tile inputs: what the worker reads (boundless beyond the scene)
    tiles: tuple[Tile, ...]

    @property
    def pixels(self) -> int:
        return int(self.core.width * self.core.height)


@dataclass(frozen=True)
class TilingPlan:
    """All blocks of one scene and the numbers they were derived from."""

    width: int
    height: int
    tile_size: int  # the largest tile side allowed, px
    halo: int
    multiple: int
    core_size: int  # tile_size - 2 * halo: the widest core an interior tile could keep, px
    tile_shape: tuple[int, int]  # (rows, cols) of every tile input in this plan (<= tile_size)
    blocks: tuple[Block, ...]

    @property
    def n_tiles(self) -> int:
        return sum(len(b.tiles) for b in self.blocks)

    @property
    def overhead(self) -> float:
        """Model pixels computed per scene pixel (1.0 = no halo cost)."""
        th, tw = self.tile_shape
        return self.n_tiles * th * tw / float(self.width * self.height)


def tiles_along(padded: int, tile: int, halo: int) -> int:
    """Fewest tiles of at most ``tile`` px that cover ``padded`` px with ``halo`` px of context
    inside every tile edge except the scene's borders: the first and last tiles need context
    on one side only, so ``n`` tiles cover ``n * (tile - 2 * halo) + 2 * halo`` px."""
    if padded <= tile:
        return 1
    return -(-(padded - 2 * halo) // (tile - 2 * halo))


def _axis(length: int, tile: int, halo: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (read_start, read_size, core_start, core_stop).

    The fewest tiles (:func:`tiles_along`), each as small as that count allows (a multiple of
    ``multiple``, at most ``tile``), with read origins spread evenly over the padded axis and
    each core boundary halfway through the overlap of its two tiles. Cutting the same count
    of cores at ``tile - 2 * halo`` px from the origin instead left a sliver of core in the
    last tile (a 4096 px axis: 6 tiles of 1024 px where 5 of 1008 px suffice, 1.49x the work).
    """
    padded = round_up(length, multiple)
    n = tiles_along(padded, tile, halo)
    if n == 1:
        return [(0, padded, 0, length)]
    size = min(tile, round_up(-(-(padded - 2 * halo) // n) + 2 * halo, multiple))
    # starts on the 2**depth grid; consecutive starts are at most size - 2 * halo apart
    # (that gap is a multiple of `multiple` and (padded - size) / (n - 1) does not exceed it)
    starts = [(i * (padded - size) // (n - 1)) // multiple * multiple for i in range(n)]
    cuts = [0] + [min(length, (a + b + size) // 2) for a, b in zip(starts, starts[1:])] + [length]
    return [(s, size, c0, c1) for s, c0, c1 in zip(starts, cuts, cuts[1:]) if c1 > c0]


def plan_tiles(
    width: int,
    height: int,
    *,
    tile_size: int,
    halo: int,
    multiple: int,
    tiles_per_block: int = 1,
) -> TilingPlan:
    """Cut a ``width`` x ``height`` scene into blocks of tiles.

    Args:
        width, height: scene size in pixels.
        tile_size: largest model input side in pixels; a multiple of ``multiple``.
        halo: context pixels kept around each core; a multiple of ``multiple``.
        multiple: the model's size multiple, ``2**depth``.
        tiles_per_block: tiles per block side.

    Returns:
        The plan; its blocks' cores tile the scene exactly once. Costs O(number of tiles).

    Raises:
        ConfigError: sizes that are not multiples of ``multiple`` or leave no core.
    """
    if width < 1 or height < 1:
        raise ConfigError(f"scene size {width}x{height} must be at least 1x1 pixels")
    if multiple < 1 or tile_size % multiple:
        raise ConfigError(
            f"tile_size {tile_size} must be a multiple of {multiple} (2**depth of the model); "
            f"try {round_up(tile_size, multiple)}"
        )
    if halo % multiple:
        raise ConfigError(
            f"halo {halo} must be a multiple of {multiple} (2**depth of the model); try {round_up(halo, multiple)}"
        )
    core = tile_size - 2 * halo
    if core < multiple:
        raise ConfigError(
            f"tile_size {tile_size} with halo {halo} leaves a core of {core} px per tile; "
            f"use tile_size >= {2 * halo + 4 * multiple} or a smaller halo"
        )
    cols = _axis(width, tile_size, halo, multiple)
    rows = _axis(height, tile_size, halo, multiple)
    blocks: list[Block] = []
    k = tiles_per_block
    for bi, r0 in enumerate(range(0, len(rows), k)):
        for bj, c0 in enumerate(range(0, len(cols), k)):
            tiles = []
            for rs, rsize, rc0, rc1 in rows[r0 : r0 + k]:
                for cs, csize, cc0, cc1 in cols[c0 : c0 + k]:
                    tiles.append(
                        Tile(
                            read=Window(cs, rs, csize, rsize),
                            core=Window(cc0, rc0, cc1 - cc0, rc1 - rc0),
                        )
                    )
            row_r = rows[r0 : r0 + k]
            col_r = cols[c0 : c0 + k]
            core_w = Window(col_r[0][2], row_r[0][2], col_r[-1][3] - col_r[0][2], row_r[-1][3] - row_r[0][2])
            read_c0 = min(c[0] for c in col_r)
            read_r0 = min(r[0] for r in row_r)
            read_w = Window(
                read_c0,
                read_r0,
                max(c[0] + c[1] for c in col_r) - read_c0,
                max(r[0] + r[1] for r in row_r) - read_r0,
            )
            blocks.append(Block(len(blocks), (bi, bj), core_w, read_w, tuple(tiles)))
    return TilingPlan(
        width=width,
        height=height,
        tile_size=tile_size,
        halo=halo,
        multiple=multiple,
        core_size=core,
        tile_shape=(rows[0][1], cols[0][1]),
        blocks=tuple(blocks),
    )


def suggest_tiles_per_block(plan_core: int, target_block_px: int = 2048) -> int:
    """Tiles per block side so that a block core is about ``target_block_px`` pixels wide."""
    return max(1, math.floor(target_block_px / max(plan_core, 1)))
