"""Chips that touch, joined into one training scene (``data.sources[].mosaic``): which chips join,
the mosaic's pixels, mask and georeferencing, labels placed on it, and its reuse."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from geounet.errors import ConfigError
from geounet.train import load_training_settings
from geounet.train.inputs import open_data
from geounet.train.mosaic import Chip, plan_mosaics
from geounet.train.sampling import WindowRef
from tests.conftest import write_tif
from tests.test_train_sources import base_config

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 6_650_000.0


def _chip(name: str, col: int, row: int, size: int = 16, pixel: float = 0.5, area: str = "a") -> Chip:
    return Chip(
        path=Path(name),
        crs_wkt=UTM,
        transform=Affine(pixel, 0, X0 + col * pixel, 0, -pixel, Y0 - row * pixel),
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        area=area,
    )


def test_chips_join_where_they_share_an_edge_on_one_grid():
    chips = [
        _chip("a", 0, 0),
        _chip("b", 16, 0),  # right of a
        _chip("c", 0, 16),  # below a
        _chip("d", 32, 32),  # touches nothing
        _chip("e", 48, 16),  # touches d only at a corner: not joined
        _chip("f", 16, 0, pixel=0.25),  # same place, another pixel size: its own grid
        _chip("g", 64, 0, area="b"),  # another area
        _chip("h", 80, 0, area="b"),  # touches g
        _chip("i", 8, 40),  # overlaps nothing, touches nothing
    ]
    # a half-pixel shift puts a chip on another grid even where it overlaps
    chips.append(
        Chip(Path("j"), UTM, Affine(0.5, 0, X0 + 0.25, 0, -0.5, Y0), 16, 16, 3, "uint8", "a"),
    )
    plans = plan_mosaics(chips)
    names = [[c.path.name for c in p.chips] for p in plans]
    assert names == [["a", "b", "c"], ["d"], ["e"], ["f"], ["g", "h"], ["i"], ["j"]]
    abc = plans[0]
    assert (abc.width, abc.height) == (32, 32)
    assert abc.offsets == ((0, 0), (0, 16), (16, 0))
    assert abc.transform == Affine(0.5, 0, X0, 0, -0.5, Y0)
    gh = plans[4]
    assert gh.offsets == ((0, 0), (0, 16))
    assert gh.transform.c == pytest.approx(X0 + 64 * 0.5)


def _write_chips(folder: Path) -> list[np.ndarray]:
    """Three 16 px chips in an L (two touch the first) and one apart; each its own pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for k, (col, row) in enumerate(((0, 0), (16, 0), (0, 16), (64, 64))):
        img = np.full((3, 16, 16), 40 * (k + 1), dtype=np.uint8)
        img[0] += np.arange(16, dtype=np.uint8)[None, :]
        t = Affine(0.5, 0, X0 + col * 0.5, 0, -0.5, Y0 - row * 0.5)
        write_tif(folder / f"chip{k}.tif", img, crs=UTM, transform=t)
        images.append(img)
    return images


def _config(tmp_path: Path, **source) -> Path:
    _write_chips(tmp_path / "chips")
    roof = shapely.box(X0 + 12 * 0.5, Y0 - 12 * 0.5, X0 + 20 * 0.5, Y0 - 4 * 0.5)  # across chips 0 and 1
    gpd.GeoDataFrame(geometry=[roof], crs=UTM).to_file(tmp_path / "labels.geojson")
    src = {
        "name": "oam",
        "images": str(tmp_path / "chips" / "*.tif"),
        "labels": {"building": str(tmp_path / "labels.geojson")},
        "area": "train-{source}",
        "mosaic": True,
        **source,
    }
    val = {**src, "name": "v", "area": "val-{source}", "mosaic": False, "limit": 1}
    return base_config(
        tmp_path, [src, val], data={"gsd_m": 0.5, "classes": [{"name": "building"}]}, model={"mode": "binary"}
    )


