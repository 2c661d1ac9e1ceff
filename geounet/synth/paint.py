"""Paint one window of a synthetic scene from its vector layout.

A window is painted in layers, each a function of global pixel coordinates only:

1. ground -- soil and grass hues mixed by two smooth noise fields, with fine texture;
2. roads -- asphalt by road kind (main roads darker), dashed centre lines on main roads;
3. shadows -- each building part swept along the scene's shadow vector by its height, and
   each tree crown offset the same way; they darken whatever lies below (ground or road);
4. trees -- round crowns, lit on the sun side, the highest crown winning where they overlap;
5. roofs -- per-building colour; pitched roofs show two facets (the one facing the sun
   brighter) and a ridge, flat roofs a parapet; eaves are slightly darker.

Roads and roofs are burnt with :func:`rasterio.features.rasterize` from exactly the truth
polygons, so a pixel is building (road) in the image if and only if its centre lies inside
a truth building (road) polygon. Values are reflectance-like floats in [0, 1]; bands are
red, green, blue and, when asked for, an NIR-like band (bright for vegetation).

Cost per window of ``h * w`` pixels: about 60 float32 passes for the ground plus work in
proportion to the road, roof and crown pixels; memory about 40 bytes per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.features import rasterize

from geounet.synth.layout import DEAD_END, LOCAL, MAIN, Layout, trees_near
from geounet.synth.noise import derive_key, fbm, value_noise, white

# Colours: red, green, blue, NIR-like; reflectance-like 0-1.
GRASS = (0.27, 0.36, 0.17, 0.58)
DRY_GRASS = (0.47, 0.45, 0.31, 0.45)
SOIL = (0.46, 0.38, 0.29, 0.33)
ASPHALT = np.zeros((3, 4), dtype=np.float32)
ASPHALT[LOCAL] = (0.41, 0.41, 0.42, 0.36)
ASPHALT[MAIN] = (0.31, 0.31, 0.33, 0.28)
ASPHALT[DEAD_END] = (0.45, 0.44, 0.43, 0.40)
# Where roads overlap at junctions: dead ends below local roads below main roads.
PAINT_ORDER = np.zeros(3, dtype=np.int8)
PAINT_ORDER[[DEAD_END, LOCAL, MAIN]] = (0, 1, 2)
MARKING = np.array((0.86, 0.86, 0.84, 0.78), dtype=np.float32)
SHADOW = np.array((0.42, 0.46, 0.56, 0.38), dtype=np.float32)  # multiplies what lies below
CROWN = np.array((0.14, 0.24, 0.09, 0.62), dtype=np.float32)
# 16 crown hues: from blue-green to yellow-green, as multipliers of CROWN.
CROWN_HUES = np.stack(
    [np.linspace(0.85, 1.25, 16), np.linspace(0.95, 1.1, 16), np.linspace(1.3, 0.75, 16), np.ones(16)], axis=1
).astype(np.float32)

# Noise scales, metres.
VEGETATION_SCALES_M = (150.0, 45.0)
SOIL_SCALES_M = (80.0, 20.0)
TEXTURE_SCALE_M = 2.5
MIN_CELL_PX = 1.5


@dataclass(frozen=True)
class NoiseKeys:
    vegetation: int
    soil: int
    texture: int
    grain: int

    @classmethod
    def from_seed(cls, seed: int) -> NoiseKeys:
        return cls(*(derive_key(seed, k) for k in (11, 12, 13, 14)))


@dataclass(frozen=True)
class Window:
    """A window in global pixels: columns ``col .. col + width``, rows ``row .. row + height``."""

    col: int
    row: int
    width: int
    height: int

    @property
    def box(self) -> shapely.Polygon:
        return shapely.box(self.col, self.row, self.col + self.width, self.row + self.height)

    def grown(self, margin: float) -> shapely.Polygon:
        return shapely.box(
            self.col - margin, self.row - margin, self.col + self.width + margin, self.row + self.height + margin
        )

    @property
    def transform(self) -> Affine:
        # Geometries are in global pixels: a pure integer shift, exact in floating point.
        return Affine.translation(self.col, self.row)


def paint_window(layout: Layout, keys: NoiseKeys, win: Window, nir: bool) -> np.ndarray:
    """Float32 ``(3 or 4, height, width)`` image of one window, values about 0-1."""
    channels = 4 if nir else 3
    img = np.empty((channels, win.height, win.width), dtype=np.float32)
    x = win.col + np.arange(win.width) + 0.5
    y = win.row + np.arange(win.height) + 0.5
    texture = _ground(img, layout, keys, win, x, y)
    flat = img.reshape(channels, -1)
    tex = texture.ravel()
    _roads(flat, layout, win, tex)
    _shadows(flat, layout, win)
    _trees(flat, layout, win, tex)
    _roofs(flat, layout, win, tex)
    return img


def _cell(metres: float, gsd: float) -> float:
    return max(metres / gsd, MIN_CELL_PX)


def _ground(img: np.ndarray, layout: Layout, keys: NoiseKeys, win: Window, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Paint soil and grass; returns the fine texture field (0-1) that later layers reuse."""
    gsd = layout.gsd
    veg = fbm(x, y, tuple(_cell(s, gsd) for s in VEGETATION_SCALES_M), (0.65, 0.35), keys.vegetation)
    soil = fbm(x, y, tuple(_cell(s, gsd) for s in SOIL_SCALES_M), (0.6, 0.4), keys.soil)
    texture = value_noise(x, y, _cell(TEXTURE_SCALE_M, gsd), keys.texture)
    texture *= np.float32(0.6)
    grain = white(np.arange(win.col, win.col + win.width), np.arange(win.row, win.row + win.height), keys.grain)
    grain *= np.float32(0.4)
    texture += grain
    # grass weight from the vegetation field, bare-soil weight from the soil field
    veg -= np.float32(0.3)
    veg *= np.float32(2.5)
    np.clip(veg, 0.0, 1.0, out=veg)
    soil -= np.float32(0.6)
    soil *= np.float32(6.0)
    np.clip(soil, 0.0, 1.0, out=soil)
    bright = texture * np.float32(0.28)
    bright += np.float32(0.86)
    for c in range(img.shape[0]):
        band = img[c]
        np.multiply(veg, np.float32(GRASS[c] - DRY_GRASS[c]), out=band)
        band += np.float32(DRY_GRASS[c])
        delta = np.float32(SOIL[c]) - band
        delta *= soil
        band += delta
        band *= bright
    return texture


