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

The plan is laid on a **model grid** (:class:`ModelGrid`): the scene's own pixels, or the
scene resampled to the pixel size the model was trained at. Its pixel ``(col, row)`` covers
scene pixels ``col / scale .. (col + 1) / scale``; every window of a plan on it is in
model-grid pixels, and the seam-free argument above holds on that grid unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.windows import Window

from geounet.compute import round_up
from geounet.errors import ConfigError

# A scene is resampled to the model's pixel size only when the two differ by more than this
# fraction; within it the scene's own grid is used, bit for bit (a UTM scene's ground pixel is
# its map pixel / 0.9996 at the central meridian: a model trained on 0.5 m UTM imagery must
# not resample other 0.5 m UTM scenes).
GSD_TOLERANCE = 0.02
# Scene and model pixel sizes further apart than this factor (either way) are warned about:
# the georeferencing is probably wrong, or the model sees far less (or blurrier) detail than
# it was trained on.
GSD_WARN_RATIO = 4.0


@dataclass(frozen=True)
class ModelGrid:
    """The pixel grid a scene is inferred on: its own, or resampled to the model's pixel size.

    ``scale`` is model-grid pixels per scene pixel along each axis (scene pixel size / model
    pixel size: a 0.5 m scene for a 1 m model has scale 0.5 and a grid half as wide). The grid
    is ``ceil(width * scale) x ceil(height * scale)`` px; its last row and column may reach
    past the scene, and those pixels are read as invalid (never part of a polygon).
    """

    width: int  # model-grid pixels
    height: int
    scale: float = 1.0  # model-grid pixels per scene pixel; 1.0: the scene's own grid
    scene_gsd_m: float | None = None  # the scene's ground pixel size, metres (None: unknown)
    model_gsd_m: float | None = None  # the model's training pixel size, metres (None: unknown)

    @property
    def resampled(self) -> bool:
        """True when blocks are read resampled (the scene's own grid otherwise)."""
        return self.scale != 1.0

    def scene_window(self, window: Window) -> Window:
        """The (fractional) scene window a model-grid ``window`` covers."""
        s = self.scale
        return Window(window.col_off / s, window.row_off / s, window.width / s, window.height / s)

    def transform(self, scene_transform: Affine) -> Affine:
        """Model-grid pixel -> world affine: the scene's, scaled by ``1 / scale``."""
        return scene_transform if not self.resampled else scene_transform @ Affine.scale(1.0 / self.scale)

    @property
    def warning(self) -> str | None:
        """Why the pixel sizes look wrong (more than :data:`GSD_WARN_RATIO` apart), or None."""
        if self.model_gsd_m is None:
            return None
        if self.scene_gsd_m is None:
            return (
                f"the scene's ground pixel size cannot be measured from its CRS; it is read at its own "
                f"pixels, not resampled to the model's {self.model_gsd_m:.4g} m: give it with --gsd / gsd_m"
            )
        ratio = self.scene_gsd_m / self.model_gsd_m
        if 1.0 / GSD_WARN_RATIO <= ratio <= GSD_WARN_RATIO:
            return None
        return (
            f"scene pixel size {self.scene_gsd_m:.4g} m is {max(ratio, 1 / ratio):.3g}x "
            f"{'larger' if ratio > 1 else 'smaller'} than the model's {self.model_gsd_m:.4g} m "
            f"(more than {GSD_WARN_RATIO:g}x): check the scene's georeferencing, or give its true "
            "pixel size with --gsd / gsd_m"
        )


def model_grid(
    width: int,
    height: int,
    scene_gsd_m: float | None,
    model_gsd_m: float | None,
    tolerance: float = GSD_TOLERANCE,
) -> ModelGrid:
    """The grid a ``width`` x ``height`` px scene of pixel size ``scene_gsd_m`` is inferred on
    by a model trained at ``model_gsd_m`` (metres; None: unknown, so the scene's own grid).

    Resamples only when the ratio differs from 1 by more than ``tolerance``.

    Example: a 200 x 150 px scene at 0.5 m for a 1 m model -> ``ModelGrid(100, 75, 0.5)``.
    """
    if scene_gsd_m is None or model_gsd_m is None or abs(scene_gsd_m / model_gsd_m - 1.0) <= tolerance:
        return ModelGrid(width, height, 1.0, scene_gsd_m, model_gsd_m)
    scale = scene_gsd_m / model_gsd_m
    # 1e-9: a size that is whole up to float rounding is not one pixel larger
    gw = max(1, math.ceil(width * scale - 1e-9))
    gh = max(1, math.ceil(height * scale - 1e-9))
    return ModelGrid(gw, gh, scale, scene_gsd_m, model_gsd_m)


@dataclass(frozen=True)
class Tile:
    """One model input. Windows are in model-grid pixels (may reach into the padding)."""

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

    width: int  # of the grid the plan is on (model-grid pixels)
    height: int
    tile_size: int  # the largest tile side allowed, px
    halo: int
    multiple: int
    core_size: int  # tile_size - 2 * halo: the widest core an interior tile could keep, px
    tile_shape: tuple[int, int]  # (rows, cols) of every tile input in this plan (<= tile_size)
    blocks: tuple[Block, ...]
    grid: ModelGrid | None = None  # the grid the windows are on; None: the scene's own pixels

    @property
    def model_grid(self) -> ModelGrid:
        """The grid the plan's windows are on (the scene's own when none was given)."""
        return self.grid if self.grid is not None else ModelGrid(self.width, self.height)

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
    grid: ModelGrid | None = None,
) -> TilingPlan:
    """Cut a ``width`` x ``height`` scene into blocks of tiles.

    Args:
        width, height: size in pixels of the grid the tiles are laid on (``grid``'s).
        tile_size: largest model input side in pixels; a multiple of ``multiple``.
        halo: context pixels kept around each core; a multiple of ``multiple``.
        multiple: the model's size multiple, ``2**depth``.
        tiles_per_block: tiles per block side.
        grid: the model grid ``width`` x ``height`` describes, kept in the plan; None: the
            scene's own pixels.

    Returns:
        The plan; its blocks' cores tile the scene exactly once. Costs O(number of tiles).

    Raises:
        ConfigError: sizes that are not multiples of ``multiple`` or leave no core.
    """
    if grid is not None and (grid.width, grid.height) != (width, height):
        raise ValueError(f"plan size {width}x{height} differs from its grid's {grid.width}x{grid.height}")
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
        grid=grid,
    )


def suggest_tiles_per_block(plan_core: int, target_block_px: int = 2048) -> int:
    """Tiles per block side so that a block core is about ``target_block_px`` pixels wide."""
    return max(1, math.floor(target_block_px / max(plan_core, 1)))
