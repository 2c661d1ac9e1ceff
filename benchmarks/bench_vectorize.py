"""Block-wise polygonize + seam merge versus polygonizing the whole mask at once.

Builds a synthetic ``size`` x ``size`` mask of ``buildings`` axis-aligned rectangles (5-40 px
sides, some with courtyards) and a few long roads that cross many blocks, then times

* baseline: ``list(rasterio.features.shapes(mask, mask=mask, connectivity=4))`` on the whole
  mask (GeoJSON-like dicts, no per-polygon statistics);
* blocked: :func:`geounet.vectorize.polygonize.polygonize_block` summed over every block (shapes,
  shapely polygons, regions, pixel counts, probability sums, edge strips) plus
  :func:`geounet.vectorize.seams.merge_seams`. Blocks are contiguous copies made beforehand, as
  each worker holds its own core.

``merge_union_s`` times the reference merge (``shapely.union_all`` per group) once.

Prints one JSON object with the times (best of ``--repeat``), ``ratio`` = best blocked /
best baseline, and ``ratio_median``, the median over repeats of blocked / baseline timed back
to back (steadier on a shared machine). Run from the repository root::

    .venv/bin/python benchmarks/bench_vectorize.py --size 4000 --block 1024 --buildings 5000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from rasterio.features import shapes

from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.seams import BlockPolygons, merge_seams


def synthetic_mask(size: int, buildings: int, roads: int, seed: int) -> np.ndarray:
    """Rectangles (every fifth with a courtyard) and straight/diagonal-stepped roads."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=bool)
    for i in range(buildings):
        h, w = rng.integers(5, 41, 2)
        r, c = rng.integers(0, max(1, size - h)), rng.integers(0, max(1, size - w))
        mask[r : r + h, c : c + w] = True
        if i % 5 == 0 and h > 10 and w > 10:
            mask[r + 3 : r + h - 3, c + 3 : c + w - 3] = False
    for i in range(roads):
        width = int(rng.integers(6, 14))
        pos = int(rng.integers(0, size - width))
        if i % 3 == 0:
            mask[pos : pos + width, :] = True
        elif i % 3 == 1:
            mask[:, pos : pos + width] = True
        else:  # a staircase diagonal: many vertices, crosses blocks both ways
            rows = np.arange(size)
            cols = (rows + pos) % size
            for dc in range(width):
                mask[rows, np.minimum(cols + dc, size - 1)] = True
    return mask


def split_blocks(
    mask: np.ndarray, prob: np.ndarray | None, block: int
) -> list[tuple[int, int, np.ndarray, np.ndarray | None]]:
    """Contiguous per-block copies, as each worker holds its own core (not timed)."""
    height, width = mask.shape
    return [
        (
            r,
            c,
            mask[r : r + block, c : c + block].copy(),
            None if prob is None else prob[r : r + block, c : c + block].copy(),
        )
        for r in range(0, height, block)
        for c in range(0, width, block)
    ]


def time_blocked(
    blocks: list[tuple[int, int, np.ndarray, np.ndarray | None]], height: int, width: int
) -> tuple[float, float, list[BlockPolygons]]:
    t0 = time.perf_counter()
    parts = [
        polygonize_block(m, p, row_off=r, col_off=c, scene_height=height, scene_width=width) for r, c, m, p in blocks
    ]
    t1 = time.perf_counter()
    merge_seams(parts)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000, help="mask side in pixels")
    parser.add_argument("--block", type=int, default=1024, help="block core side in pixels")
    parser.add_argument("--buildings", type=int, default=5000, help="number of rectangles")
    parser.add_argument("--roads", type=int, default=6, help="number of long roads")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; best is kept")
    parser.add_argument("--no-prob", action="store_true", help="skip probability sums")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mask = synthetic_mask(args.size, args.buildings, args.roads, args.seed)
    prob = None if args.no_prob else np.random.default_rng(args.seed).random(mask.shape, dtype=np.float32)
    mask_u8 = mask.view(np.uint8)
    blocks = split_blocks(mask, prob, args.block)

    baseline, vectorize, merge = [], [], []
    n_whole = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n_whole = len(list(shapes(mask_u8, mask=mask, connectivity=4)))
        baseline.append(time.perf_counter() - t0)
        tv, tm, parts = time_blocked(blocks, *mask.shape)
        vectorize.append(tv)
        merge.append(tm)
    n_blocked = len(merge_seams(parts))
    t0 = time.perf_counter()
    merge_seams(parts, method="union")  # the reference merge: shapely.union_all per group
    union_merge = time.perf_counter() - t0

    best = min(range(args.repeat), key=lambda i: vectorize[i] + merge[i])
    blocked = vectorize[best] + merge[best]
    print(
        json.dumps(
            {
                "size": args.size,
                "block": args.block,
                "buildings": args.buildings,
                "roads": args.roads,
                "prob": not args.no_prob,
                "foreground_fraction": round(float(mask.mean()), 4),
                "polygons_whole": n_whole,
                "polygons_blocked": n_blocked,
                "whole_shapes_s": round(min(baseline), 4),
                "blocked_vectorize_s": round(vectorize[best], 4),
                "merge_s": round(merge[best], 4),
                "merge_union_s": round(union_merge, 4),
                "blocks": len(blocks),
                "blocked_total_s": round(blocked, 4),
                "ratio": round(blocked / min(baseline), 3),
                # Each repeat times both back to back, so this one is robust to other load.
                "ratio_median": round(
                    float(np.median([(v + m) / w for v, m, w in zip(vectorize, merge, baseline)])), 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
