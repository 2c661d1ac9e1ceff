"""Training data as it comes (``data.sources``): raster masks by value, by colour and by
palette, image/mask pairs without georeferencing, a declared pixel size, area-held-out
validation, per-source balancing and classes a source does not label."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from geounet.checkpoint import read_metadata
from geounet.checkpoint.card import model_card
from geounet.cli.info import render_card
from geounet.errors import ConfigError, SceneReadError
from geounet.train import load_training_settings, train
from geounet.train.config import MaskClasses
from geounet.train.data import load_window
from geounet.train.inputs import open_data
from geounet.train.labels import mask_to_stack
from geounet.train.sampling import WindowRef
from geounet.train.sources import area_of, pair_mask
from tests.conftest import write_tif

BUILDING = (60, 16, 152)
ROAD = (110, 193, 228)
UNLABELLED = (155, 155, 155)


def write_png(path: Path, data: np.ndarray, palette: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """A PNG without georeferencing: (bands, h, w) uint8, or one band with a palette."""
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = rasterio.open(
            path, "w", driver="PNG", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype="uint8"
        )
    with ds:
        ds.write(data)
        if palette is not None:
            ds.write_colormap(1, {k: (*v, 255) for k, v in palette.items()})
    return path


def chip(seed: int, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with one bright roof (rows 8-24, cols 10-30) and a road (rows 30-36), and its class map
    (0 background, 1 building, 2 road, 3 unlabelled in the last 4 columns)."""
    rng = np.random.default_rng(seed)
    img = (50 + rng.normal(0, 5, (3, h, w))).clip(0, 255)
    cls = np.zeros((h, w), dtype=np.uint8)
    img[:, 8:24, 10:30] = np.array([210, 120, 90])[:, None, None]
    cls[8:24, 10:30] = 1
    img[:, 30:36, :] = 140
    cls[30:36, :] = 2
    cls[:, w - 4 :] = 3
    return img.astype(np.uint8), cls


def colour_mask(cls: np.ndarray) -> np.ndarray:
    rgb = np.zeros((3, *cls.shape), dtype=np.uint8)
    for value, colour in ((1, BUILDING), (2, ROAD), (3, UNLABELLED)):
        rgb[:, cls == value] = np.array(colour)[:, None]
    return rgb


def base_config(folder: Path, sources: list[dict], **sections) -> Path:
    cfg = {
        "data": {"classes": [{"name": "building"}, {"name": "road"}], "gsd_m": 0.5, "sources": sources},
        "split": {"kind": "scenes", "val_areas": ["val-*"]},
        "sampling": {"window": 32, "windows_per_epoch": 8, "batch_size": 4, "balance": 0.5},
        "augment": {"zoom": 1.0, "zoom_unknown": 1.0},
        "model": {"width": 4, "depth": 2, "mode": "multilabel"},
        "optim": {"epochs": 1, "lr": 0.01, "warmup": 0.0, "schedule": "constant"},
        "normalization": {"sample_windows": 4},
        "validation": {"tile": 32},
        "compute": {"threads": 1, "precision": "fp32", "seed": 1, "prefetch": False},
        "output": {"dir": str(folder / "run")},
    }
    for key, value in sections.items():
        cfg[key].update(value)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def colour_set(tmp_path: Path) -> Path:
    """Two 'tiles' of ungeoreferenced JPEG-like PNG images with colour-coded masks (one paletted)."""
    for tile, seeds in (("train-a", (0, 1)), ("val-b", (2,))):
        for s in seeds:
            img, cls = chip(s)
            write_png(tmp_path / tile / "images" / f"part_{s}.png", img)
            if s == 1:  # a paletted mask: one band of indexes into colours
                write_png(
                    tmp_path / tile / "masks" / f"part_{s}.png",
                    cls,
                    palette={0: (0, 0, 0), 1: BUILDING, 2: ROAD, 3: UNLABELLED},
                )
            else:
                write_png(tmp_path / tile / "masks" / f"part_{s}.png", colour_mask(cls))
    return tmp_path


