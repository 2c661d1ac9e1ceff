"""Vector labels -> per-window label rasters.

Labels stay vectors for the whole run. Each class's features are read once (layer, field and
value selection), reprojected to the raster's CRS, and line features (road centerlines) are
buffered to polygons by their width in metres. An STRtree indexes them, and every sampled
window burns only the features its footprint touches with ``rasterio.features.rasterize``,
using the window's own affine transform. No full-scene label raster ever exists, so memory
depends on the window size and the feature count, not on the scene size; the result is
pixel for pixel what a full-scene rasterization would give on that window (a pixel belongs
to a feature when its centre is inside).

Steps of :func:`read_class_geometries`: pick the layer -> select features by attribute ->
reproject -> buffer lines/points in metres -> keep valid, non-empty polygons.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS
from scipy import ndimage

from geounet.errors import ConfigError, SceneReadError
from geounet.train.config import ClassLabels, MaskClasses

log = logging.getLogger(__name__)

__all__ = [
    "ClassGeometries",
    "choose_layer",
    "read_class_geometries",
    "window_box",
    "burn",
    "burn_ids",
    "burn_with_gaps",
    "cut_touching",
    "id_stack",
    "narrow_gaps",
    "split_stack",
    "rasterize_window",
    "to_class_index",
    "mask_to_stack",
]


@dataclass
class ClassGeometries:
    """One class's polygons in a scene's CRS, with a spatial index.

    Attributes:
        name: class name.
        geoms: shapely polygons (object array) in the raster's CRS.
        separate_touching: burn a gap where two features touch.
        separation_px: width of that gap, 1 or 2 pixels.
        sources: ``file:layer`` strings the features came from.
        mask_gap_px: a raster mask's :func:`narrow_gaps` radius (0: none).
    """

    name: str
    geoms: np.ndarray
    separate_touching: bool = False
    separation_px: int = 1
    sources: list[str] = field(default_factory=list)
    mask_gap_px: int = 0  # raster masks: narrow gaps between regions weigh like separation lines (narrow_gaps)
    tree: shapely.STRtree | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.geoms = np.asarray(self.geoms, dtype=object)
        self.tree = shapely.STRtree(self.geoms) if len(self.geoms) else None

    def query(self, box: shapely.Geometry) -> np.ndarray:
        """Geometries whose envelope intersects ``box``."""
        if self.tree is None:
            return np.empty(0, dtype=object)
        return self.geoms[self.tree.query(box)]


# -- reading ---------------------------------------------------------------------------------


def choose_layer(path: Path, layers: Sequence[str], selector: ClassLabels) -> str:
    """The layer of ``path`` holding ``selector``'s class (see :class:`ClassLabels`.layer)."""
    if selector.layer is not None:
        if selector.layer not in layers:
            raise ConfigError(
                f"label file {path}: class {selector.name!r} asks for layer {selector.layer!r}, but its "
                f"layers are {', '.join(layers)}; fix data.classes[{selector.name}].layer (or leave it "
                "empty to take a file's only layer)"
            )
        return selector.layer
    if len(layers) == 1:
        return layers[0]
    named = [n for n in layers if n.lower() in (selector.name.lower(), selector.name.lower() + "s")]
    if len(named) == 1:
        return named[0]
    raise ConfigError(
        f"label file {path} has layers {', '.join(layers)}; choose the one holding class "
        f"{selector.name!r} with data.classes[{selector.name}].layer"
    )


def _metres_per_unit(crs: CRS) -> float | None:
    """Metres per CRS unit for a projected CRS, None for a geographic one."""
    if not crs.is_projected:
        return None
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float(factor or 1.0)


def _select(df: gpd.GeoDataFrame, selector: ClassLabels, source: str) -> gpd.GeoDataFrame:
    """Rows whose ``selector.field`` is one of ``selector.values`` (text case-insensitively)."""
    if selector.field is None:
        return df
    if selector.field not in df.columns:
        fields = ", ".join(str(c) for c in df.columns if c != df.geometry.name) or "(none)"
        raise ConfigError(
            f"label file {source}: class {selector.name!r} selects by field {selector.field!r}, which "
            f"the layer lacks; its fields are {fields}"
        )
    col = df[selector.field]
    hit = np.zeros(len(df), dtype=bool)
    for v in selector.values:
        if isinstance(v, str):
            hit |= (col.astype("string").str.strip().str.lower() == v.strip().lower()).fillna(False).to_numpy(bool)
        else:
            hit |= (col == v).fillna(False).to_numpy(bool)
    return df[hit]


