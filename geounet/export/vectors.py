"""Polygon layers to files: GeoJSON (RFC 7946) per class and one GeoPackage, atomically.

One registry, :data:`VECTOR_WRITERS`, for the polygon formats:

* ``<class>.geojson`` -- RFC 7946: WGS84 lon/lat, counter-clockwise exteriors, cut at the
  antimeridian (pyproj + GEOS, or GDAL's ``RFC7946=YES`` for layers crossing ±180°);
* ``polygons.gpkg`` -- the same polygons in the scene's CRS, one layer per class.

Road graphs travel in the same ``layers`` mapping under ``<class>_centerlines`` (LineStrings:
a GeoJSON file and a layer) and ``<class>_nodes`` (Points: a layer only); the pixel outlines
of regularized classes under ``<classes>_raw`` (Polygons: a layer only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from geounet.atomic import atomic_output
from geounet.errors import OutputError
from geounet.export.layout import GPKG_NAME, geojson_name, is_raw_layer, plural
from geounet.heap import trim_heap


def _io_error(path: Path, exc: Exception) -> OutputError:
    return OutputError(f"cannot write {path}: {exc}")


# Decimal places of GeoJSON coordinates (degrees): 1e-7 deg is about 1 cm, finer than any
# pixel this tool polygonizes, and what GDAL's RFC 7946 mode writes by default.
GEOJSON_DECIMALS = 7
# Features serialized per step: a step holds at most this many features ...
GEOJSON_CHUNK = 2_000
# ... and about this many vertices (one larger polygon is a step of its own). Reprojected,
# oriented and rounded copies and the text exist for one step at a time, so a 12000^2 px
# scene's road network (1.5 M vertices) is not held three times over.
GEOJSON_CHUNK_VERTICES = 250_000


class _NeedsCut(Exception):
    """A polygon crosses the antimeridian: the layer goes through GDAL's RFC 7946 writer."""


def write_geojson(gdf: gpd.GeoDataFrame, final: Path) -> None:
    """RFC 7946 GeoJSON: WGS84 lon/lat, counter-clockwise exteriors, cut at the antimeridian,
    ``bbox`` on the collection and on every feature.

    Layers that do not cross the antimeridian (nearly all) are reprojected with pyproj and
    written step by step by :func:`_write_geojson_fast` (GEOS serializes the geometries); a
    layer with any polygon crossing ±180° goes through GDAL's ``RFC7946=YES`` writer, which
    cuts it. Both give the same features (tests/test_export.py); the fast one took 0.12 s
    instead of 0.46 s for 3,186 building outlines (231 k vertices) on this project's machine.
    """
    with atomic_output(final) as tmp:
        try:
            try:
                _write_geojson_fast(gdf, tmp, name=final.stem)
            except _NeedsCut:
                tmp.unlink(missing_ok=True)
                pyogrio.write_dataframe(  # layer= names the collection (else the temporary file's name)
                    gdf,
                    tmp,
                    layer=final.stem,
                    driver="GeoJSON",
                    geometry_type="Unknown",
                    layer_options={
                        "RFC7946": "YES",
                        "WRITE_BBOX": "YES",
                        "COORDINATE_PRECISION": str(GEOJSON_DECIMALS),
                    },
                )
            trim_heap()  # the text and copies of a large layer are garbage now
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
            raise _io_error(final, exc) from exc


def _crosses_antimeridian(lonlat: np.ndarray) -> bool:
    """True when a polygon spans more than 180° of longitude or leaves [-180, 180] (it
    crosses the antimeridian and must be cut)."""
    if len(lonlat) == 0:
        return False
    b = shapely.bounds(lonlat)
    b = b[~np.isnan(b).any(axis=1)]
    return bool(((b[:, 2] - b[:, 0]) > 180).any() or (b[:, [0, 2]] < -180).any() or (b[:, [0, 2]] > 180).any())