def colour_source(folder: Path, **extra) -> dict:
    return {
        "name": "tiles",
        "images": str(folder / "*" / "images" / "*.png"),
        "masks": "{dir}/../masks/{stem}.png",
        "mask_classes": {
            "colors": {"building": list(BUILDING), "road": list(ROAD)},
            "ignore_colors": [list(UNLABELLED)],
        },
        "gsd_m": 0.5,
        "area": "{grandparent}",
        **extra,
    }


def test_mask_to_stack_by_value_colour_and_palette():
    _, cls = chip(0)
    by_value = MaskClasses(values={"building": 1, "road": [2]}, ignore_values=[3])
    ids, ignore = mask_to_stack(cls[None], by_value, ["building", "road"])
    assert np.array_equal(ids[0] > 0, cls == 1) and np.array_equal(ids[1] > 0, cls == 2)
    assert np.array_equal(ignore, cls == 3)
    by_colour = MaskClasses(colors={"building": BUILDING, "road": [ROAD]}, ignore_colors=[UNLABELLED])
    ids2, ignore2 = mask_to_stack(colour_mask(cls), by_colour, ["building", "road"])
    assert np.array_equal(ids2, ids) and np.array_equal(ignore2, ignore)
    palette = np.zeros((256, 3), dtype=np.int64)
    palette[1], palette[2], palette[3] = BUILDING, ROAD, UNLABELLED
    ids3, ignore3 = mask_to_stack(cls[None], by_colour, ["building", "road"], palette)
    assert np.array_equal(ids3, ids) and np.array_equal(ignore3, ignore)
    with pytest.raises(ConfigError, match="colours"):
        mask_to_stack(cls[None], by_colour, ["building", "road"])  # one band, no palette


def test_pairing_and_area_templates():
    image = Path("data/Tile 3/images/image7.jpg")
    assert pair_mask(image, "{dir}/../masks/{stem}.png") == Path("data/Tile 3/images/../masks/image7.png")
    assert pair_mask(image, "{dir}/{stem}.png", ("^image", "label")) == Path("data/Tile 3/images/label7.png")
    assert area_of(image, "dubai/{grandparent}", "dubai") == "dubai/Tile 3"
    assert area_of(image, "{source}", "dubai") == "dubai"


def test_colour_masks_without_georeferencing_are_training_scenes(colour_set: Path):
    settings = load_training_settings(base_config(colour_set, [colour_source(colour_set)]))
    data = open_data(settings)
    roles = {s.path.name: (s.area, s.role) for s in data.scenes}
    assert roles == {
        "part_0.png": ("train-a", "train"),
        "part_1.png": ("train-a", "train"),
        "part_2.png": ("val-b", "val"),
    }
    # area-held-out: no training rectangle comes from the validation tile, every validation one does
    val_scenes = {s.index for s in data.scenes if s.role == "val"}
    assert {r.scene for r in data.val_rects} == val_scenes
    assert not {r.scene for r in data.train_rects} & val_scenes
    assert all(t.scene in val_scenes for t in data.tiles)
    for scene in data.scenes:
        assert scene.crs is None and scene.scale == 1.0
        ref = WindowRef(scene.index, 0, 0, 48, 64)
        stack, unlabelled = scene.label_ids(ref)
        _, cls = chip(int(scene.path.stem.split("_")[1]))
        assert np.array_equal(stack[0] > 0, cls == 1), scene.path  # the paletted mask too
        assert np.array_equal(stack[1] > 0, cls == 2)
        assert np.array_equal(unlabelled, cls == 3)


def test_unlabelled_pixels_and_outside_the_chip_weigh_nothing(colour_set: Path):
    settings = load_training_settings(base_config(colour_set, [colour_source(colour_set)]))
    data = open_data(settings)
    scene = data.scenes[0]
    from geounet.scene.normalize import MeanStd

    norm = MeanStd(mean=[0.0] * 3, std=[255.0] * 3)
    ref = WindowRef(scene.index, -8, 0, 64, 64)  # 8 rows above the 48-row chip, 8 below
    x, y, w = load_window(scene, ref, [1, 2, 3], norm)
    _, cls = chip(0)
    assert w.shape == (64, 64)
    assert not w[:8].any() and not w[56:].any()  # outside the chip
    assert np.array_equal(w[8:56] > 0, cls != 3)  # unlabelled colour
    assert np.array_equal(y[0, 8:56] > 0, cls == 1)


