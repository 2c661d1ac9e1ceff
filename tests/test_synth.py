"""geounet.synth: georeferencing, determinism, exact truth, content, memory bound, command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rasterio.crs import CRS
from rasterio.features import rasterize

from geounet.errors import ConfigError
from geounet.synth import SynthScene, synthesize_scene, synthesize_set
from geounet.synth.paint import SHADOW

LAYERS = ("buildings", "roads", "road_centerlines")


def read_pixels(scene: SynthScene) -> np.ndarray:
    with rasterio.open(scene.image) as ds:
        return ds.read()


def read_truth(scene: SynthScene, layer: str) -> gpd.GeoDataFrame:
    return gpd.read_file(scene.truth, layer=layer)


def truth_mask(scene: SynthScene, layer: str) -> np.ndarray:
    """Pixels whose centre lies in a truth polygon, rasterized in CRS coordinates."""
    frame = read_truth(scene, layer)
    if len(frame) == 0:
        return np.zeros((scene.height, scene.width), dtype=bool)
    return rasterize(frame.geometry, out_shape=(scene.height, scene.width), transform=scene.transform).astype(bool)


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> SynthScene:
    return synthesize_scene(tmp_path_factory.mktemp("town"), name="town", width=768, height=640, seed=11)


# --- georeferencing ---------------------------------------------------------------------
@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:32733", "EPSG:4326"])
def test_georeferencing(tmp_path: Path, crs: str) -> None:
    scene = synthesize_scene(tmp_path, name="g", width=160, height=96, crs=crs, seed=1)
    with rasterio.open(scene.image) as ds:
        assert ds.crs == CRS.from_user_input(crs)
        assert (ds.width, ds.height, ds.count) == (160, 96, 3)
        assert ds.transform == scene.transform
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.compression.name == "deflate"
        assert ds.descriptions == ("red", "green", "blue")
        bounds = ds.bounds
    t = scene.transform
    assert t.b == 0 and t.d == 0 and t.a > 0 and t.e == -t.a  # north-up, square pixels
    if crs == "EPSG:4326":
        assert t.a == pytest.approx(0.5 / 111_320)  # ~0.5 m in degrees
        assert -180 < t.c < 180 and -90 < t.f < 90
    else:
        assert t.a == 0.5
        assert 166_000 < t.c < 834_000  # inside the UTM zone
        if crs == "EPSG:32733":  # southern hemisphere: false northing 10 000 km
            assert 1_000_000 < t.f < 10_000_000
        else:
            assert 0 < t.f < 9_400_000
    assert scene.gsd == pytest.approx(0.5)
    for layer in LAYERS:
        frame = read_truth(scene, layer)
        assert CRS.from_user_input(frame.crs.to_wkt()) == CRS.from_user_input(crs)
        if len(frame):
            x0, y0, x1, y1 = frame.total_bounds
            eps = 1e-9 * max(1.0, abs(t.c), abs(t.f))
            assert x0 >= bounds.left - eps and x1 <= bounds.right + eps
            assert y0 >= bounds.bottom - eps and y1 <= bounds.top + eps


def test_explicit_origin_and_resolution(tmp_path: Path) -> None:
    scene = synthesize_scene(tmp_path, name="o", width=64, height=48, resolution=2.0, origin=(400_000.0, 5_000_000.0))
    with rasterio.open(scene.image) as ds:
        assert tuple(ds.transform)[:6] == (2.0, 0.0, 400_000.0, 0.0, -2.0, 5_000_000.0)
    assert scene.gsd == 2.0


# --- determinism --------------------------------------------------------------------------
def test_same_seed_same_bytes_whatever_the_block_size(tmp_path: Path) -> None:
    kw = dict(width=300, height=220, seed=5, bands=4, dtype="uint16", nodata=0, nodata_border=7)
    a = synthesize_scene(tmp_path / "a", name="s", block_size=512, **kw)
    b = synthesize_scene(tmp_path / "b", name="s", block_size=512, **kw)
    c = synthesize_scene(tmp_path / "c", name="s", block_size=48, **kw)  # 48 divides neither side nor the tile
    assert a.image.read_bytes() == b.image.read_bytes()
    pixels = read_pixels(a)
    assert np.array_equal(pixels, read_pixels(c))
    for other in (b, c):
        for layer in LAYERS:
            ta, to = read_truth(a, layer), read_truth(other, layer)
            assert list(shapely.to_wkb(ta.geometry.values)) == list(shapely.to_wkb(to.geometry.values))
            assert ta.drop(columns="geometry").equals(to.drop(columns="geometry"))
    d = synthesize_scene(tmp_path / "d", name="s", block_size=512, **{**kw, "seed": 6})
    assert not np.array_equal(pixels, read_pixels(d))


# --- truth matches pixels -----------------------------------------------------------------
def test_building_truth_is_exactly_the_painted_roofs(tmp_path: Path) -> None:
    """With and without buildings (no trees): the image changes exactly on truth roofs and shadows.

    Every building-truth pixel changes; every changed pixel outside the truth is the same
    pixel darkened by the shadow tint -- a shadow, never a roof.
    """
    kw = dict(width=512, height=384, seed=3, tree_density=0.0)
    with_b = synthesize_scene(tmp_path, name="with", building_density=0.9, **kw)
    without = synthesize_scene(tmp_path, name="without", building_density=0.0, **kw)
    assert with_b.n_buildings > 20 and without.n_buildings == 0
    img, base = read_pixels(with_b).astype(float), read_pixels(without).astype(float)
    roofs = truth_mask(with_b, "buildings")
    changed = (img != base).any(axis=0)
    assert changed[roofs].mean() > 0.995
    outside = changed & ~roofs
    assert outside.sum() > 1000  # shadows exist
    expected = base[:, outside] * SHADOW[:3, None].astype(float)
    assert np.abs(img[:, outside] - expected).max() <= 1.01  # uint8 rounding only
    # roads are identical in both scenes
    assert np.array_equal(truth_mask(with_b, "roads"), truth_mask(without, "roads"))


def test_pixel_statistics_differ_by_class(town: SynthScene) -> None:
    img = read_pixels(town).astype(int)
    roofs, roads = truth_mask(town, "buildings"), truth_mask(town, "roads")
    ground = ~roofs & ~roads
    assert roofs.mean() > 0.04 and roads.mean() > 0.05
    chroma = img.max(axis=0) - img.min(axis=0)
    assert np.median(chroma[roads]) <= 8  # asphalt is grey
    assert np.median(chroma[ground]) >= 25  # grass and soil are not
    assert np.median(chroma[roofs]) >= 15  # most roofs are coloured (tiles, slate)
    # roofs are brighter than the ground on average and vary much more from building to building
    assert img[:, roofs].mean() > img[:, ground].mean() + 10
    assert img[:, roofs].std(axis=1).mean() > 1.5 * img[:, ground].std(axis=1).mean()


# --- content --------------------------------------------------------------------------------
def test_road_network_is_connected(town: SynthScene) -> None:
    roads = read_truth(town, "roads")
    union = shapely.union_all(roads.geometry.values)
    parts = shapely.get_parts(union)
    assert len(roads) > 5
    assert shapely.area(parts).max() >= 0.99 * union.area


def test_roads_have_widths_and_centrelines(town: SynthScene) -> None:
    lines = read_truth(town, "road_centerlines")
    roads = read_truth(town, "roads")
    assert len(lines) and lines.width_m.between(6.0, 14.0).all()
    assert roads.width_m.between(6.0, 14.0).all()
    assert set(roads.kind) <= {"local", "main", "dead_end"}
    # every centreline runs inside the road polygons of its road
    by_id = roads.dissolve(by="id").geometry
    for road_id, line in zip(lines.id, lines.geometry):
        assert by_id[road_id].buffer(0.01).contains(line)


def test_buildings_clear_of_roads_and_some_attached(town: SynthScene) -> None:
    b = read_truth(town, "buildings").geometry.values
    r = read_truth(town, "roads").geometry.values
    _, dist = shapely.STRtree(r).query_nearest(b, return_distance=True, all_matches=False)
    assert dist.min() >= 1.5 - 1e-6  # metres (UTM)
    tree = shapely.STRtree(b)
    i, j = tree.query(b, predicate="intersects")
    pairs = i < j
    overlap = shapely.area(shapely.intersection(b[i[pairs]], b[j[pairs]]))
    assert overlap.max(initial=0.0) < 1e-6  # none overlap...
    assert pairs.sum() >= 2  # ...but some share a wall (terraced houses)
    inner = shapely.contains_properly(shapely.box(*shapely.total_bounds(r)).buffer(-2.0), b)
    sides = [
        max(np.hypot(*np.diff(np.asarray(g.minimum_rotated_rectangle.exterior.coords)[:3], axis=0).T)) for g in b[inner]
    ]
    assert min(sides) >= 7.0 and max(sides) <= 41.0  # metres


@pytest.mark.parametrize("bands, dtype, top", [(1, "uint8", 255), (3, "uint16", 4095), (4, "float32", 1.0)])
def test_band_and_dtype_options(tmp_path: Path, bands: int, dtype: str, top: float) -> None:
    scene = synthesize_scene(tmp_path, name="o", width=96, height=80, bands=bands, dtype=dtype, seed=2)
    with rasterio.open(scene.image) as ds:
        assert ds.count == bands and ds.dtypes[0] == dtype
        assert len(ds.descriptions) == bands and ds.descriptions[-1] == {1: "gray", 3: "blue", 4: "nir"}[bands]
        a = ds.read()
    assert a.min() >= 0 and a.max() <= top and a.max() > 0.3 * top


def test_nodata_border(tmp_path: Path) -> None:
    scene = synthesize_scene(tmp_path, name="n", width=200, height=160, nodata=0, nodata_border=12, seed=4)
    a = read_pixels(scene)
    with rasterio.open(scene.image) as ds:
        assert ds.nodata == 0
    inner = np.zeros(a.shape[1:], dtype=bool)
    inner[12:-12, 12:-12] = True
    assert (a[:, ~inner] == 0).all() and (a[:, inner] != 0).all()
    t = scene.transform
    for layer in LAYERS:  # truth lies in the valid area
        frame = read_truth(scene, layer)
        if len(frame):
            x0, y0, x1, y1 = frame.total_bounds
            assert x0 >= t.c + 12 * t.a - 1e-6 and x1 <= t.c + 188 * t.a + 1e-6
            assert y1 <= t.f + 12 * t.e + 1e-6 and y0 >= t.f + 148 * t.e - 1e-6


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(bands=2), "bands"),
        (dict(dtype="int8"), "dtype"),
        (dict(nodata=-1), "nodata"),
        (dict(nodata_border=5), "nodata_border"),
        (dict(crs="EPSG:4326", resolution=0.5), "degrees"),
        (dict(crs="not-a-crs"), "crs"),
        (dict(width=8), "width"),
        (dict(building_density=1.5), "building_density"),
    ],
)
def test_invalid_options_are_config_errors(tmp_path: Path, kw: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        synthesize_scene(tmp_path, **kw)
    assert not any(tmp_path.iterdir())


def test_existing_outputs_are_not_overwritten(tmp_path: Path) -> None:
    synthesize_set(tmp_path, 2, seed=1, width=64, height=64)
    with pytest.raises(ConfigError, match="overwrite"):
        synthesize_set(tmp_path, 2, seed=1, width=64, height=64)
    scenes = synthesize_set(tmp_path, 2, seed=1, width=64, height=64, overwrite=True)
    assert [s.name for s in scenes] == ["synth_0000", "synth_0001"] and [s.seed for s in scenes] == [1, 2]


# --- memory bound ---------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from geounet.synth import synthesize_scene
    out, n = sys.argv[1], int(sys.argv[2])
    synthesize_scene(out, name="warm", width=256, height=256, bands=4, dtype="uint16")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    synthesize_scene(out, name="big", width=n, height=n, bands=4, dtype="uint16", seed=3)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_bytes": (after - before) * 1024}))
""")


