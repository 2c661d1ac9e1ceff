"""STAC in and out: ``geounet run`` on a static catalog of the three workflow scenes gives the
same outputs as the run on the plain files, plus an item.json per scene and OUT/catalog.json,
which validate offline against the core STAC schemas pystac ships and open with pystac."""

from __future__ import annotations

import shutil
from pathlib import Path

import pystac
import pytest
import rasterio
from pystac.extensions.label import LabelExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.warp import transform_bounds

from tests.workflow._helpers import SCENE_FILES, STEMS, Job, Reference, assert_clean, assert_same_scene, read_json, run

GEOTIFF = pystac.MediaType.GEOTIFF
WHEN = "2024-05-17T10:30:00Z"


def validate_core(doc: dict, kind: pystac.STACObjectType) -> None:
    """Validate ``doc`` against the STAC core JSON schema pystac ships (no network).

    The extension schemas (label, projection, raster) are not shipped with pystac and this
    machine has no internet, so their fields are checked through pystac's extension classes
    in the tests instead of their JSON schemas."""
    JsonSchemaSTACValidator().validate_core(doc, kind, doc["stac_version"])


def build_catalog(job: Job, root: Path) -> Path:
    """A static catalog of the three scenes: ``a`` by a relative href, ``sub1_b`` as the
    ``data`` asset among a thumbnail and metadata, ``sub2_b`` as ``visual`` in a child collection."""
    scenes = job.scenes
    cat = pystac.Catalog(id="test-scenes", description="three tiny scenes")
    geom = {"type": "Polygon", "coordinates": [[[15, 41.9], [15.01, 41.9], [15.01, 41.91], [15, 41.91], [15, 41.9]]]}
    bbox = [15, 41.9, 15.01, 41.91]
    when = pystac.utils.str_to_datetime(WHEN)

    a = pystac.Item("a", geom, bbox, when, {})
    cat.add_item(a)
    b1 = pystac.Item("sub1_b", geom, bbox, when, {})
    b1.add_asset(
        "thumbnail", pystac.Asset("https://example.invalid/b1.png", media_type="image/png", roles=["thumbnail"])
    )
    b1.add_asset(
        "metadata", pystac.Asset(str(scenes / "sub1" / "b.xml"), media_type="application/xml", roles=["metadata"])
    )
    b1.add_asset("data", pystac.Asset(str(scenes / "sub1" / "b.tif"), media_type=GEOTIFF, roles=["data"]))
    cat.add_item(b1)
    col = pystac.Collection(
        "more",
        "a child collection",
        pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[when, None]])),
    )
    b2 = pystac.Item("sub2_b", geom, bbox, when, {})
    b2.add_asset("visual", pystac.Asset(str(scenes / "sub2" / "b.tif"), media_type=GEOTIFF, roles=["visual"]))
    col.add_item(b2)
    cat.add_child(col)
    cat.normalize_hrefs(str(root))
    # the first item's image by a path relative to the item's own file
    item_dir = Path(a.get_self_href()).parent
    a.add_asset("image", pystac.Asset(str(Path("..") / ".." / "scenes" / "a.tif"), media_type=GEOTIFF, roles=["data"]))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    assert (item_dir / ".." / ".." / "scenes" / "a.tif").resolve() == (scenes / "a.tif").resolve()
    return root / "catalog.json"


@pytest.fixture(scope="module")
def stac_run(job: Job, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # the catalog sits beside scenes/ so the relative href ../../scenes/a.tif resolves
    root = job.root / "stac"
    if root.exists():
        shutil.rmtree(root)
    catalog = build_catalog(job, root)
    out = tmp_path_factory.mktemp("stac") / "out"
    rc, _, stderr = run(job, "--scenes", str(catalog), "--out", str(out))
    assert rc == 0, stderr[-4000:]
    return catalog, out


def test_outputs_match_the_plain_run(stac_run: tuple[Path, Path], reference: Reference) -> None:
    _, out = stac_run
    assert_clean(out)
    for stem in STEMS:
        rec = read_json(out / stem / "scene.json")
        assert rec["stac"]["item_id"] == stem
        assert rec["stac"]["datetime"].startswith("2024-05-17T10:30")
        assert_same_scene(out / stem, reference.out / stem, source=False)
    run_record = read_json(out / "run.json")
    assert {s["stem"]: s["stac_item"] for s in run_record["scenes"]} == {s: s for s in STEMS}


def test_items_and_catalog_validate(stac_run: tuple[Path, Path], job: Job) -> None:
    source_catalog, out = stac_run
    cat_doc = read_json(out / "catalog.json")
    validate_core(cat_doc, pystac.STACObjectType.CATALOG)
    assert all(not link["href"].startswith("/") for link in cat_doc["links"]), "links must be relative"
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = {item.id: item for item in catalog.get_items(recursive=True)}
    assert sorted(items) == sorted(STEMS)
    sources = {i.id: i for i in pystac.Catalog.from_file(str(source_catalog)).get_items(recursive=True)}
    for stem, item in items.items():
        doc = read_json(out / stem / "item.json")
        validate_core(doc, pystac.STACObjectType.ITEM)
        assert item.datetime == pystac.utils.str_to_datetime(WHEN)
        # footprint: the scene's UTM 33N bounds in lon/lat
        with rasterio.open(job.scenes / SCENE_FILES[STEMS.index(stem)]) as ds:
            west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        assert item.bbox == pytest.approx([west, south, east, north], abs=1e-6)
        proj = ProjectionExtension.ext(item)
        assert proj.code == "EPSG:32633"
        assert proj.shape is not None and proj.transform is not None
        label = LabelExtension.ext(item)
        assert label.label_type == "vector" and label.label_properties == ["class"]
        assert label.label_classes is not None and label.label_classes[0].classes == ["building", "road"]
        counts = {c.name: c.count for c in label.label_overviews[0].counts}  # type: ignore[index]
        assert counts == read_json(out / stem / "scene.json")["polygons"]
        for key, asset in item.assets.items():
            path = Path(asset.get_absolute_href())
            assert path.is_file(), f"{stem}: asset {key} points to a missing file"
        assert item.assets["buildings"].roles == ["data", "labels"]
        assert "thumbnail" in item.assets["thumbnail"].roles
        bands = RasterExtension.ext(item.assets["probability"]).bands
        assert bands is not None and [b.data_type for b in bands] == ["uint8", "uint8"]
        source = next(link for link in item.links if link.rel == "source")
        assert source.get_absolute_href() == sources[stem].get_self_href()
        assert doc["properties"]["geounet:model"]["hash"]


def test_a_broken_stac_document_is_a_configuration_error(job: Job, tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"type": "Feature", "id": 3')
    rc, _, stderr = run(job, "--scenes", str(tmp_path / "broken.json"), "--out", str(tmp_path / "out"))
    assert rc == 2
    assert "broken.json" in stderr and "not JSON" in stderr
    assert not (tmp_path / "out").exists()