def test_declared_pixel_size_resamples_images_and_masks(tmp_path: Path):
    """A 0.25 m chip on a 0.5 m run: the 20 x 16 px roof becomes 10 x 8 px, in the same place."""
    img, cls = chip(0, h=96, w=128)
    big_img = np.zeros((3, 96, 128), dtype=np.uint8)
    big_img[:] = img
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    write_tif(tmp_path / "im" / "a.tif", big_img, crs=None, transform=None)
    write_tif(tmp_path / "gt" / "a.tif", (cls == 1).astype(np.uint8) * 255, crs=None, transform=None)
    src = {
        "name": "fine",
        "images": str(tmp_path / "im" / "*.tif"),
        "masks": "{dir}/../gt/{name}",
        "mask_classes": {"values": {"building": 255}},
        "gsd_m": 0.25,
    }
    val = {**src, "name": "val-fine", "area": "val-x"}
    one_class = {"classes": [{"name": "building"}]}
    settings = load_training_settings(base_config(tmp_path, [src, val], data=one_class, model={"mode": "binary"}))
    data = open_data(settings)
    scene = data.scenes[0]
    assert scene.scale == pytest.approx(2.0)
    assert (scene.grid_height, scene.grid_width) == (48, 64)
    stack, _ = scene.label_ids(WindowRef(scene.index, 0, 0, 48, 64))
    rows, cols = np.nonzero(stack[0])
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (4, 12, 5, 15)
    raw, valid = scene.read(WindowRef(scene.index, 0, 0, 48, 64), [1, 2, 3])
    assert valid.all()
    assert raw[0, 4:12, 5:15].min() > 150 and raw[0, 20:28, 40:].max() < 100  # roof pixels where the label is


def test_classes_a_source_does_not_label_weigh_nothing(colour_set: Path):
    buildings_only = colour_source(
        colour_set, name="buildings-only", mask_classes={"colors": {"building": list(BUILDING)}}
    )
    settings = load_training_settings(base_config(colour_set, [colour_source(colour_set), buildings_only]))
    data = open_data(settings)
    scene = [s for s in data.scenes if s.source == "buildings-only"][0]
    assert scene.known == [True, False]
    from geounet.scene.normalize import MeanStd

    norm = MeanStd(mean=[0.0] * 3, std=[1.0] * 3)
    _, y, w = load_window(scene, WindowRef(scene.index, 0, 0, 32, 32), [1, 2, 3], norm, per_class=True)
    assert w.shape == (2, 32, 32) and w[0].any() and not w[1].any()
    assert not y[1].any()  # the road of the image is not labelled here, and not taught as background


def test_vector_labels_on_georeferenced_chips_with_pixel_size_from_the_crs(tmp_path: Path):
    """A Web Mercator chip at 60 degrees north: 0.3 map metres are 0.15 ground metres."""
    import pyproj

    x0, y0 = pyproj.Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, 60.0)
    t = Affine(0.3, 0, x0, 0, -0.3, y0)
    img, cls = chip(0, h=64, w=64)
    (tmp_path / "chips").mkdir()
    write_tif(tmp_path / "chips" / "c.tif", img, crs="EPSG:3857", transform=t)
    roof = shapely.box(*(t @ (10, 24)), *(t @ (30, 8)))
    gpd.GeoDataFrame(geometry=[roof], crs="EPSG:3857").to_crs(4326).to_file(tmp_path / "labels.geojson")
    src = {
        "name": "osm",
        "images": str(tmp_path / "chips" / "*.tif"),
        "labels": {"building": str(tmp_path / "labels.geojson")},
        "area": "val-{source}",
    }
    other = {**src, "name": "osm2", "area": "{source}"}
    settings = load_training_settings(
        base_config(
            tmp_path, [src, other], data={"gsd_m": 0.3, "classes": [{"name": "building"}]}, model={"mode": "binary"}
        )
    )
    data = open_data(settings)
    scene = data.scenes[0]
    assert scene.gsd_m == pytest.approx(0.15, rel=0.01)
    assert scene.scale == pytest.approx(2.0, rel=0.01)
    stack, _ = scene.label_ids(WindowRef(scene.index, 0, 0, 32, 32))
    rows, cols = np.nonzero(stack[0])
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (4, 12, 5, 15)