def _query(index: shapely.STRtree, area: shapely.Polygon) -> np.ndarray:
    """Indices intersecting ``area``, sorted so that the burn order never depends on the window."""
    return np.sort(index.query(area))


def _burn(shapes: np.ndarray, values: np.ndarray, win: Window, dtype: str) -> np.ndarray:
    return rasterize(
        zip(shapes, values.tolist()), out_shape=(win.height, win.width), transform=win.transform, fill=0, dtype=dtype
    )


def _roads(flat: np.ndarray, layout: Layout, win: Window, tex: np.ndarray) -> None:
    roads = layout.roads
    q = _query(layout.road_index, win.box)
    if len(q) == 0:
        return
    q = q[np.argsort(PAINT_ORDER[roads.kind[roads.piece_road[q]]], kind="stable")]
    kind_map = _burn(roads.pieces[q], roads.kind[roads.piece_road[q]].astype(np.int64) + 1, win, "uint8").ravel()
    idx = np.flatnonzero(kind_map)
    kind = kind_map[idx].astype(np.intp) - 1
    shade = tex[idx] * np.float32(0.18)
    shade += np.float32(0.91)
    flat[:, idx] = ASPHALT[kind, : flat.shape[0]].T * shade

    d = _query(layout.dash_index, win.box)
    if len(d):
        dash = _burn(roads.dashes[d], np.ones(len(d), dtype=np.int64), win, "uint8").ravel()
        m = np.flatnonzero(dash & (kind_map == MAIN + 1))
        flat[:, m] = flat[:, m] * np.float32(0.3) + MARKING[: flat.shape[0], None] * np.float32(0.7)


