"""A scene's outputs as a STAC Item (``item.json``) and a run's scenes as a STAC Catalog
(``OUT/catalog.json``), so a downstream catalog, a web map or the next job can find them.

The item describes the scene's footprint (lon/lat geometry and bbox, the projection extension
from the scene's CRS and grid), its datetime (the source STAC item's, else the scene file's
modification time, else the time of the run), one asset per output (GeoJSON and GeoPackage with
roles ``data`` and ``labels``, the probability COG with the raster extension's band
description, the quicklook as ``thumbnail``, scene.json as ``metadata``), the label extension
(classes and polygon counts) and the model that produced it (``geounet:model``: checkpoint
file, content hash, architecture, classes, pixel size). A scene that came from a STAC item
keeps its id and links to it (``rel: source``, as the label extension asks).

The catalog is self-contained: relative links only, no ``self`` links; it lists the items of the
run's finished scenes and is rewritten atomically as scenes finish, so an interrupted run leaves
a valid catalog of the scenes it completed. Both are plain JSON written through
:mod:`geounet.atomic`; pystac builds the extension fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from affine import Affine
from pyproj import CRS, Transformer
from pystac.extensions.label import LabelClasses, LabelCount, LabelExtension, LabelOverview, LabelType
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from geounet import __version__
from geounet.atomic import write_json
from geounet.checkpoint import CheckpointMetadata
from geounet.export.layout import (
    CATALOG_NAME,
    GPKG_NAME,
    ITEM_NAME,
    PROBABILITY_NAME,
    QUICKLOOK_NAME,
    SCENE_JSON,
    geojson_name,
    plural,
)
from geounet.scene.source import SceneInfo, is_remote
from geounet.scene.stac import StacScene

GEOPACKAGE_TYPE = "application/geopackage+sqlite3"
EDGE_POINTS = 16  # points per side of the footprint: its edges curve in lon/lat


def footprint(crs_wkt: str, transform: Affine, width: int, height: int) -> tuple[dict[str, Any], list[float]]:
    """The scene's outline in lon/lat (WGS 84) as a GeoJSON Polygon, and its bbox.

    Each side is sampled at :data:`EDGE_POINTS` points, so a UTM or polar scene's outline keeps
    its shape in degrees. A scene that crosses ±180° is not cut into a MultiPolygon there, as
    STAC and RFC 7946 ask: its footprint and bbox then run the long way round the globe.
    """
    t = np.linspace(0.0, 1.0, EDGE_POINTS, endpoint=False)
    cols = np.concatenate([t * width, np.full_like(t, width), (1 - t) * width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * height, np.full_like(t, height), (1 - t) * height])
    a, b, c, d, e, f = list(transform)[:6]
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    to_wgs84 = Transformer.from_crs(CRS.from_wkt(crs_wkt), CRS.from_epsg(4326), always_xy=True)
    lon, lat = to_wgs84.transform(np.asarray(xs), np.asarray(ys))
    ring = [[round(float(x), 8), round(float(y), 8)] for x, y in zip(lon, lat)]
    if _signed_area(ring) < 0:  # RFC 7946: exterior rings counter-clockwise
        ring.reverse()
    ring.append(ring[0])
    bbox = [float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))]
    return {"type": "Polygon", "coordinates": [ring]}, [round(v, 8) for v in bbox]


def _signed_area(ring: Sequence[Sequence[float]]) -> float:
    x = np.asarray([p[0] for p in ring])
    y = np.asarray([p[1] for p in ring])
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2.0)


def scene_datetime(info: SceneInfo, source: StacScene | None) -> datetime:
    """The source item's datetime, else the local file's modification time, else now (UTC)."""
    if source is not None and source.datetime:
        when = datetime.fromisoformat(source.datetime.replace("Z", "+00:00"))
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if not is_remote(info.path):
        try:
            return datetime.fromtimestamp(os.stat(info.path).st_mtime, tz=timezone.utc).replace(microsecond=0)
        except OSError:
            pass
    return datetime.now(timezone.utc).replace(microsecond=0)


def model_reference(model: CheckpointMetadata, model_path: str) -> dict[str, Any]:
    """The model that made the outputs, as its card tells it: the fields are named after the
    machine-learning-model (MLM) extension's (``name``, ``architecture``, ``tasks``,
    ``framework``) without declaring it, since that extension describes a model's own item and
    requires its input and output specification; plus the checkpoint's content hash, classes,
    pixel size and the training data's sources with their terms and attribution (credit owed
    by whoever publishes the outputs)."""
    sources = model.provenance.get("data")
    data = []
    if isinstance(sources, list):
        for rec in sources:
            if isinstance(rec, dict) and isinstance(rec.get("source"), str):
                data.append({k: rec[k] for k in ("source", "terms", "attribution") if isinstance(rec.get(k), str)})
    return {
        "name": os.path.basename(model_path),
        "hash": model.content_hash,
        "short_hash": model.short_hash,
        "architecture": model.spec.arch,
        "width": model.spec.width,
        "depth": model.spec.depth,
        "tasks": ["semantic-segmentation"],
        "framework": "pytorch",
        "classes": list(model.spec.classes),
        "gsd_m": model.gsd_m,
        "training_data": data,
    }


def _proj_code(info: SceneInfo) -> str | None:
    return f"EPSG:{info.epsg}" if info.epsg else None


def scene_item(
    *,
    info: SceneInfo,
    grid_transform: Affine,
    grid_shape: tuple[int, int],
    class_names: Sequence[str],
    counts: Mapping[str, int],
    written: Sequence[str],
    model: CheckpointMetadata,
    model_path: str,
    config_hash: str,
    source: StacScene | None = None,
) -> dict[str, Any]:
    """The STAC Item (as a dict) describing one finished scene folder.

    ``written``: the output file names in the folder (hrefs are relative to item.json, which
    sits beside them); ``grid_transform``/``grid_shape``: the model grid probability.tif is on.
    """
    geometry, bbox = footprint(info.crs_wkt, info.affine, info.width, info.height)
    item = pystac.Item(
        id=source.item_id if source is not None else info.stem,
        geometry=geometry,
        bbox=bbox,
        datetime=scene_datetime(info, source),
        properties={
            "title": f"geounet {', '.join(plural(c) for c in class_names)} of {info.stem}",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "geounet:version": __version__,
            "geounet:model": model_reference(model, model_path),
            "geounet:settings_hash": config_hash,
            "geounet:scene": info.path,
        },
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    code = _proj_code(info)
    proj.apply(
        code=code,
        wkt2=None if code else info.crs_wkt,
        shape=[info.height, info.width],
        transform=list(info.affine)[:6],
    )
    overview = [LabelCount.create(name=c, count=int(counts.get(c, 0))) for c in class_names]
    label = LabelExtension.ext(item, add_if_missing=True)
    label.apply(
        label_description=f"{', '.join(class_names)} segmented by geounet model {model.short_hash}",
        label_type=LabelType.VECTOR,
        label_properties=["class"],
        label_classes=[LabelClasses.create(classes=list(class_names), name="class")],
        label_tasks=["segmentation"],
        label_methods=["automated"],
        label_overviews=[LabelOverview.create(property_key="class", counts=overview)],
    )
    names = set(written)
    for c in class_names:
        name = geojson_name(c)
        if name in names:
            item.add_asset(
                plural(c),
                pystac.Asset(
                    f"./{name}",
                    title=f"{plural(c)}: polygons in WGS 84 (RFC 7946)",
                    media_type=pystac.MediaType.GEOJSON,
                    roles=["data", "labels"],
                ),
            )
    if GPKG_NAME in names:
        item.add_asset(
            "gpkg",
            pystac.Asset(
                f"./{GPKG_NAME}",
                title="every class as a layer, in the scene's CRS",
                media_type=GEOPACKAGE_TYPE,
                roles=["data", "labels"],
            ),
        )
    if PROBABILITY_NAME in names:
        asset = pystac.Asset(
            f"./{PROBABILITY_NAME}",
            title="per-class probability x 255, one uint8 band per class",
            media_type=pystac.MediaType.COG,
            roles=["data"],
        )
        item.add_asset("probability", asset)
        RasterExtension.ext(asset, add_if_missing=True).apply(
            bands=[RasterBand.create(data_type=DataType.UINT8, scale=1 / 255, offset=0.0) for _ in class_names]
        )
        asset.extra_fields["bands"] = [{"name": c, "description": f"probability of {c} x 255"} for c in class_names]
        # probability.tif is on the model grid (the scene's own unless resampled to the model's pixel size)
        ProjectionExtension.ext(asset).apply(
            code=code, wkt2=None if code else info.crs_wkt, shape=list(grid_shape), transform=list(grid_transform)[:6]
        )
    if QUICKLOOK_NAME in names:
        item.add_asset(
            "thumbnail",
            pystac.Asset(
                f"./{QUICKLOOK_NAME}",
                title="the scene with the outlines",
                media_type=pystac.MediaType.PNG,
                roles=["thumbnail", "overview"],
            ),
        )
    item.add_asset(
        "record",
        pystac.Asset(
            f"./{SCENE_JSON}",
            title="geounet's record of the scene (settings, tiling, timings)",
            media_type=pystac.MediaType.JSON,
            roles=["metadata"],
        ),
    )
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": f"../{CATALOG_NAME}", "type": pystac.MediaType.JSON},
        {"rel": "parent", "href": f"../{CATALOG_NAME}", "type": pystac.MediaType.JSON},
    ]
    if source is not None and source.item_href:
        links.append(
            {
                "rel": "source",
                "href": source.item_href,
                "type": pystac.MediaType.GEOJSON,
                "title": f"source imagery: STAC item {source.item_id}",
                "label:assets": [source.asset] if source.asset else [],
            }
        )
    else:
        links.append({"rel": "derived_from", "href": info.path, "type": pystac.MediaType.GEOTIFF, "title": "scene"})
    doc["links"] = links
    return doc


def write_item(folder: Path, doc: dict[str, Any]) -> Path:
    """Write a scene's item.json atomically; returns its path."""
    return write_json(doc, folder / ITEM_NAME)


def write_catalog(out: Path, folders: Sequence[str], *, description: str) -> Path:
    """Write OUT/catalog.json (atomically): a self-contained STAC Catalog linking the item.json
    of each scene folder in ``folders`` (names inside ``out``) that holds one."""
    links: list[dict[str, Any]] = [{"rel": "root", "href": f"./{CATALOG_NAME}", "type": pystac.MediaType.JSON}]
    for name in folders:
        if (out / name / ITEM_NAME).is_file():
            links.append({"rel": "item", "href": f"./{name}/{ITEM_NAME}", "type": pystac.MediaType.GEOJSON})
    doc = {
        "type": "Catalog",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [],
        "id": "geounet-results",
        "title": "geounet results",
        "description": description,
        "links": links,
    }
    return write_json(doc, out / CATALOG_NAME)