def test_mosaic_scene_holds_the_chips_pixels_mask_and_labels(tmp_path: Path):
    settings = load_training_settings(_config(tmp_path))
    data = open_data(settings)
    oam = [s for s in data.scenes if s.source == "oam"]
    assert len(oam) == 2  # the L of three chips, and the chip apart as it is
    mosaic, alone = oam
    assert alone.path.name == "chip3.tif"
    assert mosaic.path.parent == tmp_path / "run" / "mosaics"
    assert mosaic.area == "train-oam" and mosaic.role == "train"
    assert (mosaic.width, mosaic.height) == (32, 32)
    assert mosaic.transform == Affine(0.5, 0, X0, 0, -0.5, Y0)
    assert mosaic.crs is not None and mosaic.crs.to_epsg() == 32633
    images = _write_chips(tmp_path / "again")  # the same pixels as the chips it joined
    with rasterio.open(mosaic.path) as ds:
        pixels, valid = ds.read(), ds.read_masks(1)
    for img, (row, col) in zip(images[:3], ((0, 0), (0, 16), (16, 0))):
        np.testing.assert_array_equal(pixels[:, row : row + 16, col : col + 16], img)
        assert (valid[row : row + 16, col : col + 16] == 255).all()
    assert (valid[16:, 16:] == 0).all()  # the corner no chip covers is invalid
    # the training read: the gap is invalid, the roof spans the seam between chips 0 and 1
    raw, ok = mosaic.read(WindowRef(mosaic.index, 0, 0, 32, 32), [1, 2, 3], True)
    np.testing.assert_array_equal(ok, valid == 255)
    stack, _ = mosaic.label_ids(WindowRef(mosaic.index, 0, 0, 32, 32))
    rows, cols = np.nonzero(stack[0])
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (4, 12, 12, 20)


def test_mosaic_is_reused_and_rewritten_when_a_chip_changes(tmp_path: Path):
    settings = load_training_settings(_config(tmp_path))
    first = open_data(settings).scenes[0].path
    stamp = first.stat().st_mtime_ns
    again = open_data(settings).scenes[0].path
    assert again == first and again.stat().st_mtime_ns == stamp
    img = np.zeros((3, 16, 16), dtype=np.uint8)
    write_tif(tmp_path / "chips" / "chip1.tif", img, crs=UTM, transform=Affine(0.5, 0, X0 + 8, 0, -0.5, Y0))
    changed = open_data(settings).scenes[0].path
    assert changed != first
    with rasterio.open(changed) as ds:
        assert (ds.read(window=((0, 16), (16, 32))) == 0).all()
    assert not list((tmp_path / "run" / "mosaics").glob("*.partial*"))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_mosaic_refuses_masks_and_chips_without_georeferencing(tmp_path: Path):
    cfg = base_config(
        tmp_path,
        [
            {
                "name": "m",
                "images": str(tmp_path / "*.png"),
                "masks": "{dir}/{stem}_mask.png",
                "mask_classes": {"values": {"building": 255}},
                "gsd_m": 0.5,
                "mosaic": True,
            }
        ],
    )
    with pytest.raises(ConfigError, match="mosaic.*masks"):
        load_training_settings(cfg)
    folder = tmp_path / "plain"
    folder.mkdir()
    write_tif(folder / "c.tif", np.zeros((3, 16, 16), dtype=np.uint8), crs=None, transform=None)
    write_tif(folder / "d.tif", np.zeros((3, 16, 16), dtype=np.uint8))
    gpd.GeoDataFrame(geometry=[shapely.box(X0, Y0 - 4, X0 + 4, Y0)], crs=UTM).to_file(tmp_path / "l.geojson")
    src = {"name": "p", "images": str(folder / "*.tif"), "labels": str(tmp_path / "l.geojson"), "mosaic": True}
    settings = load_training_settings(
        base_config(tmp_path, [src], data={"gsd_m": 0.5, "classes": [{"name": "building"}]}, model={"mode": "binary"})
    )
    with pytest.raises(ConfigError, match=r"c\.tif has no georeferencing.*drop mosaic"):
        open_data(settings)


def test_the_provenance_counts_the_chips_and_the_mosaics(tmp_path: Path):
    from geounet.checkpoint.card import _source
    from geounet.train.report import data_record

    settings = load_training_settings(_config(tmp_path))
    data = open_data(settings)
    record = next(r for r in data_record(data.scenes, settings) if r.get("source") == "oam")
    assert record["images"] == 4 and record["mosaics"] == 1  # four chips: one mosaic of three, one alone
    assert _source(record)[0].startswith("oam: 4 images (1 mosaic of touching chips)")
    plain = next(r for r in data_record(data.scenes, settings) if r.get("source") == "v")
    assert plain["images"] == 1 and "mosaics" not in plain
