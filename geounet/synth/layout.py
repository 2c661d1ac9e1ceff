"""The vector layout of a synthetic scene: roads, buildings and trees, before any pixel exists.

Everything here is in *global pixel coordinates* (x = column, y = row, pixel centres at
``+0.5``), so a window is rasterized with a pure integer translation and its pixels cannot
depend on where the window starts. Sizes are chosen in metres and converted with the ground
sampling distance ``gsd`` (metres per pixel).

The layout is built in visible steps:

1. :func:`road_network` -- a rotated, jittered grid of junctions; a random spanning tree plus
   most other grid edges keep it connected; each edge is a gentle curve of 6-14 m width;
   some dropped edges survive as dead ends. Road polygons are the centrelines buffered by
   half their width, clipped to the valid area; pieces cut off from the main network by the
   clip are dropped, so what remains is one connected network.
2. :func:`place_buildings` -- plots along both sides of every road, each carrying a house
   (rectangle, L or T), a row of attached terraced houses, or a large flat-roofed block,
   facing the road. Buildings closer than 1.5 m to a road or 1 m to another building are
   removed (terraced neighbours share their walls exactly, so they touch).
3. :func:`plant_trees` -- clustered trees (gardens, small woods) that keep clear of roads
   and buildings. Trees are only arrays of centres and radii: they are painted, never truth.

Memory is about 1 kB per building and road piece and 40 bytes per tree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

# --- road model -------------------------------------------------------------------------
LOCAL, MAIN, DEAD_END = 0, 1, 2
ROAD_KINDS = ("local", "main", "dead_end")
CURVE_SAMPLES = 13  # points per road centreline (about 9 m apart; sagitta of a bend < 0.1 m)
MAIN_LINE_PROBABILITY = 0.2  # share of grid lines that are main roads
EXTRA_EDGE_PROBABILITY = 0.72  # share of non-spanning-tree grid edges that are kept
DEAD_END_PROBABILITY = 0.35  # share of dropped edges kept as a dead end
WIDTH_M = {LOCAL: (6.0, 8.5), MAIN: (10.0, 14.0), DEAD_END: (6.0, 7.0)}
DASH_FRACTION = 0.4  # lane-marking dash length as a share of a centreline sample interval

# --- building model ---------------------------------------------------------------------
HOUSE, L_SHAPE, T_SHAPE, TERRACE, LARGE = 0, 1, 2, 3, 4
BUILDING_KINDS = ("house", "l_shape", "t_shape", "terrace", "large")
KIND_PROBABILITY = (0.49, 0.2, 0.09, 0.1, 0.12)
FRONTAGE_M = {HOUSE: (8.0, 15.0), L_SHAPE: (10.0, 18.0), T_SHAPE: (13.0, 22.0), LARGE: (20.0, 40.0)}
DEPTH_M = {HOUSE: (8.0, 13.0), L_SHAPE: (11.0, 18.0), T_SHAPE: (11.0, 18.0), TERRACE: (9.0, 13.0), LARGE: (14.0, 28.0)}
HEIGHT_M = {HOUSE: (4.0, 8.0), L_SHAPE: (4.0, 8.0), T_SHAPE: (5.0, 9.0), TERRACE: (6.0, 9.0), LARGE: (7.0, 14.0)}
TERRACE_UNIT_M = (7.0, 10.0)
TERRACE_UNITS = (2, 6)  # inclusive
SETBACK_M = (3.0, 8.0)  # road edge -> facade
PLOT_GAP_M = (2.0, 7.0)  # facade end -> next plot
JUNCTION_CLEARANCE_M = 12.0  # no plot this close to a centreline end
ROAD_CLEARANCE_M = 1.5  # minimum building-road distance
BUILDING_GAP_M = 1.0  # minimum distance between buildings that are not attached
FLAT_ROOF_PROBABILITY = {HOUSE: 0.12, L_SHAPE: 0.12, T_SHAPE: 0.15, TERRACE: 0.0, LARGE: 0.7}
DENSITY_CELL_M = 600.0  # districts: building density varies over about this distance

# Roof colours, RGB reflectance-like 0-1, with NIR-like value; (r, g, b, nir, weight).
PITCHED_ROOFS = np.array(
    [
        (0.62, 0.30, 0.22, 0.52, 4.0),  # terracotta
        (0.52, 0.24, 0.18, 0.45, 2.0),  # dark red tile
        (0.68, 0.40, 0.30, 0.55, 1.5),  # faded tile
        (0.44, 0.32, 0.25, 0.38, 2.0),  # brown
        (0.30, 0.30, 0.32, 0.26, 2.0),  # anthracite
        (0.36, 0.41, 0.48, 0.32, 1.5),  # blue-grey slate
        (0.52, 0.52, 0.52, 0.45, 1.0),  # grey concrete tile
    ]
)
FLAT_ROOFS = np.array(
    [
        (0.84, 0.84, 0.82, 0.75, 3.0),  # white membrane
        (0.66, 0.66, 0.64, 0.58, 2.0),  # light gravel
        (0.50, 0.50, 0.49, 0.44, 1.5),  # concrete
        (0.27, 0.27, 0.28, 0.23, 1.0),  # tar
        (0.45, 0.52, 0.58, 0.40, 0.7),  # blue-grey metal
    ]
)

# --- tree model -------------------------------------------------------------------------
GARDEN_CLUSTER_AREA_M2 = 2500.0  # one garden cluster per this much ground (tree_density=1)
WOOD_AREA_M2 = 250000.0  # one small wood per this much ground (tree_density=1)
TREE_RADIUS_M = (1.8, 4.2)
TREE_HEIGHT_M = (5.0, 13.0)
TREE_CLEARANCE_M = 0.8  # crown edge -> road or building
TREE_BUCKET_PX = 256  # spatial buckets for finding the trees of a window
ROAD_CHUNK = 2048  # roads per chunk when laying out plots (bounds temporary memory)
TREE_CHUNK = 50_000  # trees per chunk when checking clearance (bounds temporary memory)

# Truth pieces smaller than this (slivers cut by the scene edge) are dropped -- and, since
# only truth polygons are painted, they are not painted either.
MIN_TRUTH_AREA_M2 = 2.0


@dataclass
class Roads:
    """Road network. Per road: ``width_px``, ``kind``; per clipped piece: polygon and road index."""

    pieces: np.ndarray  # Polygons, clipped to the valid area, one connected network
    piece_road: np.ndarray
    lines: np.ndarray  # LineStrings: centrelines clipped to the kept pieces
    line_road: np.ndarray
    width_px: np.ndarray
    kind: np.ndarray
    keepout: np.ndarray  # unclipped road polygons, used while placing buildings and trees, then emptied
    dashes: np.ndarray  # lane-marking polygons on main roads (painted only on road pixels)
    centre_xy: np.ndarray  # (roads, CURVE_SAMPLES, 2) centreline samples, unclipped


@dataclass
class Buildings:
    """Footprints and what is needed to paint their roofs.

    Each building has a frame: centre ``(cx, cy)``, unit vector ``t`` along the road and
    ``n`` away from it. ``parts[i, k] = (u0, u1, v0, v1)`` are up to two rectangles in that
    frame whose union is the footprint (an L or T has two); roofs are shaded per part.
    """

    truth: np.ndarray  # Polygons clipped to the valid area (what is rasterized)
    truth_building: np.ndarray  # building index per truth polygon
    cx: np.ndarray
    cy: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    parts: np.ndarray  # (n, 2, 4)
    n_parts: np.ndarray
    kind: np.ndarray
    group: np.ndarray  # terraced houses of one row share a group
    height_px: np.ndarray
    flat: np.ndarray
    roof: np.ndarray  # (n, 4) float32: r, g, b, nir


@dataclass
class Trees:
    """Tree crowns as discs, sorted into square buckets of ``TREE_BUCKET_PX``."""

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    h: np.ndarray
    hue: np.ndarray  # 0..15, small per-tree colour variation
    bucket: np.ndarray  # sorted bucket key per tree
    buckets_x: int


@dataclass
class Layout:
    width: int
    height: int
    valid: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; outside is nodata
    gsd: float  # metres per pixel
    shadow: tuple[float, float]  # shadow offset per pixel of height (x, y)
    roads: Roads
    buildings: Buildings
    trees: Trees
    road_index: shapely.STRtree
    building_index: shapely.STRtree
    dash_index: shapely.STRtree

    @property
    def max_shadow_px(self) -> float:
        hmax = float(self.buildings.height_px.max()) if len(self.buildings.height_px) else 0.0
        tmax = float(self.trees.h.max()) if len(self.trees.h) else 0.0
        return max(hmax, tmax) * math.hypot(*self.shadow) + 2.0


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], size: int | tuple[int, ...]) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], size)


def _pick_by_kind(kind: np.ndarray, table: dict[int, tuple[float, float]], u: np.ndarray) -> np.ndarray:
    """Per element, ``lo + u * (hi - lo)`` with the bounds of its kind (NaN for kinds not in table)."""
    lo = np.full(len(ROAD_KINDS) + len(BUILDING_KINDS), np.nan)
    hi = lo.copy()
    for k, (a, b) in table.items():
        lo[k], hi[k] = a, b
    return lo[kind] + u * (hi[kind] - lo[kind])


# --------------------------------------------------------------------------------------
# 1. roads
# --------------------------------------------------------------------------------------
def road_network(
    rng: np.random.Generator, width: int, height: int, valid: tuple[int, int, int, int], gsd: float, spacing_m: float
) -> Roads:
    """A connected, curved road network covering the scene (see the module docstring)."""
    spacing = spacing_m / gsd
    theta = rng.uniform(-0.4, 0.4)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    half = 0.5 * math.hypot(width, height) + 1.5 * spacing
    n = int(math.ceil(half / spacing))
    m = 2 * n + 1
    ks = np.arange(-n, n + 1, dtype=np.float64)
    phase = rng.uniform(0.0, 1.0, 2)
    a = (ks[:, None] + phase[0]) * spacing + rng.uniform(-0.15, 0.15, (m, m)) * spacing
    b = (ks[None, :] + phase[1]) * spacing + rng.uniform(-0.15, 0.15, (m, m)) * spacing
    node_x = (width / 2 + a * cos_t - b * sin_t).ravel()
    node_y = (height / 2 + a * sin_t + b * cos_t).ravel()

    # Grid edges: family 0 joins (i, j)-(i+1, j) and lies on line j; family 1 joins (i, j)-(i, j+1).
    ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    e0 = (ii[:-1, :] * m + jj[:-1, :]).ravel(), (ii[1:, :] * m + jj[1:, :]).ravel(), jj[:-1, :].ravel()
    e1 = (ii[:, :-1] * m + jj[:, :-1]).ravel(), (ii[:, 1:] * m + jj[:, 1:]).ravel(), ii[:, :-1].ravel()
    src = np.concatenate([e0[0], e1[0]])
    dst = np.concatenate([e0[1], e1[1]])
    line = np.concatenate([e0[2], e1[2] + m])  # lines 0..m-1: family 0, m..2m-1: family 1
    main_line = rng.random(2 * m) < MAIN_LINE_PROBABILITY
    line_width = np.where(main_line, _uniform(rng, WIDTH_M[MAIN], 2 * m), _uniform(rng, WIDTH_M[LOCAL], 2 * m))

    # Keep edges near the scene only (an end within one spacing of it).
    def near(k: np.ndarray) -> np.ndarray:
        return (
            (node_x[k] > -spacing)
            & (node_x[k] < width + spacing)
            & (node_y[k] > -spacing)
            & (node_y[k] < height + spacing)
        )

    keep_near = near(src) | near(dst)
    src, dst, line = src[keep_near], dst[keep_near], line[keep_near]
    n_edges = len(src)
    is_main = main_line[line]

    # A random spanning tree keeps the network connected; most other edges stay too.
    weights = rng.uniform(1.0, 2.0, n_edges)
    graph = coo_matrix((weights, (src, dst)), shape=(m * m, m * m)).tocsr()
    tree = minimum_spanning_tree(graph).tocoo()
    tree_keys = np.minimum(tree.row, tree.col).astype(np.int64) * (m * m) + np.maximum(tree.row, tree.col)
    edge_keys = np.minimum(src, dst).astype(np.int64) * (m * m) + np.maximum(src, dst)
    in_tree = np.isin(edge_keys, tree_keys)
    keep = is_main | in_tree | (rng.random(n_edges) < EXTRA_EDGE_PROBABILITY)
    dead_end = ~keep & (rng.random(n_edges) < DEAD_END_PROBABILITY)

    # Parameter t along each edge's curve: whole edges 0..1, dead ends a prefix from one end.
    lin = np.linspace(0.0, 1.0, CURVE_SAMPLES)
    use = keep | dead_end
    src, dst, is_main, line, dead_end = src[use], dst[use], is_main[use], line[use], dead_end[use]
    reach = np.where(dead_end, rng.uniform(0.3, 0.55, len(src)), 1.0)
    from_end = dead_end & (rng.random(len(src)) < 0.5)
    t = reach[:, None] * lin[None, :]
    t = np.where(from_end[:, None], 1.0 - t, t)

    ax, ay, bx, by = node_x[src], node_y[src], node_x[dst], node_y[dst]
    length = np.hypot(bx - ax, by - ay)
    px, py = -(by - ay) / length, (bx - ax) / length  # unit normal
    bend = np.where(is_main, 0.35, 1.0)
    amp1 = rng.uniform(-0.09, 0.09, len(src)) * spacing * bend
    amp2 = rng.uniform(-0.04, 0.04, len(src)) * spacing * bend
    offset = amp1[:, None] * np.sin(np.pi * t) + amp2[:, None] * np.sin(2 * np.pi * t)
    xy = np.stack(
        [
            ax[:, None] + t * (bx - ax)[:, None] + offset * px[:, None],
            ay[:, None] + t * (by - ay)[:, None] + offset * py[:, None],
        ],
        axis=-1,
    )

    kind = np.where(dead_end, DEAD_END, np.where(is_main, MAIN, LOCAL)).astype(np.int8)
    width_m = np.where(dead_end, _uniform(rng, WIDTH_M[DEAD_END], len(src)), line_width[line])
    width_px = width_m / gsd

    # Only roads whose polygon may reach the scene.
    pad = width_px[:, None] / 2 + 2
    inside = ((xy[..., 0] > -pad) & (xy[..., 0] < width + pad) & (xy[..., 1] > -pad) & (xy[..., 1] < height + pad)).any(
        axis=1
    )
    xy, kind, width_px = xy[inside], kind[inside], width_px[inside]
    centre = shapely.linestrings(xy)
    keepout = shapely.buffer(centre, width_px / 2, quad_segs=4)

    pieces, piece_road, intact = _connected_pieces(keepout, valid, MIN_TRUTH_AREA_M2 / gsd**2)
    lines, line_road = _centrelines(centre, pieces, piece_road, intact, valid)
    dashes = _dashes(xy, kind, gsd, keep_roads=np.unique(piece_road))
    return Roads(
        pieces=pieces,
        piece_road=piece_road,
        lines=lines,
        line_road=line_road,
        width_px=width_px,
        kind=kind,
        keepout=keepout,
        dashes=dashes,
        centre_xy=xy,
    )


def _valid_box(valid: tuple[int, int, int, int]) -> shapely.Polygon:
    return shapely.box(*valid)


def clip_to_box(geoms: np.ndarray, box: shapely.Polygon) -> tuple[np.ndarray, np.ndarray]:
    """Intersect with ``box``; only geometries crossing it are recomputed. Returns (clipped, intact)."""
    shapely.prepare(box)
    intact = shapely.contains(box, geoms)
    out = geoms.copy()
    cut = np.flatnonzero(~intact)
    if len(cut):
        out[cut] = shapely.intersection(geoms[cut], box)
    return out, intact


def explode(geoms: np.ndarray, type_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Single geometries of ``type_id`` (e.g. Polygon) and the index of the input each came from.

    Geometries that are already single are passed through without copying; multi-part ones
    (rare: cut by the clip) are split; other types (points, empties) are dropped.
    """
    types = shapely.get_type_id(geoms)
    single = np.flatnonzero(types == type_id)
    multi = np.flatnonzero((types != type_id) & ~shapely.is_empty(geoms))
    parts, idx = shapely.get_parts(geoms[multi], return_index=True)
    ok = shapely.get_type_id(parts) == type_id
    out = np.concatenate([geoms[single], parts[ok]])
    owner = np.concatenate([single, multi[idx[ok]]])
    order = np.argsort(owner, kind="stable")
    return out[order], owner[order]


