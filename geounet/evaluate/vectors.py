"""Reading truth and prediction vectors: any format and CRS that GDAL reads, classes selected
by layer name, file name, a class field or geometry type.

:func:`read_vectors` reads one file or one geounet scene folder into a
:class:`SceneVectors` (buildings, road surfaces, road centerlines); :func:`read_sources`
reads and merges every source of one side of a scene (files or in-memory frames);
:func:`choose_metric_crs` picks the CRS in metres in which everything is then measured.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import geopandas as gpd
import numpy as np
import pyogrio
import pyogrio.errors
from pyproj import CRS

from geounet.errors import ConfigError, SceneReadError
from geounet.export.layout import GPKG_NAME, centerline_layer, geojson_name

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CLASSES",
    "PRED_FALLBACK",
    "PRED_FILES",
    "SceneVectors",
    "VectorSource",
    "choose_metric_crs",
    "normalise_classes",
    "read_sources",
    "read_vectors",
    "reproject",
]

#: Values of the class field that select buildings and roads (compared case-insensitively,
#: so the defaults also match geounet's own ``class`` = ``building`` / ``road``).
DEFAULT_CLASSES: Mapping[str, str] = {"building": "Building", "road": "Road"}

#: File names of one scene in geounet's output layout (``OUT/<scene>/...``).
# the scene folder's names (export.layout): polygons per class and the road graph
PRED_FILES = (geojson_name("building"), geojson_name("road"), geojson_name(centerline_layer("road")))
PRED_FALLBACK = GPKG_NAME

Role = Literal["buildings", "roads", "road_centerlines"]


@dataclass
class SceneVectors:
    """The labelled layers of one scene; ``None`` means "this class is not labelled here".

    An empty GeoSeries means "labelled, and there is none" (every prediction is then a
    false positive), while ``None`` keeps the class out of the scores.
    """

    buildings: gpd.GeoSeries | None = None
    roads: gpd.GeoSeries | None = None  # road surfaces (polygons)
    road_centerlines: gpd.GeoSeries | None = None  # lines
    sources: list[str] = field(default_factory=list)

    def layers(self) -> dict[str, gpd.GeoSeries]:
        """The labelled layers by role (``None`` ones left out)."""
        return {
            k: v
            for k, v in (
                ("buildings", self.buildings),
                ("roads", self.roads),
                ("road_centerlines", self.road_centerlines),
            )
            if v is not None
        }

    def merged(self, other: SceneVectors, crs: CRS) -> SceneVectors:
        """Both scenes' layers reprojected to ``crs`` and concatenated role by role."""
        out = SceneVectors(sources=self.sources + other.sources)
        for role in ("buildings", "roads", "road_centerlines"):
            parts = [s for s in (getattr(self, role), getattr(other, role)) if s is not None]
            if parts:
                what = f"{role} of {', '.join(self.sources + other.sources) or 'the data'}"
                setattr(out, role, _concat([reproject(s, crs, what) for s in parts], crs))
        return out

    def to_crs(self, crs: CRS) -> SceneVectors:
        """Every labelled layer reprojected to ``crs`` (a new object; layers already in it are shared)."""
        out = SceneVectors(sources=list(self.sources))
        for role, s in self.layers().items():
            setattr(out, role, reproject(s, crs, f"{role} of {', '.join(self.sources) or 'the data'}"))
        return out

    def has_roads(self) -> bool:
        """Whether the scene labels roads at all (as surfaces or as centerlines)."""
        return self.roads is not None or self.road_centerlines is not None


def _concat(parts: list[gpd.GeoSeries], crs: CRS) -> gpd.GeoSeries:
    vals = [np.asarray(p.values, dtype=object) for p in parts]
    return gpd.GeoSeries(np.concatenate(vals) if vals else [], crs=crs)


def reproject(s: gpd.GeoSeries, crs: CRS, what: str) -> gpd.GeoSeries:
    """``s`` in ``crs`` (``s`` itself when already there); ``what`` names it when it has no CRS."""
    if s.crs is None:
        if len(s) == 0:
            return gpd.GeoSeries([], crs=crs)
        raise ConfigError(f"{what} have no CRS; write the file with a CRS (GeoJSON is WGS84 by definition)")
    return s if CRS.from_user_input(s.crs) == crs else s.to_crs(crs)


def _role_from_name(name: str) -> Role | None:
    """``..._buildings`` -> buildings, ``..._roads`` -> roads, ``..._road_centerlines`` -> centerlines."""
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    if not tokens:
        return None
    last = tokens[-1]
    if last in ("centerlines", "centrelines", "centerline", "centreline"):
        return "road_centerlines"
    if last in ("roads", "road"):
        return "roads"
    if last in ("buildings", "building"):
        return "buildings"
    return None


