"""Regular building outlines (geounet/vectorize/regularize.py): pixel staircases become
outlines along the building's directions with right angles; the gate keeps the pixel outline
where the result strays; the pipeline writes both."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes
from shapely import affinity

from geounet.batch.finalize import regularized_classes
from geounet.batch.run import run_scenes
from geounet.checkpoint.metadata import is_building_name
from geounet.errors import ConfigError
from geounet.evaluate.shapes import corner_angles, direction_difference, vertex_counts
from geounet.settings import InferenceSettings, RegularizeSettings
from geounet.vectorize.regularize import (
    SIMPLIFY_PX,
    dominant_direction,
    fitted_rectangles,
    orthogonal_outlines,
    regularize,
    regularize_in_crs,
)
from tests.conftest import make_checkpoint, write_tif

# the helpers burn and trace shapes in bare pixel coordinates, without georeferencing
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

PIXEL = 0.5  # metres
SIMPLIFY = SIMPLIFY_PX * PIXEL  # the default simplification, metres


def _staircase(shape: shapely.Polygon, size: int = 120, noise: float = 0.0, seed: int = 0) -> shapely.Polygon:
    """``shape`` (pixel units) burned into a mask, ``noise``: the share of its boundary pixels
    flipped; the largest 4-connected region's outline, without holes, in metres."""
    mask = rasterize([shape], out_shape=(size, size)).astype(bool)
    if noise:
        from scipy.ndimage import binary_dilation, binary_erosion

        edge = binary_dilation(mask) & ~binary_erosion(mask)
        flip = edge & (np.random.default_rng(seed).random(mask.shape) < noise)
        mask ^= flip
    regions = [shapely.geometry.shape(g) for g, _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4)]
    outline = shapely.Polygon(max(regions, key=lambda p: p.area).exterior)
    return affinity.scale(outline, PIXEL, PIXEL, origin=(0, 0))


def _rotated(shape: shapely.Polygon, degrees: float) -> shapely.Polygon:
    return affinity.rotate(shape, degrees, origin="centroid")


def test_noisy_rotated_rectangle_becomes_four_right_angles_along_its_direction() -> None:
    raw = _staircase(_rotated(shapely.box(30, 45, 90, 75), 20), noise=0.15, seed=1)
    assert vertex_counts([raw])[0] > 60  # a staircase
    r = regularize([raw], simplify_m=SIMPLIFY)
    assert r.regularized.tolist() == [True]
    out = r.geoms[0]
    angles, _ = corner_angles([out])
    assert vertex_counts([out])[0] == 4 and len(angles) == 4
    assert np.abs(angles - 90).max() <= 2
    assert direction_difference(dominant_direction([out])[0], 20.0) <= 2
    assert out.is_valid and shapely.intersection(out, raw).area / shapely.union(out, raw).area > 0.9


def test_l_shape_keeps_its_six_corners() -> None:
    ell = shapely.Polygon([(20, 20), (100, 20), (100, 50), (50, 50), (50, 100), (20, 100)])
    raw = _staircase(_rotated(ell, 20))
    r = regularize([raw], simplify_m=SIMPLIFY)
    angles, _ = corner_angles(r.geoms)
    assert r.regularized.tolist() == [True]
    assert vertex_counts(r.geoms)[0] == 6 and np.abs(angles - 90).max() <= 2


def test_the_gate_keeps_the_pixel_outline_of_a_thin_sliver() -> None:
    sliver = _staircase(_rotated(shapely.box(10, 57.5, 110, 62.5), 30))  # 5 px = 2.5 m wide
    square = _staircase(shapely.box(40, 40, 80, 80))
    # the library's path (rectangle_iou 1: no fitted rectangle for a rotated staircase)
    r = regularize([sliver, square, None, shapely.Polygon()], simplify_m=SIMPLIFY, rectangle_iou=1.0)
    assert r.regularized.tolist() == [False, True, False, False]
    assert r.geoms[0] is sliver  # untouched, not a copy with rounding
    # without the gate the library's outline is taken: it lost much of the sliver
    loose = regularize([sliver], simplify_m=SIMPLIFY, min_iou=1e-9, area_tolerance=1.0, rectangle_iou=1.0)
    assert loose.regularized.tolist() == [True]
    got = loose.geoms[0]
    assert shapely.intersection(got, sliver).area / shapely.union(got, sliver).area < 0.8


