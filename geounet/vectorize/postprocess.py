"""Post-merge polygon processing in metres: world coordinates, areas, holes, simplification.

Runs on the client after :func:`geounet.vectorize.seams.merge_seams`, on polygons in scene pixel
coordinates (x = column, y = row). Everything here depends only on the merged polygons and
the scene's georeferencing, never on the block grid, so the output is the same whatever
block size a run used.

Units: tolerances and areas are in metres and square metres **on the ground**. Projected
CRSs whose plane is true to the ground where the polygons are (within :data:`PLANE_TOLERANCE`:
UTM, national grids) are measured in the plane (CRS units times the unit's length in metres,
e.g. US survey feet); geographic CRSs, and projected ones whose map metres are not ground
metres there (Web Mercator away from the equator: 2.9 map metres per ground metre at 70°), are
measured geodesically on the CRS's ellipsoid (``pyproj.Geod``). World coordinates follow the
raster convention of GDAL and rasterio: x is easting or longitude, y northing or latitude,
whatever axis order the CRS's definition declares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError
from rasterio.transform import Affine

from geounet.errors import ConfigError

__all__ = [
    "WorldPolygons",
    "areas_m2",
    "ground_factor",
    "pixel_size_m",
    "plane_scale",
    "postprocess",
    "single_parts",
    "to_pixels",
    "to_world",
]


class WorldPolygons(NamedTuple):
    """Output of :func:`postprocess`, one row per kept polygon."""

    geoms: np.ndarray  #: polygons (or multipolygons after simplification) in the scene CRS
    area_m2: np.ndarray  #: float64, area of each output geometry in square metres
    score: np.ndarray  #: float64, mean probability of the polygon's pixels (before simplifying)
    pixel_count: np.ndarray  #: int64, pixels of the polygon before any processing
    pixel_geoms: np.ndarray  #: the same polygons in scene pixel coordinates (x right, y down)


# A projected CRS is measured in its plane where one map unit is within this fraction of its
# nominal length on the ground (areas: of its square); UTM is within 0.2 % over its zone,
# Web Mercator 0.7 % off at the equator and 8.5x at 70 degrees.
PLANE_TOLERANCE = 0.005

# --------------------------------------------------------------------------- coercion


def _as_affine(affine: Affine | Sequence[float]) -> Affine:
    """An :class:`affine.Affine` or its first six coefficients ``(a, b, c, d, e, f)``."""
    values = tuple(affine)
    if len(values) not in (6, 9):
        raise ValueError(f"affine must have 6 coefficients (a, b, c, d, e, f), got {len(values)}")
    coerced = Affine(*(float(v) for v in values[:6]))
    if coerced.determinant == 0 or not all(math.isfinite(v) for v in values[:6]):
        raise ValueError(f"affine {tuple(values[:6])} is degenerate or not finite")
    return coerced


def _as_crs(crs: Any) -> CRS:
    """A pyproj CRS from anything pyproj understands (rasterio CRS, EPSG string, WKT)."""
    if crs is None:
        raise ValueError("a CRS is needed to measure in metres, got None")
    if isinstance(crs, CRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return CRS.from_wkt(crs.to_wkt())
    return CRS.from_user_input(crs)


def _unit_factor(crs: CRS) -> float:
    """Length of one unit of the first horizontal axis: metres (projected) or radians."""
    axes = crs.axis_info
    if not axes and crs.is_compound:
        axes = crs.sub_crs_list[0].axis_info
    if not axes or not axes[0].unit_conversion_factor:
        raise ValueError(f"cannot tell the linear unit of CRS {crs.name!r}")
    return float(axes[0].unit_conversion_factor)


def _degrees_per_unit(crs: CRS) -> float:
    """Geographic CRS: how many degrees one coordinate unit is (1 for degrees)."""
    return _unit_factor(crs) / (math.pi / 180.0)


def _check_option(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


# --------------------------------------------------------------------------- public API


def to_world(geoms: Any, affine: Affine | Sequence[float]) -> np.ndarray:
    """Pixel coordinates (x = column, y = row) -> scene CRS with the full 6-coefficient affine.

    Rotated and sheared transforms are applied exactly (``x' = a x + b y + c``,
    ``y' = d x + e y + f``). A north-up transform (negative ``e``) mirrors the plane, so
    ring orientation flips; writers fix winding where a format requires it.
    """
    t = _as_affine(affine)
    a, b, c, d, e, f = t.a, t.b, t.c, t.d, t.e, t.f

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(np.asarray(geoms, dtype=object), apply)


def to_pixels(world_geoms: Any, affine: Affine | Sequence[float]) -> np.ndarray:
    """Scene CRS -> pixel coordinates (x = column, y = row): :func:`to_world`'s inverse."""
    return to_world(world_geoms, ~_as_affine(affine))


def plane_scale(crs: Any, xy: tuple[float, float]) -> float | None:
    """Ground metres per nominal metre of a projected CRS's plane at ``xy`` (CRS units): the
    geometric mean of the geodesic lengths of a small east and north step there, divided by
    their lengths in the plane. 1 for a plane true to the ground (UTM: 0.9996-1.001); cos(lat)
    for Web Mercator. None when it cannot be measured (no ellipsoid, a point outside the
    projection's domain)."""
    crs = _as_crs(crs)
    geo = crs.geodetic_crs
    geod = geo.get_geod() if geo is not None else None
    if crs.is_geographic or geod is None:
        return None
    unit = _unit_factor(crs)
    step = 1.0 / unit  # one metre of the plane, in CRS units
    x, y = float(xy[0]), float(xy[1])
    try:
        to_geo = Transformer.from_crs(crs, geo, always_xy=True)
        lon, lat = to_geo.transform([x, x + step, x], [y, y, y + step], errcheck=True)
    except (CRSError, ProjError):
        return None
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        return None
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    scale = math.sqrt(dx * dy)
    return scale if scale > 0 and math.isfinite(scale) else None


def _true_to_ground(crs: CRS, xy: tuple[float, float]) -> bool:
    """Whether a projected CRS's plane measures ground metres at ``xy`` (see :data:`PLANE_TOLERANCE`)."""
    return ground_factor(crs, xy) == 1.0


def ground_factor(crs: Any, xy: tuple[float, float]) -> float:
    """Ground metres per nominal metre of a projected CRS at ``xy``: :func:`plane_scale` where the
    plane is not true to the ground (beyond :data:`PLANE_TOLERANCE`), else (or unknown) 1."""
    scale = plane_scale(crs, xy)
    return 1.0 if scale is None or abs(scale * scale - 1.0) <= PLANE_TOLERANCE else scale


def pixel_size_m(affine: Affine | Sequence[float], crs: Any, center_xy: tuple[float, float]) -> float:
    """Side in metres of a square with one pixel's area, at ``center_xy`` (scene CRS).

    Projected CRS: ``sqrt(|det|)`` of the affine times the unit's length (so feet are
    converted), times :func:`plane_scale` where the plane is not true to the ground (Web
    Mercator: a 0.3 m map pixel at 60° is 0.15 m on the ground). Geographic CRS: the pixel's
    two sides are measured geodesically from the centre (lon, lat), and the area of the
    parallelogram they span gives the size; on square-in-degrees pixels away from the equator
    this is the geometric mean of the east-west and north-south extents.
    """
    t = _as_affine(affine)
    crs = _as_crs(crs)
    if not crs.is_geographic:
        return math.sqrt(abs(t.determinant)) * _unit_factor(crs) * ground_factor(crs, center_xy)
    geod = crs.get_geod()
    if geod is None:
        raise ValueError(f"geographic CRS {crs.name!r} has no ellipsoid")
    k = _degrees_per_unit(crs)
    lon, lat = float(center_xy[0]) * k, float(center_xy[1]) * k
    az_col, _, d_col = geod.inv(lon, lat, lon + t.a * k, lat + t.d * k)
    az_row, _, d_row = geod.inv(lon, lat, lon + t.b * k, lat + t.e * k)
    return math.sqrt(d_col * d_row * abs(math.sin(math.radians(az_col - az_row))))


def areas_m2(world_geoms: Any, crs: Any) -> np.ndarray:
    """Area of each geometry in square metres (holes subtracted; empty or None -> 0).

    Geographic CRS: geodesic area on the CRS's ellipsoid (``Geod.geometry_area_perimeter``,
    one call per geometry). Projected: planar area times the squared unit length where the
    plane is true to the ground at the geometries' extent (its centre and corners, see
    :data:`PLANE_TOLERANCE`), else geodesic as for geographic CRSs (Web Mercator at 70° would
    otherwise give 8.5 times the ground area).
    """
    geoms = np.asarray(world_geoms, dtype=object)
    crs = _as_crs(crs)
    if not crs.is_geographic:
        planar = np.nan_to_num(np.asarray(shapely.area(geoms) * _unit_factor(crs) ** 2, dtype=np.float64), nan=0.0)
        present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
        if not present.any():
            return planar
        x0, y0, x1, y1 = shapely.total_bounds(geoms[present])
        probes = [((x0 + x1) / 2, (y0 + y1) / 2), (x0, y0), (x0, y1), (x1, y0), (x1, y1)]
        if all(_true_to_ground(crs, p) for p in probes):
            return planar
        geo = crs.geodetic_crs
        to_geo = Transformer.from_crs(crs, geo, always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_geo.transform(xy[:, 0], xy[:, 1])))
        geod = geo.get_geod()
        k = 1.0
    else:
        geod = crs.get_geod()
        k = _degrees_per_unit(crs)
    if geod is None:
        raise ValueError(f"CRS {crs.name!r} has no ellipsoid")
    if k != 1.0:
        geoms = shapely.transform(geoms, lambda xy: xy * k)
    # Counter-clockwise exteriors and clockwise holes: pyproj subtracts holes by sign.
    oriented = shapely.orient_polygons(geoms, exterior_cw=False)
    out = np.zeros(len(geoms), dtype=np.float64)
    for i, g in enumerate(oriented):
        if g is not None and not g.is_empty:
            out[i] = abs(geod.geometry_area_perimeter(g)[0])
    return out


