"""Touching buildings apart (geounet.vectorize.separate): watershed from seeds, seam-exact.

The seam test splits a scene into blocks the way workers do (each core split on its own,
regions reaching an internal side left to the client), merges the seams, splits the merged
polygons touching seams from the crops, and compares with splitting the whole scene at once.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from geounet.settings import SeparateSettings
from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.seams import merge_seams
from geounet.vectorize.separate import (
    EdgeCrop,
    SeparationParams,
    quantize,
    seam_lines,
    separate_block,
    separate_component,
    separate_mask,
    separate_merged,
)

PARAMS = SeparationParams(seed_level=204, min_seed_px=3, max_side_px=1000)


def attached_houses(n: int = 3, size: int = 10, gap_p: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """A row of ``n`` square houses sharing walls: probability 0.95 inside, ``gap_p`` on the walls."""
    w = n * size + (n - 1) + 4
    prob = np.full((size + 4, w), 0.05, np.float32)
    prob[2 : 2 + size, 2 : w - 2] = 0.95
    for i in range(1, n):
        prob[2 : 2 + size, 2 + i * (size + 1) - 1] = gap_p
    return prob >= 0.5, prob


def regions(mask: np.ndarray) -> int:
    return int(ndimage.label(mask)[1])


def test_attached_houses_become_one_region_each() -> None:
    mask, prob = attached_houses(3)
    assert regions(mask) == 1
    out = separate_mask(mask, prob, PARAMS)
    assert regions(out) == 3
    # only the wall pixels went: each house keeps its 10 x 10 pixels
    assert int(mask.sum() - out.sum()) == 2 * 10
    assert np.array_equal(np.bincount(ndimage.label(out)[0].ravel())[1:], [100, 100, 100])


def test_a_house_without_a_separation_line_stays_whole() -> None:
    mask, prob = attached_houses(1, size=20)
    assert separate_component(mask, quantize(prob), PARAMS) is None
    out = separate_mask(mask, prob, PARAMS)
    assert np.array_equal(out, mask)


def test_a_weak_dip_above_the_seed_threshold_does_not_split() -> None:
    mask, prob = attached_houses(2, gap_p=0.85)  # 0.85 * 255 >= 204: one seed across the wall
    assert regions(separate_mask(mask, prob, PARAMS)) == 1


def test_small_seeds_are_ignored() -> None:
    mask, prob = attached_houses(2)
    prob = prob.copy()
    prob[2:14, 2:12] = 0.6  # the first house is below the seed level except for a 2 x 2 px patch
    prob[6:8, 6:8] = 0.95  # eroded to nothing by the one-pixel erosion
    assert regions(separate_mask(mask, prob, PARAMS)) == 1


def test_regions_longer_than_max_side_are_left_whole() -> None:
    mask, prob = attached_houses(3)
    small = SeparationParams(seed_level=204, min_seed_px=3, max_side_px=20)
    assert np.array_equal(separate_mask(mask, prob, small), mask)


def test_params_from_settings_in_metres() -> None:
    p = SeparationParams.from_settings(SeparateSettings(seed_threshold=0.8, min_seed_m2=2.0, max_size_m=300), 0.5, 0.5)
    assert p == SeparationParams(seed_level=204, min_seed_px=8, max_side_px=600)
    # never below the class threshold
    assert SeparationParams.from_settings(SeparateSettings(seed_threshold=0.3), 0.5, 0.6).seed_level == 153


def test_block_leaves_regions_on_internal_sides_to_the_client() -> None:
    mask, prob = attached_houses(3)
    # the terrace lies 2 px inside every side: split on the worker, nothing for the client
    out, crops, n = separate_block(mask, prob, PARAMS, internal={"left": True, "top": True}, row_off=7, col_off=9)
    assert n == 1 and crops == [] and regions(out) == 3
    m2, p2 = mask.copy(), prob.copy()
    m2[2:12, 0:2] = True  # now the terrace reaches the left side
    p2[2:12, 0:2] = 0.95
    out, crops, n = separate_block(m2, p2, PARAMS, internal={"left": True}, row_off=7, col_off=9)
    assert n == 0 and np.array_equal(out, m2)
    assert len(crops) == 1 and crops[0].box == (9, 9, 9 + m2.shape[1] - 2, 19)
    inside = m2[2:12, 0 : m2.shape[1] - 2]
    assert np.array_equal(crops[0].prob[inside], p2[2:12, 0 : m2.shape[1] - 2][inside])
    assert (crops[0].prob[~inside] == -1).all()
    # the same region on a scene border side is the block's own to split
    out, crops, n = separate_block(m2, p2, PARAMS, internal={"right": True}, row_off=7, col_off=9)
    assert n == 1 and crops == [] and regions(out) == 3


# --------------------------------------------------------------------------- seam exactness
def blockwise(mask: np.ndarray, prob: np.ndarray, row_cuts: Sequence[int], col_cuts: Sequence[int]):
    """What the workers and the client do: split each core, polygonize, merge, split at seams."""
    h, w = mask.shape
    rows = [0, *sorted(set(row_cuts)), h]
    cols = [0, *sorted(set(col_cuts)), w]
    blocks, crops, cores = [], [], []
    split = 0
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            internal = {"top": r0 > 0, "bottom": r1 < h, "left": c0 > 0, "right": c1 < w}
            m, cr, n = separate_block(
                mask[r0:r1, c0:c1], prob[r0:r1, c0:c1], PARAMS, internal=internal, row_off=r0, col_off=c0
            )
            split += n
            b = polygonize_block(m, prob[r0:r1, c0:c1], row_off=r0, col_off=c0, scene_height=h, scene_width=w)
            blocks.append(pickle.loads(pickle.dumps(b)))
            crops.extend(pickle.loads(pickle.dumps(cr)))
            cores.append((c0, r0, c1 - c0, r1 - r0))
    merged = merge_seams(blocks)
    out, at_seams = separate_merged(merged, crops, seam_lines(cores, w, h), PARAMS)
    return out, split + at_seams


def whole(mask: np.ndarray, prob: np.ndarray):
    h, w = mask.shape
    m = separate_mask(mask, prob, PARAMS)
    return merge_seams([polygonize_block(m, prob, row_off=0, col_off=0, scene_height=h, scene_width=w)])


def houses_scene(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Terraces of attached houses of random sizes, with noisy probabilities."""
    prob = (rng.random((h, w)) * 0.3).astype(np.float32)
    for _ in range(n):
        k = int(rng.integers(1, 5))
        size = int(rng.integers(4, 12))
        r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        rr = slice(r, min(h, r + size))
        prob[rr, c : min(w, c + k * (size + 1))] = 0.8 + 0.2 * rng.random()
        for i in range(1, k):
            x = c + i * (size + 1) - 1
            if x < w:
                prob[rr, x] = 0.55 + 0.2 * rng.random()
    prob = np.clip(prob + rng.normal(0, 0.03, prob.shape).astype(np.float32), 0, 1)
    return prob >= 0.5, prob


