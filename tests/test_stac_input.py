"""Scenes from STAC documents: asset and band choice, href resolution, item ids as folder
names, and an item without a usable asset failing alone (in-process pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest

from geounet.batch.run import run_scenes
from geounet.batch.workflow import discover_scenes
from geounet.errors import ConfigError
from geounet.scene.source import unique_stems
from geounet.scene.stac import band_indexes, gdal_path, is_stac_document, pick_asset, read_stac
from geounet.settings import InferenceSettings
from tests.conftest import make_checkpoint, write_tif

GEOTIFF = pystac.MediaType.GEOTIFF
COG = pystac.MediaType.COG
WHEN = pystac.utils.str_to_datetime("2023-08-01T09:00:00Z")
POINT = {"type": "Point", "coordinates": [15.0, 41.9]}


def _item(item_id: str, **assets: pystac.Asset) -> pystac.Item:
    item = pystac.Item(item_id, POINT, [15.0, 41.9, 15.0, 41.9], WHEN, {})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def test_auto_picks_the_data_geotiff_then_visual_and_keys_and_roles_are_honoured() -> None:
    item = _item(
        "x",
        thumbnail=pystac.Asset("t.png", media_type="image/png", roles=["thumbnail"]),
        visual=pystac.Asset("v.tif", media_type=COG, roles=["visual"]),
        analytic=pystac.Asset("d.tif", media_type=GEOTIFF, roles=["data"]),
    )
    assert pick_asset(item)[0] == "analytic"  # role data wins over visual, whatever the order
    assert pick_asset(item, "visual")[0] == "visual"
    assert pick_asset(item, "role:visual")[0] == "visual"
    with pytest.raises(ValueError, match=r"no asset 'nir'.*thumbnail .*--stac-asset"):
        pick_asset(item, "nir")
    lone = _item("y", img=pystac.Asset("only.tiff", roles=["overview"]))  # no type: by the suffix
    assert pick_asset(lone)[0] == "img"
    none = _item("z", preview=pystac.Asset("p.jpg", media_type="image/jpeg", roles=["overview"]))
    with pytest.raises(ValueError, match=r"no one GeoTIFF asset with role data or visual.*preview"):
        pick_asset(none)


def test_bands_by_name_or_common_name_from_bands_or_eo_bands() -> None:
    eo = pystac.Asset("a.tif", media_type=GEOTIFF, roles=["data"])
    eo.extra_fields["eo:bands"] = [
        {"name": "B02", "common_name": "blue"},
        {"name": "B03", "common_name": "green"},
        {"name": "B04", "common_name": "red"},
        {"name": "B08", "common_name": "nir"},
    ]
    assert band_indexes(eo, ["red", "green", "blue"]) == (3, 2, 1)
    assert band_indexes(eo, ["B08"]) == (4,)
    v11 = pystac.Asset("a.tif", media_type=GEOTIFF, roles=["data"])
    v11.extra_fields["bands"] = [{"name": "r", "eo:common_name": "red"}, {"name": "g", "eo:common_name": "green"}]
    assert band_indexes(v11, ["GREEN"]) == (2,)
    with pytest.raises(ValueError, match=r"no band named 'swir'.*b02/blue"):
        band_indexes(eo, ["swir"])


def test_hrefs_become_gdal_paths() -> None:
    assert gdal_path("s3://bucket/k/x.tif") == "/vsis3/bucket/k/x.tif"
    assert gdal_path("gs://b/x.tif") == "/vsigs/b/x.tif"
    assert gdal_path("file:///data/x.tif") == "/data/x.tif"
    assert gdal_path("https://h/x.tif") == "https://h/x.tif"
    assert is_stac_document("https://h/search.json?page=2") and is_stac_document("/a/b.GEOJSON")
    assert not is_stac_document("/a/b.tif")


def test_item_collection_and_nested_catalog_resolve_relative_hrefs(tmp_path: Path) -> None:
    cat = pystac.Catalog("c", "root")
    sub = pystac.Catalog("sub", "child")
    cat.add_child(sub)
    sub.add_item(_item("deep", image=pystac.Asset("../../img/deep.tif", media_type=GEOTIFF, roles=["data"])))
    cat.add_item(_item("top", image=pystac.Asset("s3://bucket/top.tif", media_type=GEOTIFF, roles=["data"])))
    cat.normalize_hrefs(str(tmp_path / "cat"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    found = read_stac(str(tmp_path / "cat" / "catalog.json"))
    by_id = {s.item_id: s for s in found}
    assert by_id["top"].href == "/vsis3/bucket/top.tif"
    # ../../img/ from cat/sub/deep/deep.json
    assert by_id["deep"].href == str(tmp_path / "cat" / "img" / "deep.tif")
    assert by_id["deep"].datetime == "2023-08-01T09:00:00+00:00"

    # saved search results: a FeatureCollection of items without self links
    fc = {
        "type": "FeatureCollection",
        "features": [_item("s1", image=pystac.Asset("x/s1.tif", media_type=GEOTIFF, roles=["data"])).to_dict()],
    }
    fc["features"][0]["links"] = []
    (tmp_path / "search.json").write_text(json.dumps(fc))
    [s1] = read_stac(str(tmp_path / "search.json"))
    assert s1.href == str(tmp_path / "x" / "s1.tif")  # relative to the collection's file


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json at all", "is not JSON"),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}', "is not valid STAC"),
        ('{"type": "Topology"}', "has type 'Topology', not a STAC object"),
        ("[1, 2]", "has type 'list'"),
    ],
)
def test_bad_documents_are_configuration_errors_naming_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "doc.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        discover_scenes(str(path))
    assert "doc.json" in str(err.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        discover_scenes(str(tmp_path / "missing.json"))


def test_item_ids_name_the_output_folders_when_safe() -> None:
    paths = ["/d/1/image.tif", "/d/2/image.tif", "/d/3/image.tif", "/d/4/x.tif"]
    names = ["S2A_33TUG_20230801", "bad id/../x", None, "run.json"]
    assert unique_stems(paths, reserved=["run.json"], names=names) == [
        "S2A_33TUG_20230801",
        "2_image",
        "3_image",
        "run.json_scene",
    ]


def test_stac_scenes_run_with_item_ids_and_named_bands(tmp_path: Path, dask_local) -> None:
    img = np.zeros((4, 96, 128), np.uint8)
    img[0, 20:60, 30:90] = 255  # the probe model outlines band 1's bright rectangle
    img[1:] = 90
    write_tif(tmp_path / "scene.tif", img)
    good = pystac.Asset("scene.tif", media_type=GEOTIFF, roles=["data"])
    # the image's bands in a shuffled order: naming them puts the bright band first again
    good.extra_fields["eo:bands"] = [{"name": n} for n in ("bright", "b", "c", "d")]
    items = [
        _item("tile-7", image=good),
        _item("no-tiff", preview=pystac.Asset("p.png", media_type="image/png", roles=["overview"])),
    ]
    (tmp_path / "items.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": [i.to_dict(include_self_link=False) for i in items]})
    )
    stac: dict = {}
    scenes = discover_scenes(str(tmp_path / "items.json"), stac=stac, stac_bands=["c", "bright", "d"])
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    settings = InferenceSettings(tile_size=64, halo=0, formats=["geojson", "stac"])
    res = run_scenes(scenes, ckpt, tmp_path / "out", settings, client=dask_local, progress=False, stac=stac)
    by_item = {r.stac_item: r for r in res}
    assert by_item["tile-7"].status == "success", by_item["tile-7"].error
    assert by_item["tile-7"].stem == "tile-7"
    record = json.loads((tmp_path / "out" / "tile-7" / "scene.json").read_text())
    assert record["size"]["bands"] == [3, 1, 4]
    assert record["stac"]["asset"] == "image"
    assert by_item["no-tiff"].status == "failed"
    assert "'no-tiff'" in str(by_item["no-tiff"].error) and "--stac-asset" in str(by_item["no-tiff"].error)
    catalog = pystac.Catalog.from_file(str(tmp_path / "out" / "catalog.json"))
    assert [i.id for i in catalog.get_items()] == ["tile-7"]
