"""merge_seams: block-wise polygons, merged, equal polygonizing the whole mask at once.

The reference is ``rasterio.features.shapes(..., connectivity=4)`` on the whole mask, with
per-region pixel counts and probability sums from ``scipy.ndimage.label``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from unittest import mock

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import box, shape

from geounet.vectorize import seams as vectorize
from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.seams import BlockPolygons, Polygons, merge_seams


def grid(text: str) -> np.ndarray:
    rows = [r.strip() for r in text.strip().splitlines()]
    return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


def reference(mask: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-mask polygons, pixel counts and probability sums, ordered by first pixel."""
    labels, n = ndimage.label(mask)
    geoms = np.empty(n, dtype=object)
    for g, v in shapes(labels, mask=mask, connectivity=4):
        geoms[int(v) - 1] = shape(g)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    sums = np.bincount(labels.ravel(), weights=prob.ravel().astype(np.float64), minlength=n + 1)[1:]
    _, first = np.unique(labels.ravel(), return_index=True)
    order = np.argsort(first[1:] if labels.ravel()[first[0]] == 0 else first)
    return geoms[order], counts[order], sums[order]


def cuts_to_blocks(
    mask: np.ndarray, prob: np.ndarray | None, row_cuts: Sequence[int], col_cuts: Sequence[int]
) -> list[BlockPolygons]:
    """Polygonize each block of the grid given by its cut positions (pickled like Dask does)."""
    h, w = mask.shape
    rows = [0, *sorted(set(row_cuts)), h]
    cols = [0, *sorted(set(col_cuts)), w]
    blocks = []
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            p = None if prob is None else prob[r0:r1, c0:c1]
            b = polygonize_block(mask[r0:r1, c0:c1], p, row_off=r0, col_off=c0, scene_height=h, scene_width=w)
            blocks.append(pickle.loads(pickle.dumps(b)))
    return blocks


def uniform(n: int, size: int) -> list[int]:
    return list(range(size, n, size))


def assert_same_as_whole(mask: np.ndarray, merged: Polygons, prob: np.ndarray | None = None) -> None:
    geoms, counts, sums = reference(mask, np.zeros(mask.shape) if prob is None else prob)
    assert len(merged) == len(geoms)
    assert shapely.is_valid(merged.geoms).all()
    assert (shapely.get_type_id(merged.geoms) == shapely.GeometryType.POLYGON).all()
    # Same order (first pixel in raster order), so matching is element by element, 1:1.
    assert shapely.equals(merged.geoms, geoms).all()
    np.testing.assert_array_equal(shapely.get_num_interior_rings(merged.geoms), shapely.get_num_interior_rings(geoms))
    np.testing.assert_array_equal(merged.pixel_count, counts)
    assert merged.pixel_count.dtype == np.int64
    np.testing.assert_array_equal(np.rint(shapely.area(merged.geoms)).astype(np.int64), counts)
    if prob is not None:
        np.testing.assert_allclose(merged.prob_sum, sums, rtol=1e-9, atol=1e-9)