@st.composite
def cases(draw: st.DrawFn):
    h = draw(st.integers(8, 90))
    w = draw(st.integers(8, 90))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask, prob = houses_scene(rng, h, w, draw(st.integers(1, 25)))

    def cuts(n: int) -> list[int]:
        if draw(st.booleans()):
            size = draw(st.integers(3, n))
            return list(range(size, n, size))
        return draw(st.lists(st.integers(1, n - 1), max_size=6, unique=True))

    return mask, prob, cuts(h), cuts(w)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_blocks_equal_splitting_the_whole_scene(case) -> None:
    mask, prob, row_cuts, col_cuts = case
    got, _ = blockwise(mask, prob, row_cuts, col_cuts)
    ref = whole(mask, prob)
    assert len(got) == len(ref)
    assert shapely.equals(got.geoms, ref.geoms).all()
    np.testing.assert_array_equal(got.pixel_count, ref.pixel_count)
    np.testing.assert_allclose(got.prob_sum, ref.prob_sum, rtol=1e-5)


def test_seam_through_a_terrace_is_split_like_the_whole_scene() -> None:
    mask, prob = attached_houses(4, size=10)
    ref = whole(mask, prob)
    assert len(ref) == 4
    # a vertical seam through the second house and a horizontal one through all of them
    got, n = blockwise(mask, prob, [7], [17])
    assert n == 1  # one region, split on the client from its four pieces' crops
    assert len(got) == 4 and shapely.equals(got.geoms, ref.geoms).all()
    assert sorted(shapely.area(got.geoms)) == [100.0] * 4