def _shadow_polygons(layout: Layout, win: Window) -> np.ndarray:
    """Each building part swept along the shadow vector (convex hull of both positions)."""
    b = layout.buildings
    q = _query(layout.building_index, win.grown(layout.max_shadow_px))
    if len(q) == 0:
        return np.array([], dtype=object)
    ids = np.unique(b.truth_building[q])
    parts = b.parts[ids]  # (n, 2, 4)
    has = np.stack([np.ones(len(ids), dtype=bool), b.n_parts[ids] == 2], axis=1)
    owner = np.repeat(ids, 2)[has.ravel()]
    p = parts.reshape(-1, 4)[has.ravel()]
    us = p[:, [0, 1, 1, 0]]
    vs = p[:, [2, 2, 3, 3]]
    X = b.cx[owner, None] + us * b.tx[owner, None] + vs * b.nx[owner, None]
    Y = b.cy[owner, None] + us * b.ty[owner, None] + vs * b.ny[owner, None]
    sx = b.height_px[owner, None] * layout.shadow[0]
    sy = b.height_px[owner, None] * layout.shadow[1]
    pts = np.stack([np.hstack([X, X + sx]), np.hstack([Y, Y + sy])], axis=-1)
    return shapely.convex_hull(shapely.multipoints(pts))


@dataclass
class _Stencil:
    pixel: np.ndarray  # flat index in the window
    tree: np.ndarray  # tree index
    dx: np.ndarray  # (pixel centre - crown centre) / radius
    dy: np.ndarray
    d2: np.ndarray


def _crowns(layout: Layout, win: Window, shift: float = 0.0) -> _Stencil | None:
    """Pixels of the window covered by crown discs, optionally moved along the shadow vector."""
    t = layout.trees
    if len(t.x) == 0:
        return None
    reach = float(t.r.max()) + 2.0 + (layout.max_shadow_px if shift else 0.0)
    near = trees_near(t, win.col - reach, win.row - reach, win.col + win.width + reach, win.row + win.height + reach)
    if len(near) == 0:
        return None
    # The shadow of a crown is the crown seen from the sun, cast from its centre height.
    lift = (t.h[near] - t.r[near]) * shift
    cx = t.x[near] + lift * layout.shadow[0]
    cy = t.y[near] + lift * layout.shadow[1]
    r = t.r[near]
    hit = (cx + r > win.col) & (cx - r < win.col + win.width) & (cy + r > win.row) & (cy - r < win.row + win.height)
    if not hit.any():
        return None
    near, cx, cy, r = near[hit], cx[hit], cy[hit], r[hit]
    size = int(np.ceil(2 * r.max())) + 2
    steps = np.arange(size)
    cols = np.floor(cx - r).astype(np.int64)[:, None] + steps
    rows = np.floor(cy - r).astype(np.int64)[:, None] + steps
    dx = (cols + 0.5 - cx[:, None]) / r[:, None]
    dy = (rows + 0.5 - cy[:, None]) / r[:, None]
    d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
    inside = d2 < 1.0
    inside &= ((rows >= win.row) & (rows < win.row + win.height))[:, :, None]
    inside &= ((cols >= win.col) & (cols < win.col + win.width))[:, None, :]
    k, a, c = np.nonzero(inside)
    pixel = (rows[k, a] - win.row) * win.width + (cols[k, c] - win.col)
    return _Stencil(pixel=pixel, tree=near[k], dx=dx[k, c], dy=dy[k, a], d2=d2[k, a, c])


def _shadows(flat: np.ndarray, layout: Layout, win: Window) -> None:
    shade = np.zeros(win.height * win.width, dtype=bool)
    polys = _shadow_polygons(layout, win)
    if len(polys):
        shade |= _burn(polys, np.ones(len(polys), dtype=np.int64), win, "uint8").ravel().astype(bool)
    st = _crowns(layout, win, shift=1.0)
    if st is not None:
        shade[st.pixel] = True
    idx = np.flatnonzero(shade)
    flat[:, idx] *= SHADOW[: flat.shape[0], None]