@st.composite
def scenes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    h = draw(st.integers(1, 60))
    w = draw(st.integers(1, 60))
    density = draw(st.sampled_from([0.05, 0.3, 0.5, 0.55, 0.6, 0.7, 0.95]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < density
    if draw(st.booleans()):  # blobs and rings rather than salt and pepper
        mask = ndimage.binary_opening(mask, iterations=1) ^ ndimage.binary_erosion(mask, iterations=2)
    prob = rng.random((h, w)).astype(np.float32)

    def cuts(n: int) -> list[int]:
        kind = draw(st.sampled_from(["uniform", "irregular", "none"]))
        if kind == "uniform" or n == 1:
            # Block sides from 1 pixel up to larger than the mask; at most ~15 blocks a side.
            size = draw(st.integers(max(1, n // 15), n + 10))
            return uniform(n, size)
        if kind == "irregular":
            return draw(st.lists(st.integers(1, n - 1), max_size=12, unique=True))
        return []

    return mask, prob, cuts(h), cuts(w)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_merged_blocks_equal_whole_mask(case: tuple[np.ndarray, np.ndarray, list[int], list[int]]) -> None:
    mask, prob, row_cuts, col_cuts = case
    blocks = cuts_to_blocks(mask, prob, row_cuts, col_cuts)
    with mock.patch.object(vectorize, "_union_groups", side_effect=AssertionError("fallback used")):
        merged = merge_seams(blocks)  # the stitcher resolves every group by itself
    assert_same_as_whole(mask, merged, prob)
    # The reference union-per-group merge agrees, polygon for polygon.
    reference_merge = merge_seams(blocks, method="union")
    assert shapely.equals(reference_merge.geoms, merged.geoms).all()


def test_one_pixel_blocks() -> None:
    rng = np.random.default_rng(11)
    for density in (0.3, 0.5, 0.7):
        mask = rng.random((12, 13)) < density
        prob = rng.random(mask.shape)
        merged = merge_seams(cuts_to_blocks(mask, prob, range(1, 12), range(1, 13)))
        assert_same_as_whole(mask, merged, prob)


def test_blocks_larger_than_the_scene() -> None:
    mask = grid("##.\n.##")
    merged = merge_seams(cuts_to_blocks(mask, None, [], []))
    assert_same_as_whole(mask, merged)


HOLE_ACROSS_SEAMS = grid(
    """
    ........
    .######.
    .#....#.
    .#....#.
    .#....#.
    .######.
    ........
    """
)


@pytest.mark.parametrize(("row_cuts", "col_cuts"), [([3], [4]), ([2, 4], [2, 3, 5]), ([1, 6], [1, 7]), ([3], [])])
def test_hole_crossing_seams(row_cuts, col_cuts) -> None:
    merged = merge_seams(cuts_to_blocks(HOLE_ACROSS_SEAMS, None, row_cuts, col_cuts))
    assert len(merged) == 1
    assert len(merged.geoms[0].interiors) == 1
    assert shapely.equals(merged.geoms[0], box(1, 1, 7, 6).difference(box(2, 2, 6, 5)))
    assert merged.pixel_count.tolist() == [18]


def test_pixels_touching_only_at_corners_across_seams_stay_apart() -> None:
    mask = grid(
        """
        #.#.
        .#.#
        #.#.
        """
    )
    for cuts in (([1], [1]), ([1, 2], [1, 2, 3]), ([2], [2])):
        merged = merge_seams(cuts_to_blocks(mask, None, *cuts))
        assert len(merged) == 6 and merged.pixel_count.tolist() == [1] * 6


def test_holes_touching_at_a_corner_across_seams() -> None:
    # Two holes meeting at a corner, and a hole touching the outside at a corner: the
    # valid-polygon rings (separate rings that touch at a point) come out the same.
    mask = grid(
        """
        ######.
        #.####.
        ##.###.
        ######.
        ####.#.
        ###.##.
        ######.
        """
    )
    mask[6, 6] = False
    mask[5, 6] = True
    for cuts in (([2], [2]), ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]), ([5], [4]), ([3], [3])):
        merged = merge_seams(cuts_to_blocks(mask, None, *cuts))
        assert_same_as_whole(mask, merged)


def spiral(n: int) -> np.ndarray:
    """A one-pixel-wide square spiral with one-pixel gaps: one polygon with very long rings."""
    mask = np.zeros((n, n), dtype=bool)
    r, c, dr, dc = 0, 0, 0, 1
    mask[r, c] = True

    def free(i: int, j: int) -> bool:
        return 0 <= i < n and 0 <= j < n and not mask[i, j]

    def can_step(dr: int, dc: int) -> bool:
        ahead, beyond = (r + dr, c + dc), (r + 2 * dr, c + 2 * dc)
        beyond_ok = not (0 <= beyond[0] < n and 0 <= beyond[1] < n) or not mask[beyond]
        return free(*ahead) and beyond_ok

    while True:
        if not can_step(dr, dc):
            dr, dc = dc, -dr  # turn right (rows grow downwards)
            if not can_step(dr, dc):
                return mask
        r, c = r + dr, c + dc
        mask[r, c] = True


def test_spiral_and_comb_spanning_a_three_by_three_grid() -> None:
    s = spiral(30)
    assert ndimage.label(s)[1] == 1
    merged = merge_seams(cuts_to_blocks(s, None, [10, 20], [10, 20]))
    assert_same_as_whole(s, merged)
    assert len(merged) == 1

    comb = np.zeros((30, 30), dtype=bool)
    comb[0, :] = True
    comb[:, ::3] = True
    comb[29, 1::6] = True  # closes some teeth into rings with holes spanning all blocks
    comb[29, 2::6] = True
    merged = merge_seams(cuts_to_blocks(comb, None, [10, 20], [10, 20]))
    assert_same_as_whole(comb, merged)
    assert len(merged) == 1 and len(merged.geoms[0].interiors) > 0

    ring = np.zeros((30, 30), dtype=bool)  # a ring polygon whose hole spans all 9 blocks
    ring[1:29, 1:29] = True
    ring[3:27, 3:27] = False
    merged = merge_seams(cuts_to_blocks(ring, None, [10, 20], [10, 20]))
    assert_same_as_whole(ring, merged)
    assert len(merged.geoms[0].interiors) == 1


def test_checkerboard_nothing_merges() -> None:
    mask = (np.add.outer(np.arange(20), np.arange(21)) % 2).astype(bool)
    merged = merge_seams(cuts_to_blocks(mask, None, uniform(20, 3), uniform(21, 4)))
    assert len(merged) == mask.sum()
    assert shapely.is_valid(merged.geoms).all()
    assert (merged.pixel_count == 1).all()
    assert_same_as_whole(mask, merged)


@pytest.mark.parametrize("fill", [False, True])
def test_all_zeros_and_all_ones(fill: bool) -> None:
    mask = np.full((17, 23), fill)
    prob = np.full(mask.shape, 0.25)
    for cuts in (([], []), (uniform(17, 5), uniform(23, 7)), (range(1, 17), range(1, 23))):
        merged = merge_seams(cuts_to_blocks(mask, prob, *cuts))
        if fill:
            assert len(merged) == 1 and shapely.equals(merged.geoms[0], box(0, 0, 23, 17))
            assert merged.pixel_count.tolist() == [17 * 23]
            assert merged.prob_sum[0] == pytest.approx(17 * 23 * 0.25)
            assert len(shapely.get_coordinates(merged.geoms[0])) == 5  # seam vertices removed
        else:
            assert len(merged) == 0


def test_order_does_not_depend_on_grid_or_block_order() -> None:
    rng = np.random.default_rng(5)
    mask = ndimage.binary_opening(rng.random((50, 40)) < 0.6)
    a = merge_seams(cuts_to_blocks(mask, None, [], []))
    blocks = cuts_to_blocks(mask, None, [7, 20, 21, 33], [1, 16, 30])
    rng.shuffle(blocks)
    b = merge_seams(blocks)
    assert shapely.equals(a.geoms, b.geoms).all()
    np.testing.assert_array_equal(a.pixel_count, b.pixel_count)


def test_only_seam_polygons_are_rebuilt() -> None:
    mask = grid(
        """
        ##..##
        ##..##
        ......
        ######
        """
    )
    blocks = cuts_to_blocks(mask, None, [], [3])
    untouched = [g for b in blocks for g, t in zip(b.geoms, b.touches_edge) if not t]
    merged = merge_seams(blocks)
    assert len(merged) == 3
    for g in untouched:  # the very same objects come out
        assert any(g is m for m in merged.geoms)


def test_missing_or_foreign_blocks_are_rejected() -> None:
    mask = np.ones((6, 6), dtype=bool)
    blocks = cuts_to_blocks(mask, None, [3], [3])
    with pytest.raises(ValueError, match="tile the scene"):
        merge_seams(blocks[:3])
    other = polygonize_block(mask[:3, :3], None, row_off=0, col_off=0, scene_height=7, scene_width=6)
    with pytest.raises(ValueError, match="different sizes"):
        merge_seams([*blocks[1:], other])
    overlapping = [
        *blocks[:3],
        polygonize_block(mask[2:5, 3:6], None, row_off=2, col_off=3, scene_height=6, scene_width=6),
    ]
    with pytest.raises(ValueError, match="tile the scene"):
        merge_seams(overlapping)
    with pytest.raises(ValueError, match="method"):
        merge_seams(blocks, method="dissolve")  # type: ignore[arg-type]
    assert len(merge_seams([])) == 0


def test_seam_pairs_work_on_runs_not_pixels() -> None:
    """One polygon covering a scene of 40 x 40 blocks: every seam pixel is foreground on both
    sides (1.2 M pixels), yet finding the 3120 adjacent block pairs allocates next to
    nothing (per-pixel keys and their sort took ~75 MB here, ~360 MB at 40000^2 px)."""
    import tracemalloc

    from geounet.vectorize.polygonize import polygonize_block
    from geounet.vectorize.seams import _seam_pairs

    size, step = 8000, 200
    mask = np.ones((step, step), dtype=bool)
    blocks = [
        polygonize_block(mask, None, row_off=r, col_off=c, scene_height=size, scene_width=size)
        for r in range(0, size, step)
        for c in range(0, size, step)
    ]
    offsets = np.arange(len(blocks))  # one polygon per block
    tracemalloc.start()
    pairs = _seam_pairs(blocks, offsets)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n = size // step
    expected = {(i, i + 1) for i in range(n * n) if (i + 1) % n} | {(i, i + n) for i in range(n * n - n)}
    assert {tuple(p) for p in pairs.tolist()} == expected
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB"