def test_crops_must_cover_the_merged_polygon() -> None:
    mask, prob = attached_houses(2)
    h, w = mask.shape
    left = polygonize_block(mask[:, :12], prob[:, :12], row_off=0, col_off=0, scene_height=h, scene_width=w)
    right = polygonize_block(mask[:, 12:], prob[:, 12:], row_off=0, col_off=12, scene_height=h, scene_width=w)
    merged = merge_seams([left, right])
    lonely = [EdgeCrop(2, 2, np.where(mask[2:12, 2:12], prob[2:12, 2:12], -1).astype(np.float32))]
    with pytest.raises(RuntimeError, match="not covered"):
        separate_merged(merged, lonely, seam_lines([(0, 0, 12, h), (12, 0, w - 12, h)], w, h), PARAMS)


# --------------------------------------------------------------------------- through the pipeline
def _terraces_scene(path):  # type: ignore[no-untyped-def]
    """Rows of attached 20 x 12 m houses on 0.5 m pixels; band 1 is what the probe model reads:
    255 inside a house (p ~ 1), 130 on the party walls (p ~ 0.6: above the 0.5 threshold, below
    the 0.7 seeds), 0 elsewhere."""
    from affine import Affine

    from tests.conftest import write_tif

    band = np.zeros((200, 300), np.uint8)
    for r0 in (10, 70, 130):
        for k in range(6):
            c0 = 7 + k * 41  # houses 40 px wide, a 1 px wall between neighbours
            band[r0 : r0 + 24, c0 : c0 + 40] = 255
            if k:
                band[r0 : r0 + 24, c0 - 1] = 130
    img = np.stack([band, np.full_like(band, 90), np.full_like(band, 90)])
    return write_tif(path, img, crs="EPSG:32633", transform=Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0))


def test_pipeline_splits_terraces_the_same_on_any_block_grid(tmp_path, dask_local) -> None:  # type: ignore[no-untyped-def]
    import geopandas as gpd

    from geounet.batch.run import run_scenes
    from geounet.settings import InferenceSettings
    from tests.conftest import make_checkpoint

    scene = _terraces_scene(tmp_path / "terraces.tif")
    ckpt = make_checkpoint(tmp_path / "probe.safetensors", arch="probe", width=1, depth=4)
    layers = {}
    for name, tile, on in (("blocks", 64, True), ("whole", 320, True), ("off", 64, False)):
        settings = InferenceSettings(
            tile_size=tile,
            halo=0,
            formats=["gpkg"],
            separate=SeparateSettings(enabled=on),
            centerlines={"enabled": False},
        )
        [res] = run_scenes([str(scene)], ckpt, tmp_path / name, settings, client=dask_local, progress=False)
        assert res.status == "success", res.error
        record = json.loads((tmp_path / name / "terraces" / "scene.json").read_text())
        layers[name] = (gpd.read_file(tmp_path / name / "terraces" / "polygons.gpkg", layer="buildings_raw"), record)
    blocks, rec_blocks = layers["blocks"]
    whole, rec_whole = layers["whole"]
    off, rec_off = layers["off"]
    assert len(off) == 3 and rec_off["separated"] == {}  # a terrace is one polygon without separation
    assert len(blocks) == len(whole) == 18  # one per house
    assert rec_blocks["separated"]["building"]["regions_split"] == 3
    assert rec_blocks["separated"]["building"]["at_seams"] == 3  # every terrace crosses a 64 px seam
    assert rec_whole["separated"]["building"]["at_seams"] == 0
    key = lambda g: (round(g.bounds[1], 3), round(g.bounds[0], 3))  # noqa: E731
    for a, b in zip(sorted(blocks.geometry, key=key), sorted(whole.geometry, key=key)):
        assert a.equals(b)
    assert sorted(round(a, 6) for a in blocks.geometry.area) == [20.0 * 12.0] * 18  # each house whole
