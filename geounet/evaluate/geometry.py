"""Geometry inputs of the metrics, coerced once to one form: an object array of valid polygons.

Every metric accepts a GeoSeries, a GeoDataFrame, a list or an array of shapely geometries
(:data:`GeometryInput`). :func:`geometry_array` turns any of them into an object array,
:func:`polygonal` repairs and keeps the areal part of each item (positions preserved), and
:func:`check_same_crs` refuses two inputs whose CRSs differ, so the metrics below see one
canonical shape of data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from geounet.errors import ConfigError

__all__ = ["GeometryInput", "check_same_crs", "geometry_array", "polygonal"]

GeometryInput: TypeAlias = gpd.GeoSeries | gpd.GeoDataFrame | Sequence[BaseGeometry | None] | np.ndarray

# shapely type ids
_POLYGON, _MULTIPOLYGON, _COLLECTION = 3, 6, 7


def geometry_array(geoms: GeometryInput, what: str) -> np.ndarray:
    """A GeoSeries, GeoDataFrame, list or array of shapely geometries as an object array.

    ``what`` names the input in the error raised for an item that is not a geometry.
    """
    if isinstance(geoms, gpd.GeoDataFrame):
        geoms = geoms.geometry
    if isinstance(geoms, gpd.GeoSeries):
        return np.asarray(geoms.values, dtype=object)
    arr = np.empty(len(geoms), dtype=object)
    for i, g in enumerate(geoms):
        if g is not None and not isinstance(g, BaseGeometry):
            raise ConfigError(f"{what}: item {i} is a {type(g).__name__}, not a shapely geometry")
        arr[i] = g
    return arr


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Valid polygonal geometries: invalid ones repaired with ``make_valid``, non-areal parts dropped.

    Null and non-polygonal inputs become empty polygons (so positions are preserved).
    A bow-tie becomes a MultiPolygon of its two lobes; a collapsed ring becomes empty.
    Cost: one validity test per item, one repair per invalid item; returns a copy.
    """
    out = np.array(geoms, dtype=object, copy=True)
    missing = shapely.is_missing(out)
    out[missing] = shapely.Polygon()
    bad = ~shapely.is_valid(out)
    if bad.any():
        out[bad] = shapely.make_valid(out[bad], method="structure", keep_collapsed=False)
    types = shapely.get_type_id(out)
    for i in np.flatnonzero((types != _POLYGON) & (types != _MULTIPOLYGON)):
        parts = shapely.get_parts(out[i]) if types[i] == _COLLECTION else np.array([out[i]], dtype=object)
        polys = [p for p in parts if shapely.get_type_id(p) in (_POLYGON, _MULTIPOLYGON) and not p.is_empty]
        out[i] = shapely.union_all(polys) if polys else shapely.Polygon()
    return out


def check_same_crs(a: GeometryInput, b: GeometryInput, what: str) -> None:
    """Refuse two inputs that both carry a CRS and whose CRSs differ (``what`` names the caller)."""
    ca = getattr(a, "crs", None)
    cb = getattr(b, "crs", None)
    if ca is not None and cb is not None and CRS.from_user_input(ca) != CRS.from_user_input(cb):
        raise ConfigError(
            f"{what}: predictions are in {CRS.from_user_input(ca).to_string()} and truth in "
            f"{CRS.from_user_input(cb).to_string()}; reproject both to one metric CRS first "
            "(evaluate_scene does this for you)"
        )