def test_rectangles_take_their_fitted_rectangle() -> None:
    """The fast path: a staircase rectangle becomes the rectangle through the middle of its stairs."""
    true = _rotated(shapely.box(10, 57.5, 110, 62.5), 30)
    sliver = _staircase(true)
    r = regularize([sliver], simplify_m=SIMPLIFY)
    got = r.geoms[0]
    assert r.regularized.tolist() == [True]
    assert vertex_counts([got])[0] == 4
    angles, _ = corner_angles([got])
    assert np.abs(angles - 90).max() < 1e-6
    assert got.area == pytest.approx(sliver.area, rel=1e-9)  # the fit keeps the area
    true = affinity.scale(true, PIXEL, PIXEL, origin=(0, 0))  # metres, as the staircase
    assert shapely.intersection(got, true).area / shapely.union(got, true).area > 0.9
    rects, iou = fitted_rectangles([sliver, _staircase(shapely.box(40, 40, 80, 80)), shapely.Polygon()])
    assert iou[0] >= 0.9 and iou[1] == pytest.approx(1.0) and rects[2] is None and iou[2] == 0
    assert shapely.equals(rects[1], affinity.scale(shapely.box(40, 40, 80, 80), PIXEL, PIXEL, origin=(0, 0)))
    # an L shape is no rectangle: it goes to the library, which keeps the L
    ell = _staircase(_rotated(shapely.Polygon([(0, 0), (60, 0), (60, 20), (20, 20), (20, 60), (0, 60)]), 20))
    assert fitted_rectangles([ell])[1][0] < 0.9
    r = regularize([ell], simplify_m=SIMPLIFY, orthogonal=False)
    assert r.regularized.tolist() == [True] and vertex_counts(r.geoms)[0] >= 6


def test_rectilinear_outlines_get_right_angles_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    from geounet.vectorize import regularize as module

    true_l = _rotated(shapely.Polygon([(10, 10), (90, 10), (90, 40), (40, 40), (40, 90), (10, 90)]), 20)
    true_u = shapely.Polygon([(10, 10), (100, 10), (100, 70), (75, 70), (75, 35), (35, 35), (35, 70), (10, 70)])
    ell, you = _staircase(true_l), _staircase(true_u)
    triangle = _staircase(shapely.Polygon([(10, 10), (100, 10), (10, 100)]))
    holed = shapely.Polygon(shapely.box(0, 0, 40, 40).exterior, [shapely.box(10, 10, 30, 30).exterior.coords])
    geoms = np.array([ell, you, triangle, holed], dtype=object)
    got = orthogonal_outlines(geoms, dominant_direction(geoms, simplify=SIMPLIFY), simplify=SIMPLIFY)
    assert got[2] is None and got[3] is None  # diagonal walls, a hole: not for this path
    for g, truth, corners in ((got[0], true_l, 6), (got[1], true_u, 8)):
        truth = affinity.scale(truth, PIXEL, PIXEL, origin=(0, 0))
        assert g.is_valid and vertex_counts([g])[0] == corners
        angles, _ = corner_angles([g])
        assert np.abs(angles - 90).max() < 1e-6
        assert shapely.intersection(g, truth).area / shapely.union(g, truth).area > 0.9
    # regularize takes them without calling the library
    monkeypatch.setattr(module, "regularize_geodataframe", lambda *a, **k: pytest.fail("library called"))
    r = regularize([ell, you], simplify_m=SIMPLIFY)
    assert r.regularized.tolist() == [True, True]
    assert vertex_counts(r.geoms).tolist() == [6, 8]


def test_outlines_narrower_than_two_tolerances_are_left_alone() -> None:
    """A 1 m sliver or a 1.5 m square would collapse in a 1 m simplification: kept as they are."""
    narrow = [_staircase(_rotated(shapely.box(10, 59, 110, 61), 30)), _staircase(shapely.box(40, 40, 43, 43))]
    r = regularize(narrow, simplify_m=SIMPLIFY, min_iou=1e-9, area_tolerance=1.0)
    assert r.regularized.tolist() == [False, False]
    assert all(a is b for a, b in zip(r.geoms, narrow))


def test_a_polygon_the_library_fails_on_keeps_its_pixel_outline(monkeypatch: pytest.MonkeyPatch) -> None:
    from geounet.vectorize import regularize as module

    real = module.regularize_geodataframe

    def fussy(frame: gpd.GeoDataFrame, **options: object) -> gpd.GeoDataFrame:
        if (frame.geometry.area > 500).any():
            raise ValueError("cannot")
        return real(frame, **options)

    monkeypatch.setattr(module, "regularize_geodataframe", fussy)
    # an L (no rectangle: the library's) larger than 500 m2, a square (the fitted rectangle)
    ell = shapely.Polygon([(10, 10), (110, 10), (110, 40), (40, 40), (40, 110), (10, 110)])
    small, large = _staircase(shapely.box(20, 20, 50, 50)), _staircase(_rotated(ell, 20))
    r = regularize([small, large], simplify_m=SIMPLIFY, orthogonal=False)
    assert r.regularized.tolist() == [True, False] and r.geoms[1] is large


