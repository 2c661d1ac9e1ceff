"""Polygonize thresholded blocks on workers and merge them exactly across block seams.

The scene is processed block by block (see DESIGN.md, steps 4-5). Each worker turns the
mask of its block's *core* into polygons with :func:`polygonize_block`; the client joins
the pieces of polygons cut by internal block edges with :func:`merge_seams`. The result
equals polygonizing the whole mask at once with ``rasterio.features.shapes(...,
connectivity=4)``: the same polygons with the same holes, the same pixel counts and, up to
float rounding, the same probability sums.

Everything here works in **scene pixel coordinates**: x is the column, y the row, and every
vertex is an integer-valued float. Seams therefore match exactly whatever the scene's
geotransform; :func:`geounet.polygons.to_world` converts to the scene CRS afterwards.

How the merge stays cheap: a worker records, for each internal edge of its core, the label
of every pixel along that edge (a 1-D "strip"). On the client, strips of neighbouring
blocks are matched by global pixel position; two pieces belong to one polygon exactly when
foreground pixels face each other across a seam (4-connectivity: pixels that touch only at
a corner stay apart). Connected groups are found with a sparse connected-components pass
and only those groups are unioned; every other polygon passes through untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["BlockPolygons", "Polygons", "merge_seams", "polygonize_block"]

#: Names of the four sides of a block core, as keys of :attr:`BlockPolygons.edges`.
SIDES = ("top", "bottom", "left", "right")

_EMPTY_GEOMS = np.empty(0, dtype=object)


def _pack_geoms(geoms: np.ndarray) -> tuple[Any, ...]:
    """Geometries -> compact arrays for pickling (integer pixel vertices fit in int32)."""
    if len(geoms) == 0:
        return ("empty",)
    _, coords, (ring_offsets, geom_offsets) = shapely.to_ragged_array(geoms)
    if np.array_equal(coords, np.rint(coords)) and np.abs(coords).max() < 2**31:
        coords = coords.astype(np.int32)
    return ("ragged", coords, ring_offsets.astype(np.int64), geom_offsets.astype(np.int64))


def _unpack_geoms(packed: tuple[Any, ...]) -> np.ndarray:
    if packed[0] == "empty":
        return _EMPTY_GEOMS.copy()
    _, coords, ring_offsets, geom_offsets = packed
    return shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords.astype(np.float64), (ring_offsets, geom_offsets)
    )


@dataclass(eq=False)
class BlockPolygons:
    """The polygons of one class in one block's core, in scene pixel coordinates.

    Small and picklable: it travels from a Dask worker to the client. Geometries are
    pickled as one int32 vertex array plus offsets, not as one object per polygon.

    Attributes:
        row_off, col_off: position of the core's top-left pixel in the scene.
        height, width: size of the core in pixels.
        scene_height, scene_width: size of the scene in pixels.
        geoms: ``(n,)`` object array of :class:`shapely.Polygon`; ``geoms[k - 1]`` is the
            polygon of label ``k``.
        pixel_count: ``(n,)`` int64, pixels per polygon.
        prob_sum: ``(n,)`` float64, sum of the probability over each polygon's pixels (NaN
            where no probability was given).
        edges: for each *internal* side of the core (a side not on the scene border), the
            label of each pixel along it (``0`` = background), int32, ordered left to right
            (top/bottom) or top to bottom (left/right).
        touches_edge: ``(n,)`` bool, whether the polygon has a pixel on an internal side.
    """

    row_off: int
    col_off: int
    height: int
    width: int
    scene_height: int
    scene_width: int
    geoms: np.ndarray = field(repr=False)
    pixel_count: np.ndarray = field(repr=False)
    prob_sum: np.ndarray = field(repr=False)
    edges: dict[str, np.ndarray] = field(repr=False)
    touches_edge: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.geoms)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["geoms"] = _pack_geoms(self.geoms)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["geoms"] = _unpack_geoms(state["geoms"])
        self.__dict__.update(state)


@dataclass(eq=False)
class Polygons:
    """Polygons of one class over a whole scene, in scene pixel coordinates.

    Ordered by the position of each polygon's first pixel in raster order (top row first,
    then leftmost), which does not depend on the block grid.

    Attributes:
        geoms: ``(n,)`` object array of :class:`shapely.Polygon`.
        pixel_count: ``(n,)`` int64.
        prob_sum: ``(n,)`` float64.
    """

    geoms: np.ndarray = field(repr=False)
    pixel_count: np.ndarray = field(repr=False)
    prob_sum: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.geoms)

    def __repr__(self) -> str:
        return f"Polygons(n={len(self)}, pixels={int(self.pixel_count.sum())})"


# --------------------------------------------------------------------------- worker side


def _features_to_polygons(features: Iterable[tuple[dict, float]], n: int) -> np.ndarray:
    """GeoJSON-like ``(geometry, label)`` pairs from ``shapes`` -> polygons indexed by label - 1.

    Builds every polygon in one vectorized call (``from_ragged_array``) instead of one
    ``shapely.geometry.shape`` call per feature, which is several times slower.
    """
    coords: list[tuple[float, float]] = []
    ring_lengths: list[int] = []
    rings_per_polygon: list[int] = []
    labels: list[float] = []
    for geometry, value in features:
        rings = geometry["coordinates"]
        rings_per_polygon.append(len(rings))
        for ring in rings:
            ring_lengths.append(len(ring))
            coords.extend(ring)
        labels.append(value)
    if len(labels) != n:
        raise RuntimeError(f"polygonize produced {len(labels)} polygons for {n} labelled regions")
    if n == 0:
        return _EMPTY_GEOMS.copy()
    xy = np.array(coords, dtype=np.float64)
    ring_offsets = np.zeros(len(ring_lengths) + 1, dtype=np.int64)
    np.cumsum(ring_lengths, out=ring_offsets[1:])
    geom_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(rings_per_polygon, out=geom_offsets[1:])
    polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (ring_offsets, geom_offsets))
    out = np.empty(n, dtype=object)
    out[np.asarray(labels, dtype=np.int64) - 1] = polys
    return out


def polygonize_block(
    mask: np.ndarray,
    prob: np.ndarray | None = None,
    *,
    row_off: int,
    col_off: int,
    scene_height: int,
    scene_width: int,
) -> BlockPolygons:
    """Polygonize one class of one block's core (runs on a worker).

    Steps: label 4-connected foreground regions (``scipy.ndimage.label``); polygonize the
    label image with ``rasterio.features.shapes`` (4-connectivity, so one polygon per
    label) translated to the core's place in the scene; count pixels and sum probabilities
    per label; keep the label strip along each internal side of the core.

    Cost: one labelling pass and one polygonize pass over the core, one pass over its
    foreground pixels for the probability sums; extra memory is one int32 label image of
    the core's size.

    Args:
        mask: ``(h, w)`` foreground of the core (bool, or anything where non-zero means
            foreground).
        prob: ``(h, w)`` probability of the class, or None (then ``prob_sum`` is NaN).
        row_off, col_off: the core's top-left pixel in the scene.
        scene_height, scene_width: scene size in pixels; sides of the core on the scene
            border are not internal edges.

    Raises:
        ValueError: the mask is not 2-D, ``prob`` has another shape, or the core does not
            lie inside the scene.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (rows, columns), got shape {mask.shape}")
    if mask.dtype != np.bool_:
        mask = mask != 0
    h, w = mask.shape
    if prob is not None:
        prob = np.asarray(prob)
        if prob.shape != mask.shape:
            raise ValueError(f"prob has shape {prob.shape}, expected the mask's shape {mask.shape}")
    row_off, col_off = int(row_off), int(col_off)
    scene_height, scene_width = int(scene_height), int(scene_width)
    if row_off < 0 or col_off < 0 or row_off + h > scene_height or col_off + w > scene_width:
        raise ValueError(
            f"block core rows {row_off}:{row_off + h}, columns {col_off}:{col_off + w} "
            f"does not fit in a scene of {scene_height} x {scene_width} pixels"
        )

    if h == 0 or w == 0:
        labels, n = np.zeros((h, w), dtype=np.int32), 0
    else:
        labels, n = ndimage.label(mask)  # default structure = 4-connectivity
    if n:
        features = shapes(
            labels,
            mask=mask,
            connectivity=4,
            transform=Affine.translation(col_off, row_off),
        )
        geoms = _features_to_polygons(features, n)
        # Each polygon's area in pixel units is its pixel count, exactly (integer vertices).
        pixel_count = np.rint(shapely.area(geoms)).astype(np.int64)
        if prob is None:
            prob_sum = np.full(n, np.nan)
        else:
            prob_sum = np.bincount(labels[mask], weights=prob[mask], minlength=n + 1)[1:]
    else:
        geoms = _EMPTY_GEOMS.copy()
        pixel_count = np.zeros(0, dtype=np.int64)
        prob_sum = np.zeros(0, dtype=np.float64)

    strips = {
        "top": (row_off > 0, labels[0, :] if h else None),
        "bottom": (row_off + h < scene_height, labels[-1, :] if h else None),
        "left": (col_off > 0, labels[:, 0] if w else None),
        "right": (col_off + w < scene_width, labels[:, -1] if w else None),
    }
    edges: dict[str, np.ndarray] = {}
    touches_edge = np.zeros(n + 1, dtype=bool)
    for side, (internal, strip) in strips.items():
        if internal and strip is not None:
            edges[side] = np.ascontiguousarray(strip, dtype=np.int32)
            touches_edge[edges[side]] = True
    return BlockPolygons(
        row_off=row_off,
        col_off=col_off,
        height=h,
        width=w,
        scene_height=scene_height,
        scene_width=scene_width,
        geoms=geoms,
        pixel_count=pixel_count,
        prob_sum=np.asarray(prob_sum, dtype=np.float64),
        edges=edges,
        touches_edge=touches_edge[1:],
    )


