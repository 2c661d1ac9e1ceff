"""Scenes from STAC: an Item, an ItemCollection (saved search results) or a static Catalog /
Collection walked recursively, local or by URL.

Each item gives one scene: the GeoTIFF asset picked by :func:`pick_asset` (by key, by role, or
the first GeoTIFF with role ``data`` or ``visual``), its href resolved against the item and
turned into a path GDAL opens (``s3://`` -> ``/vsis3/``, ``https://`` kept for GDAL's
``/vsicurl/``), and optionally the bands named in the asset's ``bands`` / ``eo:bands``. The
scene is then opened and checked like any other (:func:`geounet.scene.source.open_scene`: the
same driver allowlist and pixel budget). An item without a usable asset is a failed scene with
its reason, not a failed run; a document that is not STAC, or cannot be read, is a
:class:`~geounet.errors.ConfigError` (exit 2) naming the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pystac
from pystac.stac_io import StacIO

from geounet.errors import ConfigError, brief

# media types of a GeoTIFF asset (a COG is one); STAC writes them with or without the profile
GEOTIFF_TYPES = ("image/tiff; application=geotiff", "image/tiff", "image/geotiff")
AUTO_ROLES = ("data", "visual")  # roles of the asset `auto` picks, in order of preference
STAC_SUFFIXES = (".json", ".geojson")  # documents read as STAC where scenes are accepted
# the remote schemes GDAL reads through a virtual file system of its own
_VSI = {"s3://": "/vsis3/", "gs://": "/vsigs/", "az://": "/vsiaz/"}


@dataclass(frozen=True)
class StacScene:
    """One scene taken from a STAC item."""

    href: str  # the asset as GDAL opens it (local path or GDAL URL)
    item_id: str
    item_href: str | None  # the item's own location (None for items inside an ItemCollection)
    asset: str | None  # the asset's key in the item
    datetime: str | None  # ISO 8601: the item's datetime (or start_datetime)
    bands: tuple[int, ...] | None = None  # 1-based bands chosen by name; None: the model's
    error: str | None = None  # why the item gives no scene (then href names the item)

    def record(self) -> dict[str, Any]:
        """What scene.json and run.json keep about the source item."""
        return {"item_id": self.item_id, "item_href": self.item_href, "asset": self.asset, "datetime": self.datetime}


def is_stac_document(spec: str) -> bool:
    """True when a scene argument names a STAC document (a ``.json``/``.geojson`` file or URL)."""
    return spec.lower().split("?", 1)[0].endswith(STAC_SUFFIXES)


def gdal_path(href: str) -> str:
    """An asset href as GDAL opens it: ``file://`` -> path, ``s3://b/k`` -> ``/vsis3/b/k``;
    http(s) URLs and local paths stay (rasterio reads URLs through ``/vsicurl/``)."""
    if href.startswith("file://"):
        return href[len("file://") :]
    for scheme, prefix in _VSI.items():
        if href.startswith(scheme):
            return prefix + href[len(scheme) :]
    return href


def _is_geotiff(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower().replace(" ", "")
    if media:
        return media.startswith(("image/tiff", "image/geotiff"))
    return asset.href.lower().split("?", 1)[0].endswith((".tif", ".tiff"))


def pick_asset(item: pystac.Item, choice: str = "auto") -> tuple[str, pystac.Asset]:
    """The asset of ``item`` to segment.

    ``choice``: ``auto`` (the first GeoTIFF asset with role ``data``, else ``visual``, else the
    only GeoTIFF asset), an asset key, or ``role:NAME`` (the first GeoTIFF asset with that role).

    Raises:
        ValueError: no asset matches; the message lists the item's assets and the fix.
    """
    assets = item.assets
    listing = ", ".join(f"{k} ({a.media_type or 'no type'}; roles {a.roles or []})" for k, a in assets.items())
    listing = listing or "none"
    if choice != "auto" and not choice.startswith("role:"):
        if choice not in assets:
            raise ValueError(f"has no asset {choice!r} (assets: {listing}); pick one with --stac-asset KEY")
        return choice, assets[choice]
    tiffs = [(k, a) for k, a in assets.items() if _is_geotiff(a)]
    roles = [choice[len("role:") :]] if choice.startswith("role:") else list(AUTO_ROLES)
    for role in roles:
        for k, a in tiffs:
            if role in (a.roles or []):
                return k, a
    if choice == "auto" and len(tiffs) == 1:
        return tiffs[0]
    want = (
        "one GeoTIFF asset with role data or visual" if choice == "auto" else f"a GeoTIFF asset with role {roles[0]!r}"
    )
    raise ValueError(
        f"has no {want} (assets: {listing}); pick one with --stac-asset KEY or --stac-asset role:NAME "
        "(workflow key inference.stac_asset)"
    )


def band_indexes(asset: pystac.Asset, names: Sequence[str]) -> tuple[int, ...]:
    """1-based indexes of the bands ``names`` of ``asset``, matched to each band's ``name`` or
    common name, from STAC 1.1 ``bands`` or the eo extension's ``eo:bands``.

    Raises:
        ValueError: a name is not among the asset's bands (the message lists them).
    """
    fields = asset.extra_fields
    described = fields.get("bands") or fields.get("eo:bands") or []
    known: list[set[str]] = []
    for b in described:
        if isinstance(b, dict):
            known.append({str(b[k]).lower() for k in ("name", "common_name", "eo:common_name") if b.get(k)})
        else:
            known.append(set())
    out = []
    for name in names:
        hits = [i for i, ids in enumerate(known) if name.lower() in ids]
        if not hits:
            listed = ", ".join("/".join(sorted(ids)) or "?" for ids in known) or "none described"
            raise ValueError(
                f"has no band named {name!r} in its bands/eo:bands (bands: {listed}); "
                "name bands as the item does, or give 1-based indexes with --bands"
            )
        out.append(hits[0] + 1)
    return tuple(out)


def _datetime(item: pystac.Item) -> str | None:
    when = item.datetime or item.common_metadata.start_datetime
    return when.isoformat() if when is not None else None


def scene_of(item: pystac.Item, asset: str = "auto", bands: Sequence[str] | None = None) -> StacScene:
    """The scene one item gives (or its reason not to, in ``error``)."""
    self_href = item.get_self_href()
    try:
        key, chosen = pick_asset(item, asset)
        idx = band_indexes(chosen, bands) if bands else None
    except ValueError as exc:
        where = self_href or f"item {item.id!r}"
        return StacScene(where, item.id, self_href, None, _datetime(item), error=f"STAC item {item.id!r} {exc}")
    href = chosen.get_absolute_href() or chosen.href
    return StacScene(gdal_path(href), item.id, self_href, key, _datetime(item), idx)


def _read_json(href: str) -> dict[str, Any]:
    fix = "give a STAC Item, ItemCollection, Catalog or Collection as JSON (or a folder, glob or list of GeoTIFFs)"
    try:
        text = StacIO.default().read_text(href)
    except Exception as exc:  # file missing, unreadable, HTTP error: pystac raises several kinds
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"STAC document {brief(href)} cannot be read: {brief(reason)}") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"STAC document {brief(href)} is not JSON ({exc}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("type") not in ("Feature", "FeatureCollection", "Catalog", "Collection"):
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise ConfigError(f"STAC document {brief(href)} has type {brief(kind, as_repr=True)}, not a STAC object; {fix}")
    return doc


def _items(href: str, doc: dict[str, Any]) -> Iterable[pystac.Item]:
    kind = doc["type"]
    try:
        if kind == "Feature":
            return [pystac.Item.from_dict(doc, href=href, migrate=True)]
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(doc, preserve_dict=False)
            # items of a saved search keep their own self links; relative asset hrefs of
            # those without one resolve against the collection's file
            for item in collection.items:
                if item.get_self_href() is None:
                    item.set_self_href(href)
            return list(collection.items)
        catalog = pystac.read_dict(doc, href=href)
        assert isinstance(catalog, pystac.Catalog)
        return list(catalog.get_items(recursive=True))
    except ConfigError:
        raise
    except Exception as exc:  # a malformed item or catalog: pystac raises many kinds
        raise ConfigError(
            f"STAC document {brief(href)} is not valid STAC: {type(exc).__name__}: {brief(str(exc))}; "
            "check it with `stac-validator` or pystac's validate()"
        ) from None


def read_stac(href: str, *, asset: str = "auto", bands: Sequence[str] | None = None) -> list[StacScene]:
    """The scenes of a STAC document: one per item, in the document's order (a catalog's
    items in the order pystac walks it: the catalog's own, then each child's).

    Raises:
        ConfigError: the document cannot be read, is not JSON or is not a STAC object.
    """
    if not re.match(r"^[a-z][a-z0-9+.-]*://", href):
        href = os.path.abspath(href)
    doc = _read_json(href)
    return [scene_of(item, asset, bands) for item in _items(href, doc)]