def test_sources_get_their_weight_of_windows(colour_set: Path):
    small = colour_source(colour_set, name="small", images=str(colour_set / "train-a" / "images" / "part_0.png"))
    big = colour_source(colour_set, name="big", weight=3.0)
    settings = load_training_settings(base_config(colour_set, [small, big], sampling={"windows_per_epoch": 400}))
    data = open_data(settings)
    by_source = {s.index: s.source for s in data.scenes}
    refs = data.sampler.epoch(0)
    share = np.mean([by_source[r.scene] == "small" for r in refs])
    assert 0.15 < share < 0.35  # 1 / (1 + 3) = 0.25, balancing aside


def test_training_records_the_pixel_size_in_the_checkpoint(colour_set: Path):
    source = colour_source(colour_set, gsd_m="unknown", terms="CC0 1.0", attribution="Tile makers")
    settings = load_training_settings(base_config(colour_set, [source]))
    result = train(settings, progress=False)
    meta = read_metadata(result.best_checkpoint)
    assert meta.gsd_m == 0.5
    assert meta.class_names == ("building", "road")
    record = [d for d in meta.provenance["data"] if d.get("source") == "tiles"][0]
    assert record["images"] == 3 and record["areas"] == {"train": ["train-a"], "val": ["val-b"]}
    assert record["gsd_known"] is False
    assert record["terms"] == "CC0 1.0" and record["attribution"] == "Tile makers"
    card = render_card(model_card(result.best_checkpoint))
    assert "pixel size       0.5 m" in card
    assert "tiles: 3 images, train train-a, val val-b, 0.5 m (not documented: assumed)" in card
    assert "terms CC0 1.0; attribution Tile makers" in card


def test_source_errors_name_the_file_and_the_fix(colour_set: Path):
    missing = colour_source(colour_set, masks="{dir}/../nowhere/{stem}.png")
    with pytest.raises(ConfigError, match=r"part_0.png should be .*nowhere.*fix the template"):
        open_data(load_training_settings(base_config(colour_set, [missing])))
    nothing = colour_source(colour_set, images=str(colour_set / "*.tif"))
    with pytest.raises(ConfigError, match="matches no file"):
        open_data(load_training_settings(base_config(colour_set, [nothing])))
    auto = colour_source(colour_set, gsd_m="auto")
    with pytest.raises(ConfigError, match=r"no georeferencing.*gsd_m: 0.3.*unknown"):
        open_data(load_training_settings(base_config(colour_set, [auto])))
    write_png(colour_set / "train-a" / "masks" / "part_0.png", np.zeros((3, 10, 10), np.uint8))
    with pytest.raises(SceneReadError, match="on the image's grid"):
        open_data(load_training_settings(base_config(colour_set, [colour_source(colour_set)])))
    bad = colour_source(colour_set)
    del bad["mask_classes"]
    with pytest.raises(ConfigError, match="mask_classes"):
        load_training_settings(base_config(colour_set, [bad]))
    with pytest.raises(ConfigError, match="multiclass"):
        load_training_settings(
            base_config(
                colour_set,
                [colour_source(colour_set, mask_classes={"values": {"building": 1}})],
                model={"mode": "multiclass"},
            )
        )


def test_synthetic_rehearsal_beside_sources_trains_only_and_gets_its_weight(colour_set: Path):
    """data.synthetic without val: its scenes are training data only (the sources' val areas pick
    the best epoch), and together they get data.synthetic.weight of the windows."""
    synthetic = {"dir": str(colour_set / "synth"), "size": 64, "train": {"n": 1, "seed": 5}, "val": None, "weight": 3.0}
    settings = load_training_settings(
        base_config(
            colour_set,
            [colour_source(colour_set)],
            data={"synthetic": synthetic},
            sampling={"windows_per_epoch": 400},
        )
    )
    data = open_data(settings)
    synth = [s for s in data.scenes if not s.source]
    assert [s.path.name for s in synth] == ["synth_train_0000.tif"]
    assert not list((colour_set / "synth").glob("*_val_*"))  # no validation scene generated
    assert {r.scene for r in data.val_rects} == {s.index for s in data.scenes if s.area == "val-b"}
    refs = data.sampler.epoch(0)
    share = np.mean([r.scene == synth[0].index for r in refs])
    assert 0.6 < share < 0.9  # 3 / (3 + 1) = 0.75, balancing aside