@pytest.mark.soak
def test_memory_stays_far_below_the_full_raster(tmp_path: Path) -> None:
    """A 6000 x 6000 x 4 uint16 scene (275 MiB as one array) is written with a fraction of that."""
    n = 6000
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    growth = json.loads(done.stdout.strip().splitlines()[-1])["growth_bytes"]
    full = n * n * 4 * 2
    assert growth < full / 3, f"peak RSS grew {growth / 2**20:.0f} MiB for a {full / 2**20:.0f} MiB raster"
    with rasterio.open(tmp_path / "big.tif") as ds:
        assert (ds.width, ds.height, ds.count) == (n, n, 4)


# --- command line -----------------------------------------------------------------------
def test_cli_writes_scenes_and_prints_paths(tmp_path: Path) -> None:
    from geounet.cli.synth import command

    runner = CliRunner()
    result = runner.invoke(command, [str(tmp_path), "-n", "2", "--size", "96", "--seed", "7", "--no-progress"])
    assert result.exit_code == 0, result.output
    for i in range(2):
        for suffix in (".tif", "_truth.gpkg", "_buildings.geojson", "_roads.geojson"):
            path = tmp_path / f"synth_{i:04d}{suffix}"
            assert path.is_file() and str(path) in result.output
    with rasterio.open(tmp_path / "synth_0001.tif") as ds:
        assert (ds.width, ds.height) == (96, 96) and ds.tags()["GEOUNET_SYNTH_SEED"] == "8"
    again = runner.invoke(command, [str(tmp_path), "-n", "2", "--size", "96"])
    assert isinstance(again.exception, ConfigError)
    geo = runner.invoke(
        command,
        [
            str(tmp_path),
            "--width",
            "80",
            "--height",
            "64",
            "--crs",
            "EPSG:4326",
            "--prefix",
            "geo",
            "--bands",
            "4",
            "--dtype",
            "float32",
        ],
    )
    assert geo.exit_code == 0, geo.output
    with rasterio.open(tmp_path / "geo_0000.tif") as ds:
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (80, 64, 4, "float32") and ds.crs.is_geographic


def test_cli_help_states_units_and_defaults() -> None:
    from geounet.cli.synth import command

    text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())  # undo line wrapping
    for words in ("pixels", "metres", "degrees", "default: 0.7", "EPSG:32633", "0-4095", "--overwrite"):
        assert words in text


def test_truth_files_are_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    """Same seed and options give the same bytes: nothing of the writer (a temporary name, a
    process id) leaks into the files."""
    a = synthesize_scene(tmp_path / "a", name="s", width=96, height=80, seed=5)
    b = synthesize_scene(tmp_path / "b", name="s", width=96, height=80, seed=5)
    for key in ("buildings_geojson", "roads_geojson"):
        pa, pb = getattr(a, key), getattr(b, key)
        assert pa.read_bytes() == pb.read_bytes()
        assert ".partial" not in pa.read_text()