# --------------------------------------------------------------------------- client side


def _check_blocks(blocks: Sequence[BlockPolygons]) -> tuple[int, int]:
    """Same scene for every block, and core areas that add up to the scene."""
    sizes = {(b.scene_height, b.scene_width) for b in blocks}
    if len(sizes) != 1:
        raise ValueError(f"blocks come from scenes of different sizes: {sorted(sizes)}")
    (height, width) = sizes.pop()
    covered = sum(b.height * b.width for b in blocks)
    if covered != height * width:
        raise ValueError(
            f"block cores cover {covered} pixels but the scene has {height} x {width} = "
            f"{height * width}; the cores must tile the scene without overlap"
        )
    return height, width


def _seam_pairs(blocks: Sequence[BlockPolygons], offsets: np.ndarray) -> np.ndarray:
    """``(k, 2)`` global polygon ids that face each other across a seam (4-adjacent pixels).

    Every strip pixel gets a key naming the seam position it sits on (for a horizontal
    seam at row r: ``r * width + column``; for a vertical seam at column c:
    ``c * height + row``); sorting both sides of all seams by key lines up the pixels that
    face each other.
    """
    height, width = blocks[0].scene_height, blocks[0].scene_width
    # side -> (which side of the seam it is, how to compute the keys)
    sides: dict[str, list[np.ndarray]] = {s: [] for s in SIDES}
    ids: dict[str, list[np.ndarray]] = {s: [] for s in SIDES}
    for b, off in zip(blocks, offsets):
        for side, strip in b.edges.items():
            if side == "top":
                keys = b.row_off * width + b.col_off + np.arange(b.width, dtype=np.int64)
            elif side == "bottom":
                keys = (b.row_off + b.height) * width + b.col_off + np.arange(b.width, dtype=np.int64)
            elif side == "left":
                keys = b.col_off * height + b.row_off + np.arange(b.height, dtype=np.int64)
            else:
                keys = (b.col_off + b.width) * height + b.row_off + np.arange(b.height, dtype=np.int64)
            sides[side].append(keys)
            ids[side].append(np.where(strip > 0, strip.astype(np.int64) + (off - 1), -1))

    pairs = []
    for first, second, kind in (("bottom", "top", "horizontal"), ("right", "left", "vertical")):
        if not sides[first] and not sides[second]:
            continue
        k1 = np.concatenate(sides[first]) if sides[first] else np.zeros(0, np.int64)
        k2 = np.concatenate(sides[second]) if sides[second] else np.zeros(0, np.int64)
        o1, o2 = np.argsort(k1, kind="stable"), np.argsort(k2, kind="stable")
        if not np.array_equal(k1[o1], k2[o2]):
            raise ValueError(
                f"{kind} block edges do not line up: some internal edge has no neighbouring "
                "block across it (missing or overlapping blocks?)"
            )
        g1 = np.concatenate(ids[first])[o1]
        g2 = np.concatenate(ids[second])[o2]
        both = (g1 >= 0) & (g2 >= 0)
        pairs.append(np.stack([g1[both], g2[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def _top_left_keys(geoms: np.ndarray, width: int) -> np.ndarray:
    """Raster index ``row * width + column`` of each polygon's first pixel in raster order.

    The first pixel's top-left corner is the leftmost vertex on the polygon's top edge
    (no hole can reach the top row), so it is read from the vertices, not the pixels.
    """
    if len(geoms) == 0:
        return np.zeros(0, dtype=np.int64)
    xy, index = shapely.get_coordinates(geoms, return_index=True)
    ymin = shapely.bounds(geoms)[:, 1]
    on_top = xy[:, 1] == ymin[index]
    xmin = np.full(len(geoms), np.inf)
    np.minimum.at(xmin, index[on_top], xy[on_top, 0])
    return ymin.astype(np.int64) * width + xmin.astype(np.int64)


def merge_seams(blocks: Sequence[BlockPolygons]) -> Polygons:
    """Join the pieces of polygons cut by block seams (runs on the client).

    Pieces are grouped when foreground pixels of one face foreground pixels of another
    across a shared block edge (union-find as sparse connected components over
    ``(block, label)`` ids); each group of two or more pieces becomes one polygon with
    ``shapely.union_all`` (the only unions done) and the sums of the pieces' pixel counts
    and probability sums. Polygons touching no internal edge pass through untouched.

    Cost: one sort of all strip pixels (the total length of the internal edges), one union
    per polygon that crosses a seam; never a union of everything.

    Args:
        blocks: one :class:`BlockPolygons` per block, whose cores tile the scene without
            overlap (any order; blocks need not form a uniform grid).

    Returns:
        The scene's polygons, ordered by their first pixel in raster order, so the order
        does not depend on the block grid.

    Raises:
        ValueError: blocks come from different scenes, or their cores do not tile it.
    """
    blocks = list(blocks)
    if not blocks:
        return Polygons(_EMPTY_GEOMS.copy(), np.zeros(0, np.int64), np.zeros(0, np.float64))
    height, width = _check_blocks(blocks)
    counts = np.array([len(b) for b in blocks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    geoms = np.concatenate([b.geoms for b in blocks]) if counts.sum() else _EMPTY_GEOMS.copy()
    pixel_count = np.concatenate([b.pixel_count for b in blocks]).astype(np.int64)
    prob_sum = np.concatenate([b.prob_sum for b in blocks]).astype(np.float64)

    pairs = _seam_pairs(blocks, offsets)
    keep = np.ones(len(geoms), dtype=bool)
    merged_geoms, merged_count, merged_sum = [], [], []
    if len(pairs):
        nodes, inverse = np.unique(pairs, return_inverse=True)
        inverse = inverse.reshape(pairs.shape)
        graph = coo_matrix(
            (np.ones(len(pairs), dtype=np.int8), (inverse[:, 0], inverse[:, 1])),
            shape=(len(nodes), len(nodes)),
        )
        n_groups, group = connected_components(graph, directed=False)
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        for members in np.split(nodes[order], bounds):
            merged_geoms.append(shapely.union_all(geoms[members]))
            merged_count.append(pixel_count[members].sum())
            merged_sum.append(prob_sum[members].sum())
        keep[nodes] = False
        # Drop the vertices the seams left on straight edges; the point set is unchanged.
        merged = shapely.simplify(np.array(merged_geoms, dtype=object), 0.0, preserve_topology=True)
        geoms = np.concatenate([geoms[keep], merged])
        pixel_count = np.concatenate([pixel_count[keep], np.array(merged_count, dtype=np.int64)])
        prob_sum = np.concatenate([prob_sum[keep], np.array(merged_sum, dtype=np.float64)])

    order = np.argsort(_top_left_keys(geoms, width), kind="stable")
    return Polygons(geoms[order], pixel_count[order], prob_sum[order])