def test_synthetic_without_val_and_without_sources_has_no_validation_area(tmp_path: Path):
    synthetic = {"dir": str(tmp_path / "synth"), "size": 64, "train": {"n": 1, "seed": 5}}
    settings = load_training_settings(base_config(tmp_path, [], data={"synthetic": synthetic}))
    with pytest.raises(ConfigError, match="no validation area"):
        open_data(settings)


def test_narrow_gaps_between_mask_buildings_weigh_like_separation_lines(tmp_path: Path):
    """A raster mask has no outlines to cut, but the narrow background gap it leaves between
    two roofs is where a model merges them: with ``mask_gap_px`` those pixels weigh
    ``separation_weight``; a roof's outer edge and the road do not."""
    from geounet.scene.normalize import MeanStd
    from geounet.train.labels import narrow_gaps

    img, cls = chip(0)
    cls[8:24, 18:20] = 0  # the roof of cols 10-30 becomes two, 2 px apart (cols 18 and 19)
    img[:, 8:24, 18:20] = 60
    write_png(tmp_path / "train-a" / "images" / "part_0.png", img)
    write_png(tmp_path / "train-a" / "masks" / "part_0.png", colour_mask(cls))
    write_png(tmp_path / "val-b" / "images" / "part_1.png", chip(1)[0])
    write_png(tmp_path / "val-b" / "masks" / "part_1.png", colour_mask(chip(1)[1]))
    classes = [{"name": "building", "mask_gap_px": 2}, {"name": "road"}]
    config = base_config(tmp_path, [colour_source(tmp_path)], data={"classes": classes})
    with pytest.raises(ConfigError, match=r"mask_gap_px, but loss.separation_weight is 1.0.*above 1"):
        load_training_settings(config)  # the gaps would weigh what every pixel weighs
    settings = load_training_settings(config, {"loss.separation_weight": 7.0})
    scene = next(s for s in open_data(settings).scenes if "train-a" in str(s.path))
    norm = MeanStd(mean=[0.0] * 3, std=[255.0] * 3)
    ref = WindowRef(scene.index, 0, 0, 48, 64)
    _, y, w = load_window(scene, ref, [1, 2, 3], norm, separation_weight=7.0)
    gap = np.zeros(cls.shape, dtype=bool)
    gap[6:26, 18:20] = True  # the 2 px gap, and 2 px beyond its ends (within 2 px of both roofs' corners)
    assert np.array_equal(w == 7.0, gap)  # nothing else: not the roofs' outer edges, not the road
    assert not y[0][gap].any()  # still background
    target, val_gaps = scene.targets(ref)  # validation's loss weighs the same pixels
    assert np.array_equal(val_gaps, gap) and np.array_equal(target, y)
    # the rule alone: a 3 px gap is marked on its middle line, a 4 px gap not at all
    two = np.zeros((5, 20), dtype=np.uint8)
    two[:, :5] = two[:, 8:13] = two[:, 17:] = 1  # gaps of cols 5-7 (3 px) and 13-16 (4 px)
    assert np.flatnonzero(narrow_gaps(two, 2).any(axis=0)).tolist() == [6]
    # without mask_gap_px the mask source's weights are 1 on every labelled pixel
    (tmp_path / "plain").mkdir()
    plain = load_training_settings(base_config(tmp_path / "plain", [colour_source(tmp_path)]))
    scene = next(s for s in open_data(plain).scenes if "train-a" in str(s.path))
    _, _, w = load_window(scene, ref, [1, 2, 3], norm, separation_weight=7.0)
    assert set(np.unique(w)) == {0.0, 1.0}