def _split_by_geometry(s: gpd.GeoSeries, role: Role | None, source: str) -> SceneVectors:
    """Assign the polygons and lines of one selection to buildings / road surfaces / centerlines.

    ``role`` comes from a layer or file name (or a class value); ``None`` means "decide by
    geometry": polygons are buildings, lines road centerlines. A selection without any
    feature still marks its role as labelled (an empty layer), except that an unnamed empty
    layer counts as buildings.
    """
    types = s.geom_type.fillna("")
    is_poly = types.isin(["Polygon", "MultiPolygon"])
    is_line = types.isin(["LineString", "MultiLineString", "LinearRing"])
    other = int((~is_poly & ~is_line & (types != "")).sum())
    if other:
        log.warning("%s: %d features are neither polygons nor lines and are ignored", source, other)
    poly, line = s[is_poly.to_numpy()], s[is_line.to_numpy()]
    out = SceneVectors(sources=[source])
    if role == "buildings":
        out.buildings = poly
        if len(line):
            log.warning("%s: %d line features in a building selection are ignored", source, len(line))
    elif role == "roads":
        out.roads = poly if len(poly) or not len(line) else None
        out.road_centerlines = line if len(line) else None
    elif role == "road_centerlines":
        out.road_centerlines = line
        out.roads = poly if len(poly) else None
    else:
        out.buildings = poly if len(poly) or not len(line) else None
        out.road_centerlines = line if len(line) else None
    return out


def _read_layer(path: Path, layer: str | None) -> gpd.GeoDataFrame:
    try:
        return gpd.read_file(path, layer=layer, engine="pyogrio")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise SceneReadError(path, f"layer {layer!r} cannot be read: {exc}") from None
    except Exception as exc:  # GDAL raises many types for corrupt files
        raise SceneReadError(path, f"cannot be read as a vector file: {exc}") from None


def _select_classes(
    df: gpd.GeoDataFrame, field_name: str, classes: Mapping[str, str], source: str, explicit: bool
) -> SceneVectors:
    """Rows whose ``field_name`` equals a class value (case-insensitive) become that class.

    A class whose value occurs nowhere in the layer is "not labelled" (``None``) rather than
    "labelled and empty", so that a building-only file does not turn predicted roads into
    false positives.
    """
    if field_name not in df.columns:
        fields = ", ".join(str(c) for c in df.columns if c != df.geometry.name)
        raise ConfigError(f"{source}: no field {field_name!r}; its fields are {fields}")
    values = df[field_name].astype("string").str.strip().str.lower()
    out = SceneVectors(sources=[source])
    matched = 0
    for key, value in classes.items():
        hit = (values == str(value).strip().lower()).fillna(False).to_numpy(dtype=bool)
        matched += int(hit.sum())
        if not hit.any():
            log.info("%s: no feature has %s = %r; %s is not scored", source, field_name, value, key)
            continue
        part = _split_by_geometry(df.geometry[hit], "buildings" if key == "building" else "roads", source)
        if key == "building":
            out.buildings = part.buildings
        else:
            out.roads, out.road_centerlines = part.roads, part.road_centerlines
    if explicit and matched == 0 and len(df):
        present = sorted(map(str, df[field_name].dropna().unique()))[:20]
        wanted = ", ".join(f"{k}={v!r}" for k, v in classes.items())
        raise ConfigError(f"{source}: no feature has {field_name} in ({wanted}); values present: {', '.join(present)}")
    return out


