"""Regular building outlines: pixel outlines against regularized ones on held-out synthetic scenes.

  python benchmarks/bench_buildings.py --label synthetic
      three held-out synthetic scenes (seeds 3000-3002, 1024^2 px, 0.5 m; training used
      1000-1015 and 2000-2001), made with `geounet synth` and predicted once with
      geounet/weights/synthetic.safetensors by `geounet predict` (regularization on, as
      shipped). The pixel outlines (GeoPackage layer buildings_raw) are then regularized
      again for every setting of SETTINGS with the function the pipeline calls
      (geounet.vectorize.regularize.regularize_in_crs), and each set of outlines is scored
      against the scene's truth (synth_0000_truth.gpkg, layer buildings). The "default" row
      must equal the buildings layer the run wrote (checked). Writes
      benchmarks/results/buildings/<label>.json and prints a Markdown table.
  python benchmarks/bench_buildings.py --label L --seeds 3000 --size 512
      fewer or smaller scenes.

Rows: "pixel" -- the pixel outlines as postprocess writes them (simplify_m 0); "simplified"
-- the same, Douglas-Peucker at one pixel (what `simplify_m: 0.5` gives); then one row per
regularization setting. Columns (counts summed over the scenes): building F1 at IoU >= 0.5 and
the mean IoU of the matches (geounet.evaluate.building_f1); vertices per polygon (exterior
ring, mean and median); the share of corners (vertices turning by >= 1 degree) within 10
degrees of a right angle -- pixel outlines are all right angles, so read it with the vertex
count; the mean difference between the dominant directions of matched predictions and truths
(geounet.vectorize.regularize.dominant_direction on both, degrees); how many outlines were
regularized (the rest kept their pixel outline) and the seconds regularization took (one
thread; the scenes' outlines are below the process-pool threshold).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, machine  # noqa: E402

GEOUNET = Path(sys.executable).parent / "geounet"
SEEDS = (3000, 3001, 3002)
# name -> RegularizeSettings fields; "default" is what geounet ships
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "step 0.5 m": {"min_step_m": 0.5},
    "step 1.5 m": {"min_step_m": 1.5},
    "step 2 m": {"min_step_m": 2.0},
    "no 45°": {"allow_45": False},
    "simplify 0.5 m": {"simplify_m": 0.5},
    "simplify 1.5 m": {"simplify_m": 1.5},
    "area tolerance 0.1": {"area_tolerance": 0.1},
    "min IoU 0.85": {"min_iou": 0.85},
    "min IoU 0.9": {"min_iou": 0.9},
    "no gate": {"min_iou": 1e-9, "area_tolerance": 1.0},
}


def scenes(work: Path, seeds: tuple[int, ...], size: int) -> list[tuple[str, Path, Path]]:
    """``(name, image, truth)`` per seed, each made once with ``geounet synth``."""
    out = []
    for seed in seeds:
        folder = work / "data" / f"synth-{seed}-{size}"
        if not (folder / "synth_0000.tif").exists():
            cmd = [str(GEOUNET), "synth", str(folder), "-n", "1", "--size", str(size), "--seed", str(seed)]
            subprocess.run(cmd, check=True, capture_output=True)
        image = folder / f"synth-{seed}.tif"
        if not image.exists():
            image.symlink_to(folder / "synth_0000.tif")
        out.append((f"synth-{seed}", image, folder / "synth_0000_truth.gpkg"))
    return out


def predict(images: list[Path], out: Path) -> float:
    """``geounet predict`` with the synthetic model; returns its wall seconds."""
    model = ROOT / "geounet" / "weights" / "synthetic.safetensors"
    t0 = time.perf_counter()
    cmd = [str(GEOUNET), "predict", *map(str, images), "-m", str(model), "-o", str(out), "--no-progress", "--force"]
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def shape_stats(pred: Any, truth: Any) -> dict[str, Any]:
    """F1, IoU, vertices, right corners and direction error of ``pred`` (GeoSeries) against ``truth``."""
    from geounet.evaluate.objects import building_f1
    from geounet.evaluate.shapes import corner_angles, direction_difference, vertex_counts
    from geounet.vectorize.regularize import dominant_direction

    match = building_f1(pred, truth)
    angles, _ = corner_angles(pred)
    matched = np.array([(p, t) for p, t, _ in match.matches], dtype=np.int64).reshape(-1, 2)
    d_pred = dominant_direction(np.asarray(pred.values, dtype=object)[matched[:, 0]])
    d_true = dominant_direction(np.asarray(truth.values, dtype=object)[matched[:, 1]])
    return {
        "match": match,
        "vertices": vertex_counts(pred),
        "corners": len(angles),
        "right_corners": int((np.abs(angles - 90.0) <= 10.0).sum()),
        "direction_error": direction_difference(d_pred, d_true),
    }


def combine(parts: list[dict[str, Any]], seconds: float | None, regularized: int | None) -> dict[str, Any]:
    from geounet.evaluate.objects import MatchResult

    m = MatchResult.combine([p["match"] for p in parts])
    vertices = np.concatenate([p["vertices"] for p in parts])
    errors = np.concatenate([p["direction_error"] for p in parts])
    corners = sum(p["corners"] for p in parts)
    return {
        "polygons": int(len(vertices)),
        "f1": m.f1,
        "precision": m.precision,
        "recall": m.recall,
        "mean_iou": m.mean_iou,
        "vertices_mean": float(vertices.mean()) if len(vertices) else None,
        "vertices_median": float(np.median(vertices)) if len(vertices) else None,
        "right_corner_share": sum(p["right_corners"] for p in parts) / corners if corners else None,
        "direction_error_deg": float(np.nanmean(errors)) if len(errors) else None,
        "regularized": regularized,
        "seconds": seconds,
    }


def main() -> None:
    import geopandas as gpd
    import rasterio
    import shapely

    from geounet.scene.plan import ModelGrid
    from geounet.scene.source import ground_pixel_size_m
    from geounet.settings import RegularizeSettings
    from geounet.vectorize.regularize import regularize_in_crs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "buildings")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--size", type=int, default=1024)
    opts = ap.parse_args()
    found = scenes(opts.work, tuple(opts.seeds), opts.size)
    out = opts.work / "runs" / opts.label
    predict_s = predict([image for _, image, _ in found], out)

    rows: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    done: dict[str, int] = {}
    for name, image, truth_path in found:
        folder = out / image.stem
        raw = gpd.read_file(folder / "polygons.gpkg", layer="buildings_raw")
        written = gpd.read_file(folder / "polygons.gpkg", layer="buildings")
        crs = raw.crs
        truth = gpd.read_file(truth_path, layer="buildings").to_crs(crs).geometry
        g = json.loads((folder / "scene.json").read_text())["model_grid"]
        grid = ModelGrid(g["width"], g["height"], g["scale"])
        with rasterio.open(image) as ds:
            affine = grid.transform(ds.transform)  # the model grid's, as finalize_scene's
        pixel_m = ground_pixel_size_m(crs.to_wkt(), tuple(affine)[:6], grid.width, grid.height) or 1.0
        centre = affine @ (grid.width / 2, grid.height / 2)
        raw_geoms = np.asarray(raw.geometry.values, dtype=object)
        outlines = {
            "pixel": raw_geoms,
            "simplified": shapely.simplify(raw_geoms, pixel_m, preserve_topology=True),
        }
        for label, fields in SETTINGS.items():
            t0 = time.perf_counter()
            r = regularize_in_crs(
                raw_geoms, crs, center_xy=centre, settings=RegularizeSettings(**fields), pixel_m=pixel_m
            )
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t0
            done[label] = done.get(label, 0) + int(r.regularized.sum())
            outlines[label] = r.geoms
        same = all(shapely.equals_exact(a, b, 1e-6) for a, b in zip(outlines["default"], written.geometry.values))
        if not same or len(written) != len(raw):
            raise SystemExit(f"{name}: the default row differs from the buildings layer the run wrote")
        for label, geoms in outlines.items():
            pred = gpd.GeoSeries(list(geoms), crs=crs)
            rows.setdefault(label, []).append(shape_stats(pred, truth))
        print(f"[{name}] {len(raw)} outlines, pixel {pixel_m:.3f} m", flush=True)

    table = {label: combine(parts, seconds.get(label), done.get(label)) for label, parts in rows.items()}
    lines = [
        "| outlines | F1@0.5 | mean IoU | vertices (mean / median) | corners 90±10° | direction error ° "
        "| regularized | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in table.items():
        reg = f"{r['regularized']} / {r['polygons']}" if r["regularized"] is not None else "-"
        sec = f"{r['seconds']:.2f}" if r["seconds"] is not None else "-"
        lines.append(
            f"| {label} | {r['f1']:.3f} | {r['mean_iou']:.3f} | {r['vertices_mean']:.1f} / {r['vertices_median']:.0f} "
            f"| {r['right_corner_share']:.1%} | {r['direction_error_deg']:.2f} | {reg} | {sec} |"
        )
    print("\n".join(lines))
    record = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine(),
        "scenes": [name for name, _, _ in found],
        "size": opts.size,
        "predict_seconds": round(predict_s, 1),
        "settings": SETTINGS,
        "rows": table,
        "table": lines,
    }
    dest = RESULTS / "buildings" / f"{opts.label}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