def _steps(geoms: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` feature ranges of at most :data:`GEOJSON_CHUNK` features and about
    :data:`GEOJSON_CHUNK_VERTICES` vertices."""
    if len(geoms) == 0:
        return []
    ends = np.cumsum(shapely.get_num_coordinates(geoms))
    out, start = [], 0
    while start < len(geoms):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + GEOJSON_CHUNK_VERTICES, side="right"))
        stop = min(max(stop, start + 1), start + GEOJSON_CHUNK, len(geoms))
        out.append((start, stop))
        start = stop
    return out


def _write_geojson_fast(gdf: gpd.GeoDataFrame, path: Path, *, name: str) -> None:
    """FeatureCollection of ``gdf`` in lon/lat, written step by step (:func:`_steps`).

    The collection's ``bbox`` follows its features (known only once all are written; JSON
    members have no order). Raises :class:`_NeedsCut` before writing a step holding a
    polygon that crosses the antimeridian.
    """
    from pyproj import CRS, Transformer

    columns = [c for c in gdf.columns if c != gdf.geometry.name]
    values = [gdf[c].tolist() for c in columns]
    geoms_all = np.asarray(gdf.geometry.array, dtype=object)
    to_wgs = None
    if gdf.crs is None or CRS.from_user_input(gdf.crs).to_epsg() != 4326:
        tr = Transformer.from_crs(gdf.crs, 4326, always_xy=True)  # as GeoDataFrame.to_crs

        def to_wgs(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))

    total = np.array([np.inf, np.inf, -np.inf, -np.inf])
    header = json.dumps({"type": "FeatureCollection", "name": name})[:-1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + ', "features": [\n')
        for start, stop in _steps(geoms_all):
            geoms = geoms_all[start:stop]
            if to_wgs is not None:
                geoms = shapely.transform(geoms, to_wgs)
            if _crosses_antimeridian(geoms):
                raise _NeedsCut
            geoms = shapely.orient_polygons(geoms, exterior_cw=False)  # RFC 7946: CCW
            geoms = shapely.transform(geoms, lambda xy: np.round(xy, GEOJSON_DECIMALS))
            bounds = shapely.bounds(geoms)
            texts = shapely.to_geojson(geoms)
            for j, i in enumerate(range(start, stop)):
                props = json.dumps({c: _json_value(v[i]) for c, v in zip(columns, values)})
                f.write(",\n" if i else "")
                if texts[j] is None or shapely.is_empty(geoms[j]):
                    f.write(f'{{"type": "Feature", "properties": {props}, "geometry": null}}')
                    continue
                f.write(
                    f'{{"type": "Feature", "properties": {props}, "bbox": {json.dumps(bounds[j].tolist())}, '
                    '"geometry": '
                )
                f.write(texts[j])
                f.write("}")
            ok = ~np.isnan(bounds).any(axis=1)
            if ok.any():
                total = np.r_[
                    np.minimum(total[:2], bounds[ok, :2].min(axis=0)), np.maximum(total[2:], bounds[ok, 2:].max(axis=0))
                ]
            del geoms, texts, bounds
        f.write("\n]")
        if np.isfinite(total).all():
            f.write(f', "bbox": {json.dumps(total.tolist())}')
        f.write("\n}\n")
        f.flush()
        os.fsync(f.fileno())


def _json_value(v: Any) -> Any:
    """Plain JSON value of a table cell (NaN and missing values become null)."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def _geometry_type(name: str) -> str:
    """A layer's geometry type: graph edges and nodes by their layer names, else polygons."""
    if name.endswith("_centerlines"):
        return "LineString"
    if name.endswith("_nodes"):
        return "Point"
    return "Polygon"


def write_gpkg(layers: dict[str, gpd.GeoDataFrame], final: Path) -> None:
    """One GeoPackage layer per class (and per linear class its centerlines and nodes, per
    regularized class its pixel outlines), in the scene's CRS."""
    with atomic_output(final) as tmp:
        try:
            for name, gdf in layers.items():
                pyogrio.write_dataframe(
                    gdf,
                    tmp,
                    layer=name,
                    driver="GPKG",
                    geometry_type=_geometry_type(name),
                    append=tmp.exists(),
                    promote_to_multi=False,
                )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
            raise _io_error(final, exc) from exc


VectorWriter = Callable[[dict[str, gpd.GeoDataFrame], Path], list[Path]]


def _geojson_writer(layers: dict[str, gpd.GeoDataFrame], folder: Path) -> list[Path]:
    out = []
    for name, gdf in layers.items():
        if _geometry_type(name) == "Point" or is_raw_layer(name):
            # in the GeoPackage only: graph nodes (ids and degrees; the edges carry u, v) and
            # the pixel outlines of regularized classes
            continue
        path = folder / geojson_name(name)
        write_geojson(gdf, path)
        out.append(path)
    return out


def _gpkg_writer(layers: dict[str, gpd.GeoDataFrame], folder: Path) -> list[Path]:
    path = folder / GPKG_NAME
    # class layers are named in the plural (buildings); the others already carry their names
    named = {k if _geometry_type(k) != "Polygon" or is_raw_layer(k) else plural(k): v for k, v in layers.items()}
    write_gpkg(named, path)
    return [path]


VECTOR_WRITERS: dict[str, VectorWriter] = {"geojson": _geojson_writer, "gpkg": _gpkg_writer}