def _widths(df: gpd.GeoDataFrame, selector: ClassLabels, source: str) -> np.ndarray:
    """Width in metres of each row (NaN where unknown)."""
    widths = np.full(len(df), np.nan if selector.width_m is None else selector.width_m, dtype=float)
    if selector.width_field is not None:
        if selector.width_field not in df.columns:
            fields = ", ".join(str(c) for c in df.columns if c != df.geometry.name) or "(none)"
            raise ConfigError(
                f"label file {source}: class {selector.name!r} reads line widths from field "
                f"{selector.width_field!r}, which the layer lacks; its fields are {fields}"
            )
        given = np.asarray(df[selector.width_field].astype("Float64").to_numpy(dtype=float, na_value=np.nan))
        ok = np.isfinite(given) & (given > 0)
        widths[ok] = given[ok]
    return widths


def _buffer_metres(geoms: gpd.GeoSeries, widths: np.ndarray, crs: CRS) -> gpd.GeoSeries:
    """Buffer ``geoms`` (in ``crs``) by half their width in metres; result in ``crs``.

    A projected CRS buffers in its own units (converted from metres); a geographic one goes
    through the UTM zone of the features, so that widths stay metres on the ground.
    """
    factor = _metres_per_unit(crs)
    if factor is not None:
        return gpd.GeoSeries(shapely.buffer(geoms.values, widths / 2.0 / factor), crs=crs, index=geoms.index)
    utm = geoms.estimate_utm_crs()
    local = geoms.to_crs(utm)
    out = gpd.GeoSeries(shapely.buffer(local.values, widths / 2.0), crs=utm, index=geoms.index)
    return out.to_crs(crs)


def read_class_geometries(paths: Sequence[str | Path], selector: ClassLabels, dst_crs: CRS | str) -> ClassGeometries:
    """Read one class's features from ``paths`` as polygons in ``dst_crs``.

    Polygons are kept (repaired with ``make_valid`` when invalid); lines and points are
    buffered by half their width in metres (``width_field``, else ``width_m``). Files
    without a CRS are taken to be in ``dst_crs`` (with a warning).

    Cost: reads every selected feature once; memory about 1 kB per feature.

    Raises:
        ConfigError: a missing file, layer or field, or lines without a width.
        SceneReadError: GDAL cannot read a file.
    """
    dst = CRS.from_user_input(dst_crs)
    parts: list[np.ndarray] = []
    sources: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"label file {path} (class {selector.name!r}) does not exist; check data.scenes[].labels")
        try:
            info = pyogrio.list_layers(path)
        except Exception as exc:
            raise SceneReadError(path, f"cannot be read as a vector file: {exc}") from None
        layers = [str(n) for n in info[:, 0]] if len(info) else []
        if not layers:
            raise SceneReadError(path, "holds no vector layer")
        layer = choose_layer(path, layers, selector)
        source = f"{path}:{layer}"
        try:
            df = gpd.read_file(path, layer=layer, engine="pyogrio")
        except Exception as exc:
            raise SceneReadError(path, f"layer {layer!r} cannot be read: {exc}") from None
        df = _select(df, selector, source)
        df = df[~(df.geometry.isna() | df.geometry.is_empty)]
        sources.append(source)
        if not len(df):
            continue
        if df.crs is None:
            log.warning("%s has no CRS; taking it to be the raster's CRS %s", source, dst.to_string())
            df = df.set_crs(dst, allow_override=True)
        df = df.to_crs(dst)
        geoms = df.geometry
        kind = shapely.get_dimensions(geoms.values)  # 0 points, 1 lines, 2 polygons
        thin = kind < 2
        out = np.asarray(geoms.values, dtype=object).copy()
        if thin.any():
            widths = _widths(df, selector, source)[thin]
            missing = ~np.isfinite(widths)
            if missing.any():
                what = "line" if (kind[thin] == 1).any() else "point"
                raise ConfigError(
                    f"label file {source}: class {selector.name!r} has {int(missing.sum())} {what} features "
                    f"without a width; set data.classes[{selector.name}].width_m (metres) or width_field"
                )
            out[thin] = _buffer_metres(geoms[thin], widths, dst).values
        bad = ~shapely.is_valid(out)
        if bad.any():
            out[bad] = shapely.make_valid(out[bad])
        polys = shapely.get_parts(out)
        polys = polys[np.isin(shapely.get_type_id(polys), (3, 6)) & ~shapely.is_empty(polys)]
        parts.append(polys)
    geoms_all = np.concatenate(parts) if parts else np.empty(0, dtype=object)
    return ClassGeometries(selector.name, geoms_all, selector.separate_touching, selector.separation_px, sources)


# -- burning ---------------------------------------------------------------------------------