def _trees(flat: np.ndarray, layout: Layout, win: Window, tex: np.ndarray) -> None:
    st = _crowns(layout, win)
    if st is None:
        return
    t = layout.trees
    norm = float(np.hypot(*layout.shadow)) or 1.0
    sun_x, sun_y = -layout.shadow[0] / norm, -layout.shadow[1] / norm
    cap = np.sqrt(1.0 - st.d2)
    lit = st.dx * sun_x + st.dy * sun_y
    bright = 0.8 + 0.3 * lit - 0.2 * st.d2 + 0.35 * (tex[st.pixel] - 0.5)
    # The highest crown surface wins: pack (height, hue, brightness) into one sortable key.
    z = t.h[st.tree] - t.r[st.tree] * (1.0 - cap)
    zq = np.clip(np.rint(z * 64.0), 1, 65535).astype(np.uint32)
    bq = np.clip(np.rint(bright / 1.5 * 4095.0), 0, 4095).astype(np.uint32)
    key = (zq << np.uint32(16)) | (t.hue[st.tree].astype(np.uint32) << np.uint32(12)) | bq
    top = np.zeros(win.height * win.width, dtype=np.uint32)
    np.maximum.at(top, st.pixel, key)
    idx = np.flatnonzero(top)
    key = top[idx]
    bright = (key & np.uint32(4095)).astype(np.float32) * np.float32(1.5 / 4095.0)
    hue = ((key >> np.uint32(12)) & np.uint32(15)).astype(np.intp)
    colour = CROWN[None, : flat.shape[0]] * CROWN_HUES[hue, : flat.shape[0]]
    flat[:, idx] = (colour * bright[:, None]).T


def _roofs(flat: np.ndarray, layout: Layout, win: Window, tex: np.ndarray) -> None:
    b = layout.buildings
    q = _query(layout.building_index, win.box)
    if len(q) == 0:
        return
    ids = _burn(b.truth[q], b.truth_building[q].astype(np.int64) + 1, win, "int32").ravel()
    idx = np.flatnonzero(ids)
    if len(idx) == 0:
        return
    k = ids[idx].astype(np.intp) - 1
    gx = (idx % win.width + win.col) + 0.5
    gy = (idx // win.width + win.row) + 0.5
    ox, oy = gx - b.cx[k], gy - b.cy[k]
    u = ox * b.tx[k] + oy * b.ty[k]
    v = ox * b.nx[k] + oy * b.ny[k]
    second = b.parts[k, 1]
    in_second = (
        (b.n_parts[k] == 2) & (u >= second[:, 0]) & (u <= second[:, 1]) & (v >= second[:, 2]) & (v <= second[:, 3])
    )
    part = np.where(in_second[:, None], second, b.parts[k, 0])
    u0, u1, v0, v1 = part.T
    metre = 1.0 / layout.gsd
    edge = np.minimum(np.minimum(u - u0, u1 - u), np.minimum(v - v0, v1 - v))

    # Pitched roofs: the ridge runs along the longer side of the part; facets face +-n or +-t.
    along_u = (u1 - u0) >= (v1 - v0)
    off = np.where(along_u, v - (v0 + v1) / 2, u - (u0 + u1) / 2)
    side = np.where(off >= 0, 1.0, -1.0)
    norm = float(np.hypot(*layout.shadow)) or 1.0
    sun_x, sun_y = -layout.shadow[0] / norm, -layout.shadow[1] / norm
    fx = np.where(along_u, b.nx[k], b.tx[k]) * side
    fy = np.where(along_u, b.ny[k], b.ty[k]) * side
    lit = fx * sun_x + fy * sun_y
    pitched = 1.0 + 0.17 * lit + 0.06 * (np.abs(off) < 0.25 * metre)
    flat_roof = 1.0 + 0.1 * (edge < 0.6 * metre)
    shade = np.where(b.flat[k], flat_roof, pitched)
    shade *= np.where(edge < 0.35 * metre, 0.88, 1.0)
    shade *= 0.95 + 0.1 * tex[idx]
    flat[:, idx] = (b.roof[k, : flat.shape[0]] * shade[:, None].astype(np.float32)).T