def normalise_classes(classes: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of ``classes`` (``None``: :data:`DEFAULT_CLASSES`) whose keys are checked."""
    c = dict(DEFAULT_CLASSES if classes is None else classes)
    unknown = set(c) - {"building", "road"}
    if unknown:
        raise ConfigError(
            f"classes keys must be 'building' and/or 'road', got {sorted(unknown)}; map those "
            "keys to values of the class field, e.g. {'building': 'Building', 'road': 'Road'}"
        )
    return c


def read_vectors(
    path: str | Path,
    *,
    layer: str | None = None,
    class_field: str | None = None,
    classes: Mapping[str, str] | None = None,
    require_field: bool = True,
) -> SceneVectors:
    """Read buildings, road surfaces and road centerlines of one scene from a file or folder.

    Which features are what, in order:

    1. A **folder** is one scene in geounet's output layout: ``buildings.geojson``,
       ``roads.geojson`` and the road graph ``road_centerlines.geojson`` (or ``polygons.gpkg``
       when none exists); a missing file means that class was not predicted (empty).
    2. With ``class_field``: rows of ``layer`` (or the only layer) whose field equals
       ``classes["building"]`` / ``classes["road"]`` (case-insensitive) are buildings / roads
       (road polygons are surfaces, road lines centerlines), e.g. ``Niveau_2`` = ``Building``.
    3. Without ``layer``, layers *named* ``buildings``, ``roads``, ``road_centerlines`` (or
       ending so, e.g. ``scene_roads``) are read by name — the layout of ``<stem>_truth.gpkg``.
    4. Otherwise ``layer`` (or the only layer) is one role given by its name or the file
       name (``<stem>_buildings.geojson``, ``<stem>_roads.geojson``); if neither names one, a
       text column ``class`` holding ``building``/``road`` splits the rows (geounet's own
       files), else polygons are buildings and lines road centerlines (e.g. a
       single-layer building GeoPackage with a misnamed layer, SpaceNet road centerlines).

    With ``require_field=False`` a ``class_field`` that the layer lacks is ignored (rule 2 is
    skipped) instead of being an error; evaluation reads prediction files this way, so one
    ``class_field`` serves a truth file and a prediction file of the same schema.

    Raises:
        ConfigError: the path does not exist, the layer or field is unknown, or a file with
            several unrecognised layers needs ``layer``.
        SceneReadError: the file exists but GDAL cannot read it.
    """
    p = Path(path)
    cls_map = normalise_classes(classes)
    if not p.exists():
        raise ConfigError(f"{p} does not exist")
    if p.is_dir():
        found = [p / n for n in PRED_FILES if (p / n).exists()]
        if not found:
            if (p / PRED_FALLBACK).exists():
                return read_vectors(p / PRED_FALLBACK, classes=cls_map)
            raise ConfigError(
                f"{p} holds none of {', '.join(PRED_FILES)} or {PRED_FALLBACK}; expected one scene of "
                "geounet's output (OUT/<scene>/buildings.geojson, roads.geojson)"
            )
        parts = [read_vectors(f, classes=cls_map) for f in found]
        out = _merge_all(parts)
        # A geounet scene folder predicts both classes: a missing file means "none predicted".
        if out.buildings is None:
            out.buildings = gpd.GeoSeries([], crs="EPSG:4326")
        if out.roads is None and out.road_centerlines is None:
            out.roads = gpd.GeoSeries([], crs="EPSG:4326")
        return out

    try:
        info = pyogrio.list_layers(p)
    except Exception as exc:
        raise SceneReadError(p, f"cannot be read as a vector file: {exc}") from None
    names = [str(n) for n in info[:, 0]] if len(info) else []
    if not names:
        raise SceneReadError(p, "holds no vector layer")
    if layer is not None and layer not in names:
        raise ConfigError(f"{p} has no layer {layer!r}; its layers are {', '.join(names)}")

    if class_field is not None and not require_field:
        lyr = layer or (names[0] if len(names) == 1 else None)
        fields = pyogrio.read_info(p, layer=lyr)["fields"] if lyr is not None else []
        if class_field not in list(fields):
            class_field = None
    if class_field is not None:
        if layer is None and len(names) > 1:
            raise ConfigError(f"{p} has layers {', '.join(names)}; choose the one holding {class_field!r} with layer=")
        lyr = layer or names[0]
        df = _read_layer(p, lyr)
        return _select_classes(df, class_field, cls_map, f"{p}:{lyr}", explicit=True)

    if layer is None:
        named = {n: _role_from_name(n) for n in names}
        recognised = {n: r for n, r in named.items() if r is not None}
        if len(names) > 1 and recognised:
            return _merge_all(
                [_split_by_geometry(_read_layer(p, n).geometry, r, f"{p}:{n}") for n, r in recognised.items()]
            )
        if len(names) > 1:
            raise ConfigError(
                f"{p} has layers {', '.join(names)} and none is named buildings/roads/road_centerlines; "
                "choose one with layer= (--truth-layer)"
            )
    lyr = layer or names[0]
    source = f"{p}:{lyr}" if len(names) > 1 or layer else str(p)
    return _classify_frame(_read_layer(p, lyr), _role_from_name(lyr) or _role_from_name(p.stem), source)


def _classify_frame(df: gpd.GeoDataFrame, role: Role | None, source: str) -> SceneVectors:
    """Rule 4 of :func:`read_vectors`: a named role, else geounet's ``class`` column, else geometry."""
    if role is None and "class" in df.columns:
        values = df["class"]
        if values.dtype == object or str(values.dtype).startswith("string"):
            lowered = {str(v).strip().lower() for v in values.dropna().unique()}
            if lowered & {"building", "road"}:
                return _select_classes(df, "class", {"building": "building", "road": "road"}, source, explicit=False)
    return _split_by_geometry(df.geometry, role, source)


VectorSource: TypeAlias = str | Path | SceneVectors | gpd.GeoDataFrame | gpd.GeoSeries


def _read_one(
    src: VectorSource,
    what: str,
    *,
    layer: str | None,
    class_field: str | None,
    classes: Mapping[str, str] | None,
    require_field: bool,
) -> SceneVectors:
    """One source: a :class:`SceneVectors` as it is, a frame in memory, else a path for :func:`read_vectors`."""
    if isinstance(src, SceneVectors):
        return src
    if isinstance(src, (gpd.GeoDataFrame, gpd.GeoSeries)):
        if src.crs is None and len(src):
            raise ConfigError(f"{what} in memory have no CRS; set one with .set_crs()")
        source = f"{what} (in memory)"
        if isinstance(src, gpd.GeoSeries):
            return _split_by_geometry(src, None, source)
        if class_field is not None and (class_field in src.columns or require_field):
            return _select_classes(src, class_field, normalise_classes(classes), source, explicit=True)
        return _classify_frame(src, None, source)
    return read_vectors(src, layer=layer, class_field=class_field, classes=classes, require_field=require_field)


def read_sources(
    srcs: VectorSource | Sequence[VectorSource],
    what: str,
    *,
    layer: str | None = None,
    class_field: str | None = None,
    classes: Mapping[str, str] | None = None,
    require_field: bool = True,
) -> SceneVectors:
    """Read every source of one side of a scene and merge them (reprojected to the first one's CRS).

    ``srcs`` is one source or a list/tuple of them: paths (read with :func:`read_vectors`
    and the options here), :class:`SceneVectors`, or GeoDataFrames/GeoSeries in memory
    (which must carry a CRS). ``what`` (``"truth"``, ``"predictions"``) names the side in
    messages. An empty list gives a :class:`SceneVectors` that labels nothing.
    """
    items = list(srcs) if isinstance(srcs, (list, tuple)) else [srcs]
    if not items:
        return SceneVectors(sources=[])
    return _merge_all(
        [
            _read_one(s, what, layer=layer, class_field=class_field, classes=classes, require_field=require_field)
            for s in items
        ]
    )


def _merge_all(parts: Sequence[SceneVectors]) -> SceneVectors:
    """Merge the layers of several files of one scene (reprojected to the first file's CRS)."""
    if not parts:
        return SceneVectors(sources=[])
    crs = _first_crs(parts) or CRS.from_epsg(4326)
    out = SceneVectors(sources=[])
    for part in parts:
        out = out.merged(part, crs)
    return out


def _first_crs(scenes: Sequence[SceneVectors]) -> CRS | None:
    for sc in scenes:
        for s in sc.layers().values():
            if s.crs is not None and len(s):
                return CRS.from_user_input(s.crs)
    return None


def _is_metric(crs: CRS | None) -> bool:
    if crs is None or not crs.is_projected:
        return False
    units = {ax.unit_name.lower() for ax in crs.axis_info}
    return bool(units) and units <= {"metre", "meter", "m"}


def choose_metric_crs(*scenes: SceneVectors, raster_crs: CRS | None = None) -> CRS:
    """The CRS in which areas and IoU are computed: metres on a projected CRS.

    Order: the raster's CRS if it is projected in metres; else the first projected-in-metres
    CRS among the scenes' layers (truth first); else the UTM zone of the data (e.g. WGS84
    GeoJSON, or a CRS in US survey feet). Areas and lengths are then in m² and m.
    """
    if _is_metric(raster_crs):
        return raster_crs  # type: ignore[return-value]
    for sc in scenes:
        for s in sc.layers().values():
            if s.crs is not None and len(s) and _is_metric(CRS.from_user_input(s.crs)):
                return CRS.from_user_input(s.crs)
    for sc in scenes:
        for s in sc.layers().values():
            if s.crs is not None and len(s) and not s.is_empty.all():
                utm = s[~s.is_empty].estimate_utm_crs()
                return CRS.from_user_input(utm)
    if raster_crs is not None:
        return raster_crs if _is_metric(raster_crs) else CRS.from_epsg(3857)
    return CRS.from_epsg(3857)  # nothing to locate: any metric CRS will do for empty inputs