def window_box(transform: Affine, height: int, width: int) -> shapely.Polygon:
    """Footprint of a ``height`` x ``width`` window with ``transform``, in CRS units."""
    t = transform
    return shapely.Polygon([t @ (0, 0), t @ (width, 0), t @ (width, height), t @ (0, height)])


def burn_ids(cg: ClassGeometries, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """uint32 raster (h, w) of feature ids: 0 outside, ``i + 1`` inside the i-th feature touching the window.

    Ids are local to the window; later features win where features overlap.
    """
    geoms = cg.query(window_box(transform, *shape))
    if len(geoms) == 0:
        return np.zeros(shape, dtype=np.uint32)
    return rasterio.features.rasterize(
        ((g, i + 1) for i, g in enumerate(geoms)), out_shape=shape, transform=transform, fill=0, dtype="uint32"
    )


def cut_touching(ids: np.ndarray, separation_px: int = 1, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mask (uint8) and cut pixels (bool) of an id raster, touching features pulled apart.

    A foreground pixel is cut when its right or bottom 4-neighbour holds another feature
    (``separation_px`` 1), or when any 4-neighbour does (2). Every 4-adjacent pair of
    pixels of two different features thus loses at least one member, and touching
    features become separate 4-connected regions. ``margin`` pixels on every side of
    ``ids`` are context only (neighbours of the border) and are cropped from the result;
    without margin, pairs across the raster's border are unknown and not cut.

    The rule is directional (right/bottom) for 1 pixel, so it must be applied in the
    frame the model sees: training applies it *after* flips and rotations.
    """
    h, w = ids.shape
    padded = np.pad(ids, 1) if margin == 0 else ids
    m = 1 if margin == 0 else margin
    core = padded[m : m + (h if margin == 0 else h - 2 * margin), m : m + (w if margin == 0 else w - 2 * margin)]
    ch, cw = core.shape
    neighbours = [padded[m : m + ch, m + 1 : m + 1 + cw], padded[m + 1 : m + 1 + ch, m : m + cw]]  # right, below
    if separation_px >= 2:
        neighbours += [padded[m : m + ch, m - 1 : m - 1 + cw], padded[m - 1 : m - 1 + ch, m : m + cw]]  # left, above
    cut = np.zeros(core.shape, dtype=bool)
    for nb in neighbours:
        cut |= (nb != 0) & (nb != core)
    cut &= core != 0
    return ((core != 0) & ~cut).astype(np.uint8), cut


def burn_with_gaps(
    cg: ClassGeometries, transform: Affine, shape: tuple[int, int], *, separate: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 mask (h, w) of ``cg``'s features on one window, and the bool separation gaps cut from it.

    A pixel belongs to a feature when its centre is inside. With ``separate`` (default: the
    class's ``separate_touching``), the features are burned with their own ids on the
    window grown by one pixel on every side and pulled apart with :func:`cut_touching`, so
    the result does not depend on the window grid.

    Cost: one STRtree query and one rasterization of the features touching the window.
    """
    h, w = shape
    sep = cg.separate_touching if separate is None else separate
    if not sep:
        return (burn_ids(cg, transform, shape) > 0).astype(np.uint8), np.zeros(shape, dtype=bool)
    ids = burn_ids(cg, transform @ Affine.translation(-1, -1), (h + 2, w + 2))
    return cut_touching(ids, cg.separation_px, margin=1)


def burn(cg: ClassGeometries, transform: Affine, shape: tuple[int, int], *, separate: bool | None = None) -> np.ndarray:
    """uint8 mask (h, w) of ``cg``'s features on one window; see :func:`burn_with_gaps`."""
    return burn_with_gaps(cg, transform, shape, separate=separate)[0]


def id_stack(classes: Sequence[ClassGeometries], transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """(n_classes, h, w) uint32: feature ids for classes that separate touching features, 0/1 for the others.

    The training form of the labels: flips, rotations and (nearest) elastic warps move ids
    like labels, and :func:`split_stack` applies the separation afterwards, in the frame the
    model sees.
    """
    out = np.zeros((len(classes), *shape), dtype=np.uint32)
    for k, cg in enumerate(classes):
        ids = burn_ids(cg, transform, shape)
        out[k] = ids if cg.separate_touching else (ids > 0)
    return out


def narrow_gaps(mask: np.ndarray, radius: int) -> np.ndarray:
    """Background pixels ``(h, w)`` bool of ``mask`` that have pixels of two different
    8-connected regions within ``radius`` pixels (a square neighbourhood).

    A raster mask carries no outlines to pull apart (:func:`cut_touching`), but neighbouring
    buildings drawn as separate regions leave narrow background gaps between them: these are
    the pixels a model must get right to draw the buildings apart, and the loss weighs them
    (``data.classes[].mask_gap_px``) like separation lines (the weight map of Ronneberger et
    al. 2015, as a plain step rather than their exponential of the distances). With
    ``radius`` 2, a gap up to 2 px wide is marked whole and a 3 px gap along its middle line.
    The neighbourhood is symmetric, so the result does not depend on the frame (flips,
    quarter turns); it does depend on where the window is cut: one building that leaves the
    window and comes back is two regions in it, and a gap between its parts is marked.
    """
    regions, n = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=bool))
    if n < 2:
        return np.zeros(mask.shape, dtype=bool)
    size = 2 * radius + 1
    none = np.uint32(n + 1)
    lowest = ndimage.minimum_filter(np.where(regions > 0, regions, none).astype(np.uint32), size=size, mode="nearest")
    highest = ndimage.maximum_filter(regions.astype(np.uint32), size=size, mode="constant", cval=0)
    return (regions == 0) & (lowest < none) & (highest != lowest)


def split_stack(
    stack: np.ndarray, classes: Sequence[ClassGeometries], *, masks: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Label stack (uint8) and separation gaps (bool) from an :func:`id_stack`.

    ``masks``: the stack holds a raster mask's 0/1 classes (no feature ids, nothing to cut):
    the gaps are the :func:`narrow_gaps` of the classes with a ``mask_gap_px``."""
    out = np.zeros(stack.shape, dtype=np.uint8)
    gaps = np.zeros(stack.shape[1:], dtype=bool)
    for k, cg in enumerate(classes):
        if masks:
            out[k] = stack[k] > 0
            if cg.mask_gap_px > 0:
                gaps |= narrow_gaps(out[k], cg.mask_gap_px)
        elif cg.separate_touching:
            out[k], cut = cut_touching(stack[k], cg.separation_px)
            gaps |= cut
        else:
            out[k] = stack[k] > 0
    return out, gaps


def rasterize_window(
    classes: Sequence[ClassGeometries], transform: Affine, shape: tuple[int, int], *, separate: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label stack (n_classes, h, w) uint8 of one window, one channel per class in order, and
    the separation gaps (h, w) bool of all classes together."""
    out = np.zeros((len(classes), *shape), dtype=np.uint8)
    gaps = np.zeros(shape, dtype=bool)
    for k, cg in enumerate(classes):
        out[k], g = burn_with_gaps(cg, transform, shape, separate=separate)
        gaps |= g
    return out, gaps


def to_class_index(stack: np.ndarray) -> np.ndarray:
    """Multiclass target (h, w) int64 from a label stack: 0 background, k + 1 for class k.

    Where classes overlap, the later class in the list wins.
    """
    out = np.zeros(stack.shape[1:], dtype=np.int64)
    for k in range(stack.shape[0]):
        out[stack[k] > 0] = k + 1
    return out


def mask_to_stack(
    raw: np.ndarray, mapping: MaskClasses, classes: Sequence[str], palette: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label stack ``(len(classes), h, w)`` uint32 (0/1) and unlabelled pixels ``(h, w)`` bool
    of a raster mask window ``raw`` ``(bands, h, w)``.

    Value masks compare the first band with each class's values; colour masks compare the
    first three bands (or a paletted mask's colours, ``palette`` ``(values, 3)``) with each
    class's RGB colours. Classes the mask does not label stay 0
    (the caller knows they are not scored). Pixels of ``ignore_values``/``ignore_colors`` are
    unlabelled.

    Raises:
        ConfigError: a colour mapping on a mask with fewer than three bands.
    """
    h, w = raw.shape[1:]
    out = np.zeros((len(classes), h, w), dtype=np.uint32)
    ignore = np.zeros((h, w), dtype=bool)
    if mapping.colors or mapping.ignore_colors:
        if palette is not None and raw.shape[0] == 1:
            raw = np.moveaxis(palette[raw[0].astype(np.int64)], -1, 0)
        if raw.shape[0] < 3:
            raise ConfigError(
                f"mask_classes gives colours, but the mask has {raw.shape[0]} band(s); use 'values' for "
                "single-band masks"
            )

        def hit(rgb: tuple[int, int, int]) -> np.ndarray:
            return (raw[0] == rgb[0]) & (raw[1] == rgb[1]) & (raw[2] == rgb[2])

        for k, name in enumerate(classes):
            for rgb in mapping.colors_of(name):
                out[k] |= hit(rgb)
        for rgb in mapping.ignore_colors:
            ignore |= hit(tuple(rgb))  # type: ignore[arg-type]
        return out, ignore
    for k, name in enumerate(classes):
        vals = mapping.values_of(name)
        if vals:
            out[k] = np.isin(raw[0], vals)
    if mapping.ignore_values:
        ignore = np.isin(raw[0], mapping.ignore_values)
    return out, ignore