def test_a_direction_between_whole_degrees_is_kept() -> None:
    """The library rounds its direction to a whole degree; each polygon is turned to WORK_DEG
    (+ a nudge) first and back after, so a rectangle at 23.96 degrees stays where it is (the
    library alone put it at 23 degrees, its corners 0.55 m away)."""
    for degrees in (23.96, 0.0, 45.0, 89.7):
        rect = affinity.rotate(shapely.box(0, 0, 34, 20), degrees, origin=(0, 0))
        r = regularize([rect], simplify_m=SIMPLIFY)
        assert r.regularized.tolist() == [True] and shapely.hausdorff_distance(r.geoms[0], rect) < 1e-3


def test_degrees_scenes_are_regularized_on_the_ground() -> None:
    """At 60 N a degree of longitude is half a degree of latitude on the ground: right angles
    are made in a local metric plane, not in degrees."""
    from pyproj import Transformer

    raw = _staircase(_rotated(shapely.box(30, 45, 90, 75), 20))
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    placed = affinity.translate(raw, 500000.0, 6650000.0)
    lonlat = shapely.transform(placed, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    centre = lonlat.centroid.coords[0]
    r = regularize_in_crs([lonlat], "EPSG:4326", center_xy=centre, settings=RegularizeSettings(), pixel_m=PIXEL)
    assert r.regularized.tolist() == [True]
    back = shapely.transform(r.geoms[0], lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
    angles, _ = corner_angles([back])
    assert len(angles) == 4 and np.abs(angles - 90).max() <= 1


@pytest.mark.parametrize(
    ("name", "building"),
    [("building", True), ("Buildings", True), ("small_building", True), ("building_roof", False), ("road", False)],
)
def test_building_names(name: str, building: bool) -> None:
    assert is_building_name(name) is building


def test_regularized_classes_follow_names_settings_and_formats() -> None:
    classes = ["building", "road"]
    assert regularized_classes(classes, InferenceSettings()) == ["building"]
    assert regularized_classes(classes, InferenceSettings(regularize={"classes": ["road"]})) == ["road"]
    assert regularized_classes(classes, InferenceSettings(regularize={"enabled": False})) == []
    assert regularized_classes(classes, InferenceSettings(formats=["probability"])) == []
    with pytest.raises(ConfigError, match=r"regularize.classes names \['house'\]"):
        regularized_classes(classes, InferenceSettings(regularize={"classes": ["house"]}))


def test_pipeline_writes_regular_outlines_and_keeps_the_pixel_ones(tmp_path: Path, dask_local) -> None:
    """Three bright rotated rectangles through the probe model (building probability ~1 where
    band 1 is bright): buildings.geojson holds 4-corner outlines, polygons.gpkg also the
    staircases (buildings_raw), scene.json counts them; disabled, the staircases are written."""
    img = np.full((3, 160, 200), 90, np.uint8)
    rects = [_rotated(shapely.box(15, 20, 75, 55), 20), _rotated(shapely.box(110, 25, 170, 60), -35)]
    rects.append(_rotated(shapely.box(60, 95, 140, 135), 10))
    img[0] = np.where(rasterize(rects, out_shape=(160, 200)).astype(bool), 255, 0)
    t = Affine(PIXEL, 0, 500000.0, 0, -PIXEL, 4650000.0)
    scene = write_tif(tmp_path / "s.tif", img, transform=t)
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4, classes=("building",))
    base = dict(tile_size=64, halo=0, tiles_per_block=1, formats=["geojson", "gpkg", "quicklook"])

    def run(out: Path, **extra: object) -> Path:
        s = InferenceSettings(**base, **extra)  # type: ignore[arg-type]
        res = run_scenes([str(scene)], ckpt, out, s, client=dask_local, progress=False)
        assert res[0].status == "success", res[0].error
        return out / "s"

    folder = run(tmp_path / "on")
    features = json.loads((folder / "buildings.geojson").read_text())["features"]
    regular = gpd.GeoDataFrame.from_features(features, crs="EPSG:4326").to_crs("EPSG:32633")
    assert len(regular) == 3 and (vertex_counts(regular.geometry) == 4).all()
    assert {"class", "score", "area_m2", "scene", "model"} <= set(regular.columns)
    np.testing.assert_allclose(regular["area_m2"], regular.geometry.area, rtol=1e-3)
    assert {n for n, _ in pyogrio.list_layers(folder / "polygons.gpkg")} == {"buildings", "buildings_raw"}
    raw = gpd.read_file(folder / "polygons.gpkg", layer="buildings_raw")
    assert len(raw) == 3 and (vertex_counts(raw.geometry) > 30).all()
    assert not (folder / "buildings_raw.geojson").exists()
    record = json.loads((folder / "scene.json").read_text())
    assert record["regularized"] == {"building": {"regularized": 3, "kept_raw": 0}}

    off = run(tmp_path / "off", regularize=RegularizeSettings(enabled=False))
    plain = json.loads((off / "buildings.geojson").read_text())["features"]
    assert len(plain) == 3 and all(len(f["geometry"]["coordinates"][0]) > 30 for f in plain)
    assert {n for n, _ in pyogrio.list_layers(off / "polygons.gpkg")} == {"buildings"}
    assert json.loads((off / "scene.json").read_text())["regularized"] == {}


def test_blobs_with_many_holes_or_corners_stay_raw_and_fast() -> None:
    """A mask blob (a field of merged roofs: hundreds of holes) is no building: kept as it
    is, without the minutes a topology-preserving simplification of it would take."""
    import time

    import shapely

    from geounet.vectorize.regularize import MAX_HOLES, regularize

    holes = [
        shapely.box(10 * i + 2, 10 * j + 2, 10 * i + 6, 10 * j + 6).exterior.coords
        for i in range(30)
        for j in range(30)
    ]
    blob = shapely.Polygon(shapely.box(0, 0, 300, 300).exterior.coords, holes)
    assert len(blob.interiors) > MAX_HOLES
    t0 = time.perf_counter()
    out = regularize([blob], simplify_m=1.5)
    assert time.perf_counter() - t0 < 5
    assert not out.regularized[0] and out.geoms[0].equals(blob)


def test_convex_clip_area_equals_the_overlay() -> None:
    from geounet.vectorize.regularize import _convex_clip_area

    rng = np.random.default_rng(5)
    polys, quads = [], []
    for _ in range(40):
        p = _staircase(
            _rotated(shapely.box(20, 30, 20 + rng.uniform(10, 70), 30 + rng.uniform(10, 60)), rng.uniform(0, 90))
        )
        if rng.random() < 0.3:  # with a hole
            c = p.centroid
            p = shapely.Polygon(p.exterior, [shapely.box(c.x - 1, c.y - 1, c.x + 1, c.y + 1).exterior.coords[::-1]])
        q = _rotated(shapely.box(15, 20, 15 + rng.uniform(5, 40), 20 + rng.uniform(5, 40)), rng.uniform(0, 90))
        q = shapely.orient_polygons(affinity.scale(q, PIXEL, PIXEL, origin=(0, 0)))
        polys.append(p)
        quads.append(np.asarray(q.exterior.coords)[:4])
    got = _convex_clip_area(np.array(polys, dtype=object), np.array(quads))
    want = shapely.area(shapely.intersection(polys, [shapely.Polygon(q) for q in quads]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (want > 0).sum() > 10


def test_vectorized_steps_in_slices_give_the_same_outlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rectangle fit, rectilinear outlines and vertex snapping run over slices of
    ``VECTOR_CHUNK`` polygons (bounded temporaries): slices of 3 give what one pass gives."""
    import geounet.vectorize.regularize as reg

    shapes_ = [
        shapely.box(20, 20, 80, 60),  # rectangle
        shapely.Polygon([(20, 20), (90, 20), (90, 50), (50, 50), (50, 90), (20, 90)]),  # L
        shapely.box(10, 40, 110, 46),  # thin
        shapely.Polygon([(30, 20), (90, 30), (80, 90), (20, 70)]),  # quadrilateral, no right angles
    ]
    raw = [
        affinity.translate(_staircase(_rotated(s, angle), noise=0.05, seed=k), 500_000.0 + 100 * k, 6_650_000.0)
        for k, (s, angle) in enumerate((s, a) for a in (0, 17, 33) for s in shapes_)
    ]
    centre = shapely.MultiPolygon(raw).centroid.coords[0]

    def run() -> reg.Regularized:
        return regularize_in_crs(raw, "EPSG:32633", center_xy=centre, settings=RegularizeSettings(), pixel_m=PIXEL)

    whole = run()
    monkeypatch.setattr(reg, "VECTOR_CHUNK", 3)
    sliced = run()
    assert 0 < whole.regularized.sum() < len(raw)  # some taken, some kept raw: both paths compared
    np.testing.assert_array_equal(sliced.regularized, whole.regularized)
    assert [g.wkb for g in sliced.geoms] == [g.wkb for g in whole.geoms]