def _connected_pieces(
    polygons: np.ndarray, valid: tuple[int, int, int, int], min_area: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip road polygons to the valid area and keep the largest connected network.

    Returns the pieces, the road of each piece and, per road, whether it lay wholly inside.
    """
    clipped, intact = clip_to_box(polygons, _valid_box(valid))
    parts, road = explode(clipped, shapely.GeometryType.POLYGON.value)
    good = shapely.area(parts) >= min_area
    parts, road = parts[good], road[good]
    if len(parts) == 0:
        return parts, road, intact
    pairs = shapely.STRtree(parts).query(parts, predicate="intersects")
    graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(len(parts), len(parts)))
    _, label = connected_components(graph, directed=False)
    area = np.bincount(label, weights=shapely.area(parts))
    main = label == int(np.argmax(area))
    return parts[main], road[main], intact


def _centrelines(
    centre: np.ndarray, pieces: np.ndarray, piece_road: np.ndarray, intact: np.ndarray, valid: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Centreline parts inside the kept road pieces (LineStrings only)."""
    if len(pieces) == 0:
        return np.array([], dtype=object), np.array([], dtype=np.int64)
    order = np.argsort(piece_road, kind="stable")
    roads, first, count = np.unique(piece_road[order], return_index=True, return_counts=True)
    lines = centre[roads].copy()
    # Roads cut by the clip: keep the centreline inside the valid area and inside the kept pieces.
    cut = np.flatnonzero(~intact[roads])
    kept = pieces[order][first[cut]]
    for j in np.flatnonzero(count[cut] > 1):  # a road cut into several pieces (rare)
        k = cut[j]
        kept[j] = shapely.union_all(pieces[order][first[k] : first[k] + count[k]])
    lines[cut] = shapely.intersection(clip_to_box(centre[roads[cut]], _valid_box(valid))[0], kept)
    parts, idx = explode(lines, shapely.GeometryType.LINESTRING.value)
    long = shapely.length(parts) > 0
    return parts[long], roads[idx[long]]


def _dashes(xy: np.ndarray, kind: np.ndarray, gsd: float, keep_roads: np.ndarray) -> np.ndarray:
    """Dashed centre line on main roads: a dash at the start of every other sample interval."""
    main = np.intersect1d(np.flatnonzero(kind == MAIN), keep_roads)
    if len(main) == 0:
        return np.array([], dtype=object)
    k = np.arange(1, CURVE_SAMPLES - 2, 2)  # not in the first and last interval (junctions)
    a = xy[main][:, k]
    b = a + DASH_FRACTION * (xy[main][:, k + 1] - a)
    seg = np.stack([a, b], axis=2).reshape(-1, 2, 2)
    return shapely.buffer(shapely.linestrings(seg), 0.3 / gsd, cap_style="flat")


# --------------------------------------------------------------------------------------
# 2. buildings
# --------------------------------------------------------------------------------------
def _along(xy: np.ndarray, road: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Point and unit tangent at arc length ``s`` along centreline ``road`` (vectorised)."""
    seg = np.diff(xy, axis=1)
    seg_len = np.maximum(np.hypot(seg[..., 0], seg[..., 1]), 1e-9)
    cum = np.concatenate([np.zeros((len(xy), 1)), np.cumsum(seg_len, axis=1)], axis=1)
    stride = float(cum[:, -1].max()) + 1.0
    flat = (cum + np.arange(len(xy))[:, None] * stride).ravel()
    k = np.searchsorted(flat, s + road * stride, side="right") - 1 - road * CURVE_SAMPLES
    k = np.clip(k, 0, CURVE_SAMPLES - 2)
    f = (s - cum[road, k]) / seg_len[road, k]
    d = seg[road, k]
    tx, ty = d[:, 0] / seg_len[road, k], d[:, 1] / seg_len[road, k]
    return xy[road, k, 0] + f * d[:, 0], xy[road, k, 1] + f * d[:, 1], tx, ty


def _district_density(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, width: int, height: int, gsd: float
) -> np.ndarray:
    """A smooth field in [0, 1] at the points: random values every DENSITY_CELL_M, bilinear between."""
    cell = DENSITY_CELL_M / gsd
    field = rng.random((int(height / cell) + 3, int(width / cell) + 3))
    coords = [np.clip(y / cell, 0, field.shape[0] - 1), np.clip(x / cell, 0, field.shape[1] - 1)]
    return ndimage.map_coordinates(field, coords, order=1)


def place_buildings(
    rng: np.random.Generator,
    roads: Roads,
    width: int,
    height: int,
    valid: tuple[int, int, int, int],
    gsd: float,
    density: float,
) -> Buildings:
    """Buildings on plots along both sides of every road (see the module docstring)."""
    xy = roads.centre_xy
    n_roads = len(xy)
    if n_roads == 0:
        return _empty_buildings()
    metre = 1.0 / gsd
    road, sd, kind, frontage, units, s_mid = _plots(rng, xy, roads.kind, metre)
    n = len(kind)
    depth = _pick_by_kind(kind, DEPTH_M, rng.random(n)) * metre
    setback = _uniform(rng, SETBACK_M, n) * metre
    x, y, tx, ty = _along(xy, road, s_mid)

    # Districts: the chance that a plot is built varies smoothly over the scene.
    local = _district_density(rng, x, y, width, height, gsd)
    built = rng.random(n) < np.clip(density * (0.35 + 1.3 * local), 0.0, 1.0)
    sel = np.flatnonzero(built)

    # Frame: t along the road (slightly rotated), n away from the road on this side.
    jitter = rng.uniform(-0.06, 0.06, n)
    c, s = np.cos(jitter), np.sin(jitter)
    tx, ty = tx * c - ty * s, tx * s + ty * c
    nx, ny = -ty * sd, tx * sd
    offset = roads.width_px[road] / 2 + setback + depth / 2
    cx, cy = x + nx * offset, y + ny * offset

    polys, owner, parts, n_parts = _footprints(
        rng,
        kind[sel],
        frontage[sel],
        depth[sel],
        units[sel],
        cx[sel],
        cy[sel],
        tx[sel],
        ty[sel],
        nx[sel],
        ny[sel],
        metre,
    )
    b = sel[owner]
    bkind = kind[b]
    group = np.where(bkind == TERRACE, b, -1 - np.arange(len(b)))  # terraced rows share a group

    # Conflicts: drop buildings near roads, outside the scene, or too close to one another.
    keep = np.ones(len(polys), dtype=bool)
    near_road = shapely.STRtree(roads.keepout).query(polys, predicate="dwithin", distance=ROAD_CLEARANCE_M * metre)[0]
    keep[near_road] = False
    keep &= shapely.intersects(polys, _valid_box(valid))
    keep = _drop_crowded(polys, group, keep, BUILDING_GAP_M * metre)

    idx = np.flatnonzero(keep)
    polys, b, parts, n_parts, bkind, group = polys[idx], b[idx], parts[idx], n_parts[idx], bkind[idx], group[idx]
    nb = len(idx)
    height_px = _pick_by_kind(bkind, HEIGHT_M, rng.random(nb)) * metre
    flat_p = np.array([FLAT_ROOF_PROBABILITY[k] for k in range(len(BUILDING_KINDS))])[bkind]
    flat = rng.random(nb) < flat_p
    # Terraced rows share a height and a roof type; colours vary a little from unit to unit.
    height_px, flat = _share_in_group(group, height_px), _share_in_group(group, flat)
    roof = _roof_colours(rng, flat, group)

    truth, truth_building = _clip_truth(polys, valid, MIN_TRUTH_AREA_M2 * metre**2)
    return Buildings(
        truth=truth,
        truth_building=truth_building,
        cx=cx[b],
        cy=cy[b],
        tx=tx[b],
        ty=ty[b],
        nx=nx[b],
        ny=ny[b],
        parts=parts,
        n_parts=n_parts,
        kind=bkind.astype(np.int8),
        group=group,
        height_px=height_px,
        flat=flat,
        roof=roof,
    )


def _plots(rng: np.random.Generator, xy: np.ndarray, road_kind: np.ndarray, metre: float) -> tuple[np.ndarray, ...]:
    """Plots along both sides of each road: road, side, kind, frontage, units, arc position of the middle.

    Per road side, a run of plots with random frontage and gaps from one junction clearance to
    the other. Roads are handled in fixed chunks so the per-slot arrays stay small.
    """
    seg = np.diff(xy, axis=1)
    road_len = np.hypot(seg[..., 0], seg[..., 1]).sum(1)
    min_step = (FRONTAGE_M[HOUSE][0] * 0.8 + PLOT_GAP_M[0]) * metre
    slots = int(math.ceil(road_len.max() / min_step)) + 1
    clearance = JUNCTION_CLEARANCE_M * metre
    # Centrelines start at a junction; a dead end needs no clearance at its far end.
    usable = road_len - np.where(road_kind == DEAD_END, 3.0 * metre, clearance)
    out: list[tuple[np.ndarray, ...]] = []
    for lo in range(0, len(xy), ROAD_CHUNK):
        hi = min(len(xy), lo + ROAD_CHUNK)
        rows = 2 * (hi - lo)
        kind = rng.choice(len(BUILDING_KINDS), size=(rows, slots), p=KIND_PROBABILITY)
        units = np.where(kind == TERRACE, rng.integers(TERRACE_UNITS[0], TERRACE_UNITS[1] + 1, (rows, slots)), 1)
        unit_w = _uniform(rng, TERRACE_UNIT_M, (rows, slots))
        frontage = (
            np.where(kind == TERRACE, units * unit_w, _pick_by_kind(kind, FRONTAGE_M, rng.random((rows, slots))))
            * metre
        )
        step = frontage + _uniform(rng, PLOT_GAP_M, (rows, slots)) * metre
        start = clearance + np.cumsum(step, axis=1) - step
        road_of_row = np.repeat(np.arange(lo, hi), 2)
        r_idx, k_idx = np.nonzero(start + frontage <= usable[road_of_row][:, None])
        f = frontage[r_idx, k_idx]
        out.append(
            (
                road_of_row[r_idx],
                np.where(r_idx % 2 == 0, 1.0, -1.0),
                kind[r_idx, k_idx],
                f,
                units[r_idx, k_idx],
                start[r_idx, k_idx] + f / 2,
            )
        )
    return tuple(np.concatenate(col) for col in zip(*out))


def _footprints(
    rng: np.random.Generator,
    kind: np.ndarray,
    f: np.ndarray,
    d: np.ndarray,
    units: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    tx: np.ndarray,
    ty: np.ndarray,
    nx: np.ndarray,
    ny: np.ndarray,
    metre: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Footprint polygons in world pixels, built from explicit local vertices.

    Returns polygons, the plot each came from, parts ``(n, 2, 4)`` and part counts. Local
    frame: ``u`` along the road, ``v`` away from it, the facade at ``v = -d/2``. Attached
    terraced houses are cut from one row at shared ``u`` values, so neighbours share their
    wall vertices bit for bit.
    """
    out_polys, out_owner, out_parts, out_nparts = [], [], [], []
    nan4 = np.full(4, np.nan)

    def emit(sel: np.ndarray, us: np.ndarray, vs: np.ndarray, parts: np.ndarray, nparts: int) -> None:
        if len(sel) == 0:
            return
        X = cx[sel, None] + us * tx[sel, None] + vs * nx[sel, None]
        Y = cy[sel, None] + us * ty[sel, None] + vs * ny[sel, None]
        out_polys.append(shapely.polygons(np.stack([X, Y], axis=-1)))
        out_owner.append(sel)
        out_parts.append(parts)
        out_nparts.append(np.full(len(sel), nparts, dtype=np.int8))

    def rect_parts(u0: np.ndarray, u1: np.ndarray, v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
        p = np.empty((len(u0), 2, 4))
        p[:, 0] = np.stack([u0, u1, v0, v1], axis=1)
        p[:, 1] = nan4
        return p

    # Plain rectangles: houses and large blocks.
    sel = np.flatnonzero((kind == HOUSE) | (kind == LARGE))
    hf, hd = f[sel, None] / 2, d[sel, None] / 2
    emit(
        sel,
        np.hstack([-hf, hf, hf, -hf]),
        np.hstack([-hd, -hd, hd, hd]),
        rect_parts(-hf[:, 0], hf[:, 0], -hd[:, 0], hd[:, 0]),
        1,
    )

    # L: a front bar and a wing at one end running back from it.
    sel = np.flatnonzero(kind == L_SHAPE)
    if len(sel):
        hf, hd = f[sel] / 2, d[sel] / 2
        d1 = d[sel] * rng.uniform(0.45, 0.6, len(sel))
        ww = f[sel] * rng.uniform(0.35, 0.55, len(sel))
        mirror = np.where(rng.random(len(sel)) < 0.5, -1.0, 1.0)
        v1 = -hd + d1
        us = np.stack([-hf, hf, hf, hf - ww, hf - ww, -hf], axis=1) * mirror[:, None]
        vs = np.stack([-hd, -hd, hd, hd, v1, v1], axis=1)
        parts = np.empty((len(sel), 2, 4))
        parts[:, 0] = np.stack([-hf, hf, -hd, v1], axis=1)
        wing = np.stack([hf - ww, hf], axis=1) * mirror[:, None]
        parts[:, 1] = np.stack([wing.min(1), wing.max(1), v1, hd], axis=1)
        emit(sel, us, vs, parts, 2)

    # T: a bar and a stem from its middle; the stem faces away from or towards the road.
    sel = np.flatnonzero(kind == T_SHAPE)
    if len(sel):
        hf, hd = f[sel] / 2, d[sel] / 2
        d1 = d[sel] * rng.uniform(0.4, 0.55, len(sel))
        hs = f[sel] * rng.uniform(0.15, 0.22, len(sel))
        o = f[sel] * rng.uniform(-0.12, 0.12, len(sel))
        flip = np.where(rng.random(len(sel)) < 0.5, -1.0, 1.0)
        v1 = -hd + d1
        us = np.stack([-hf, hf, hf, o + hs, o + hs, o - hs, o - hs, -hf], axis=1)
        vs = np.stack([-hd, -hd, v1, v1, hd, hd, v1, v1], axis=1) * flip[:, None]
        parts = np.empty((len(sel), 2, 4))
        bar_v = np.stack([-hd, v1], axis=1) * flip[:, None]
        stem_v = np.stack([v1, hd], axis=1) * flip[:, None]
        parts[:, 0] = np.stack([-hf, hf, bar_v.min(1), bar_v.max(1)], axis=1)
        parts[:, 1] = np.stack([o - hs, o + hs, stem_v.min(1), stem_v.max(1)], axis=1)
        emit(sel, us, vs, parts, 2)

    # Terraced rows: one rectangle per unit, cut at shared u values.
    sel = np.flatnonzero(kind == TERRACE)
    if len(sel):
        k = units[sel]
        row = np.repeat(sel, k)
        unit = np.arange(len(row)) - np.repeat(np.cumsum(k) - k, k)
        kk = np.repeat(k, k)
        hf, hd = f[row] / 2, d[row] / 2
        width = f[row] / kk
        u0 = -hf + unit * width
        u1 = -hf + (unit + 1) * width
        # the last unit ends exactly where the row ends
        u1 = np.where(unit == kk - 1, hf, u1)
        us = np.stack([u0, u1, u1, u0], axis=1)
        vs = np.stack([-hd, -hd, hd, hd], axis=1)
        emit(row, us, vs, rect_parts(u0, u1, -hd, hd), 1)

    if not out_polys:
        return (
            np.array([], dtype=object),
            np.array([], dtype=np.int64),
            np.empty((0, 2, 4)),
            np.array([], dtype=np.int8),
        )
    return np.concatenate(out_polys), np.concatenate(out_owner), np.concatenate(out_parts), np.concatenate(out_nparts)


def _drop_crowded(polys: np.ndarray, group: np.ndarray, keep: np.ndarray, gap: float) -> np.ndarray:
    """Greedy: a building closer than ``gap`` to an earlier kept one (other group) is dropped."""
    idx = np.flatnonzero(keep)
    if len(idx) < 2:
        return keep
    pairs = shapely.STRtree(polys[idx]).query(polys[idx], predicate="dwithin", distance=gap)
    i, j = idx[pairs[0]], idx[pairs[1]]
    m = (i < j) & (group[i] != group[j])
    i, j = i[m], j[m]
    order = np.lexsort((i, j))
    keep = keep.copy()
    for a, b in zip(i[order].tolist(), j[order].tolist()):
        if keep[a] and keep[b]:
            keep[b] = False
    return keep


def _share_in_group(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Give every member of a group the value of its first member."""
    _, first, inverse = np.unique(group, return_index=True, return_inverse=True)
    return values[first][inverse]


def _roof_colours(rng: np.random.Generator, flat: np.ndarray, group: np.ndarray) -> np.ndarray:
    n = len(flat)
    out = np.empty((n, 4), dtype=np.float32)
    for mask, table in ((~flat, PITCHED_ROOFS), (flat, FLAT_ROOFS)):
        k = int(mask.sum())
        if k == 0:
            continue
        p = table[:, 4] / table[:, 4].sum()
        choice = rng.choice(len(table), size=k, p=p)
        base = table[choice, :4] * rng.uniform(0.88, 1.1, (k, 1))
        base[:, :3] += rng.uniform(-0.025, 0.025, (k, 3))
        out[mask] = base
    # Half of the terraced rows keep one colour (with a small shift per unit).
    shared = _share_in_group(group, out)
    same = (group >= 0) & _share_in_group(group, rng.random(n) < 0.5)
    out[same] = shared[same] * rng.uniform(0.94, 1.06, (int(same.sum()), 1)).astype(np.float32)
    return np.clip(out, 0.02, 0.98)


def _clip_truth(polys: np.ndarray, valid: tuple[int, int, int, int], min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """Footprints clipped to the valid area, as single Polygons (a cut building may split)."""
    parts, owner = explode(clip_to_box(polys, _valid_box(valid))[0], shapely.GeometryType.POLYGON.value)
    good = shapely.area(parts) >= min_area
    return parts[good], owner[good]


def _empty_buildings() -> Buildings:
    e = np.array([], dtype=np.float64)
    return Buildings(
        truth=np.array([], dtype=object),
        truth_building=np.array([], dtype=np.int64),
        cx=e,
        cy=e,
        tx=e,
        ty=e,
        nx=e,
        ny=e,
        parts=np.empty((0, 2, 4)),
        n_parts=np.array([], dtype=np.int8),
        kind=np.array([], dtype=np.int8),
        group=np.array([], dtype=np.int64),
        height_px=e,
        flat=np.array([], dtype=bool),
        roof=np.empty((0, 4), dtype=np.float32),
    )


# --------------------------------------------------------------------------------------
# 3. trees
# --------------------------------------------------------------------------------------
def plant_trees(
    rng: np.random.Generator, roads: Roads, buildings: Buildings, width: int, height: int, gsd: float, density: float
) -> Trees:
    """Clustered trees clear of roads and buildings (see the module docstring)."""
    metre = 1.0 / gsd
    margin = 20 * metre
    area_m2 = (width + 2 * margin) * (height + 2 * margin) * gsd * gsd
    xs, ys = [], []
    for per_area, size, spread in ((GARDEN_CLUSTER_AREA_M2, 4.0, (3.0, 12.0)), (WOOD_AREA_M2, 50.0, (20.0, 45.0))):
        n_clusters = rng.poisson(area_m2 / per_area * density)
        cx = rng.uniform(-margin, width + margin, n_clusters)
        cy = rng.uniform(-margin, height + margin, n_clusters)
        count = 1 + rng.poisson(size, n_clusters)
        sigma = np.repeat(_uniform(rng, spread, n_clusters) * metre, count)
        xs.append(np.repeat(cx, count) + rng.normal(0, 1, count.sum()) * sigma)
        ys.append(np.repeat(cy, count) + rng.normal(0, 1, count.sum()) * sigma)
    x, y = np.concatenate(xs), np.concatenate(ys)
    n = len(x)
    r = _uniform(rng, TREE_RADIUS_M, n) * metre
    h = _uniform(rng, TREE_HEIGHT_M, n) * metre
    hue = rng.integers(0, 16, n).astype(np.uint8)
    keep = (x > -margin) & (x < width + margin) & (y > -margin) & (y < height + margin)

    # Keep clear of roads and buildings, in chunks so the temporary points stay small.
    obstacles = np.concatenate([roads.keepout, buildings.truth])
    if len(obstacles):
        index = shapely.STRtree(obstacles)
        for lo in range(0, n, TREE_CHUNK):
            hi = min(n, lo + TREE_CHUNK)
            pts = shapely.points(x[lo:hi], y[lo:hi])
            hit = index.query(pts, predicate="dwithin", distance=r[lo:hi] + TREE_CLEARANCE_M * metre)[0]
            keep[lo + hit] = False
    x, y, r, h, hue = x[keep], y[keep], r[keep], h[keep], hue[keep]

    buckets_x = width // TREE_BUCKET_PX + 3
    bucket = _tree_bucket(x, y, buckets_x)
    order = np.argsort(bucket, kind="stable")
    return Trees(
        x=x[order], y=y[order], r=r[order], h=h[order], hue=hue[order], bucket=bucket[order], buckets_x=buckets_x
    )


def _tree_bucket(x: np.ndarray, y: np.ndarray, buckets_x: int) -> np.ndarray:
    bx = np.clip(np.floor(x / TREE_BUCKET_PX).astype(np.int64) + 1, 0, buckets_x - 1)
    by = np.maximum(np.floor(y / TREE_BUCKET_PX).astype(np.int64) + 1, 0)
    return by * buckets_x + bx


def trees_near(trees: Trees, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Indices of trees whose bucket overlaps the box (a superset of the trees inside it)."""
    bx0 = max(int(math.floor(x0 / TREE_BUCKET_PX)) + 1, 0)
    bx1 = min(int(math.floor(x1 / TREE_BUCKET_PX)) + 1, trees.buckets_x - 1)
    by0 = max(int(math.floor(y0 / TREE_BUCKET_PX)) + 1, 0)
    by1 = max(int(math.floor(y1 / TREE_BUCKET_PX)) + 1, 0)
    if bx1 < bx0 or len(trees.x) == 0:
        return np.array([], dtype=np.int64)
    rows = np.arange(by0, by1 + 1) * trees.buckets_x
    lo = np.searchsorted(trees.bucket, rows + bx0, side="left")
    hi = np.searchsorted(trees.bucket, rows + bx1, side="right")
    return np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(rows) else np.array([], dtype=np.int64)


# --------------------------------------------------------------------------------------
# the whole layout
# --------------------------------------------------------------------------------------
def build_layout(
    *,
    width: int,
    height: int,
    valid: tuple[int, int, int, int],
    gsd: float,
    seed: int,
    building_density: float,
    road_spacing_m: float,
    tree_density: float,
) -> Layout:
    """Roads, then buildings, then trees; each step draws from its own random stream."""
    road_rng, building_rng, tree_rng, sun_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    roads = road_network(road_rng, width, height, valid, gsd, road_spacing_m)
    buildings = place_buildings(building_rng, roads, width, height, valid, gsd, building_density)
    trees = plant_trees(tree_rng, roads, buildings, width, height, gsd, tree_density)
    roads.keepout = np.array([], dtype=object)  # only needed while placing; frees memory
    # Shadows fall to one side per scene: 0.35-0.7 m of shadow per metre of height.
    azimuth = sun_rng.uniform(0, 2 * math.pi)
    length = sun_rng.uniform(0.35, 0.7)
    shadow = (length * math.cos(azimuth), length * math.sin(azimuth))
    return Layout(
        width=width,
        height=height,
        valid=valid,
        gsd=gsd,
        shadow=shadow,
        roads=roads,
        buildings=buildings,
        trees=trees,
        road_index=shapely.STRtree(roads.pieces),
        building_index=shapely.STRtree(buildings.truth),
        dash_index=shapely.STRtree(roads.dashes),
    )