def _fill_holes(geoms: np.ndarray, max_area_m2: float, affine: Affine, crs: CRS) -> np.ndarray:
    """Remove holes smaller than ``max_area_m2`` (measured in the world) from pixel polygons."""
    with_holes = np.flatnonzero(shapely.get_num_interior_rings(geoms) > 0)
    if len(with_holes) == 0:
        return geoms
    rings, owner = shapely.get_rings(geoms[with_holes], return_index=True)
    is_shell = np.ones(len(rings), dtype=bool)
    is_shell[1:] = owner[1:] != owner[:-1]
    hole_area = np.full(len(rings), np.inf)
    hole_area[~is_shell] = areas_m2(to_world(shapely.polygons(rings[~is_shell]), affine), crs)
    keep = is_shell | (hole_area >= max_area_m2)
    out = geoms.copy()
    out[with_holes] = shapely.polygons(rings[keep], indices=owner[keep])
    return out


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Make every geometry valid, keeping only its polygonal parts (None when nothing is left)."""
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    if len(invalid) == 0:
        return geoms
    out = geoms.copy()
    fixed = shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False)
    for i, g in zip(invalid, fixed):
        parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
        flat = [q for p in parts for q in shapely.get_parts(p)]
        if not flat:
            out[i] = None
        elif len(flat) == 1:
            out[i] = flat[0]
        else:
            out[i] = shapely.multipolygons(flat)
    return out


def postprocess(
    pixel_geoms: Any,
    pixel_count: Any,
    prob_sum: Any,
    *,
    affine: Affine | Sequence[float],
    crs: Any,
    simplify_m: float = 0.0,
    min_area_m2: float = 0.0,
    fill_holes_m2: float = 0.0,
    scene_shape: tuple[int, int] | None = None,
) -> WorldPolygons:
    """Merged pixel polygons -> world polygons with area, score and pixel count.

    Steps, in this order (all in metres, so independent of the block grid):

    1. ``score = prob_sum / pixel_count``: the mean probability of the polygon's pixels.
    2. Holes smaller than ``fill_holes_m2`` are filled.
    3. Simplification with a tolerance of ``simplify_m`` metres, converted to pixels with
       :func:`pixel_size_m` at the scene centre (topology-preserving; each ring is first
       put in a canonical form, so equal shapes simplify equally whatever their vertex
       order). A result that is not valid is repaired, keeping only polygonal parts.
    4. Conversion to world coordinates; ``area_m2`` of the final geometry.
    5. Geometries smaller than ``min_area_m2`` (or empty) are dropped.

    Args:
        pixel_geoms, pixel_count, prob_sum: from :class:`geounet.vectorize.seams.Polygons`.
        affine: the scene's pixel -> CRS transform.
        crs: the scene's CRS (pyproj, rasterio, EPSG code or WKT).
        simplify_m, min_area_m2, fill_holes_m2: 0 disables each step.
        scene_shape: ``(height, width)`` in pixels; its centre is where the pixel size is
            measured. Defaults to the centre of the polygons' extent.

    Returns:
        :class:`WorldPolygons` with the kept polygons, in input order.

    Raises:
        ConfigError: an option is negative or not finite.
        ValueError: inputs of different lengths, a degenerate affine or an unusable CRS.
    """
    simplify_m = _check_option("simplify_m", simplify_m)
    min_area_m2 = _check_option("min_area_m2", min_area_m2)
    fill_holes_m2 = _check_option("fill_holes_m2", fill_holes_m2)
    t = _as_affine(affine)
    crs = _as_crs(crs)
    geoms = np.asarray(pixel_geoms, dtype=object).reshape(-1)
    count = np.asarray(pixel_count, dtype=np.int64).reshape(-1)
    sums = np.asarray(prob_sum, dtype=np.float64).reshape(-1)
    if not len(geoms) == len(count) == len(sums):
        raise ValueError(
            f"pixel_geoms, pixel_count and prob_sum differ in length: {len(geoms)}, {len(count)}, {len(sums)}"
        )
    if len(geoms) == 0:
        empty = np.zeros(0, dtype=np.float64)
        return WorldPolygons(
            np.empty(0, dtype=object), empty, empty.copy(), np.zeros(0, np.int64), np.empty(0, dtype=object)
        )

    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(count > 0, sums / np.maximum(count, 1), np.nan)

    if fill_holes_m2 > 0:
        geoms = _fill_holes(geoms, fill_holes_m2, t, crs)

    if simplify_m > 0:
        if scene_shape is not None:
            cx, cy = scene_shape[1] / 2.0, scene_shape[0] / 2.0
        else:
            x0, y0, x1, y1 = shapely.total_bounds(geoms)
            cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        center = (t.a * cx + t.b * cy + t.c, t.d * cx + t.e * cy + t.f)
        tolerance_px = simplify_m / pixel_size_m(t, crs, center)
        # Canonical rings (start at the lowest vertex, no collinear vertices), so that the
        # same shape simplifies the same way however its rings were built.
        canonical = shapely.normalize(shapely.simplify(shapely.normalize(geoms), 0.0, preserve_topology=False))
        geoms = _polygonal(shapely.simplify(canonical, tolerance_px, preserve_topology=True))

    world = to_world(geoms, t)
    area = areas_m2(world, crs)
    keep = ~shapely.is_missing(world) & ~shapely.is_empty(world) & (area >= min_area_m2)
    if min_area_m2 == 0:
        keep &= area > 0
    return WorldPolygons(world[keep], area[keep], score[keep], count[keep], geoms[keep])


def single_parts(geoms: Any, area: Any, score: Any, crs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split any MultiPolygon (simplification can produce one) so layers hold Polygons only;
    parts keep their polygon's score and get their own area (m², as :func:`areas_m2`)."""
    geoms = np.asarray(geoms, dtype=object)
    multi = shapely.get_type_id(geoms) != 3 if len(geoms) else np.zeros(0, bool)
    if not multi.any():
        return geoms, np.asarray(area), np.asarray(score)
    parts, idx = shapely.get_parts(geoms, return_index=True)
    parts_area = np.asarray(area)[idx].astype(np.float64)
    from_multi = multi[idx]
    if from_multi.any():
        parts_area[from_multi] = areas_m2(parts[from_multi], _as_crs(crs))
    return parts, parts_area, np.asarray(score)[idx]
