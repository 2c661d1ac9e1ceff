"""Building outlines as a GIS analyst gets them: regularized, touching buildings apart.

  python benchmarks/bench_buildings.py --label synthetic
      three held-out synthetic scenes (seeds 3000-3002, 1024^2 px, 0.5 m; training used
      1000-1015 and 2000-2001), made with `geounet synth`, predicted by `geounet predict` with
      geounet/weights/synthetic.safetensors twice: as shipped (touching buildings split,
      outlines regularized) and with --no-separate. Rows: the pixel outlines (GeoPackage layer
      buildings_raw) and the written ones (layer buildings) of both runs, then the separated
      run's pixel outlines regularized again for every setting of SETTINGS with the function
      the pipeline calls (geounet.vectorize.regularize.regularize_in_crs); the "default" row
      must equal the buildings layer the run wrote (checked). Scored against each scene's
      truth (synth_0000_truth.gpkg, layer buildings).
  python benchmarks/bench_buildings.py --label real --areas dsg-brazil massachusetts dubai-tile8 \
        fair-nairobi new-brunswick --model geounet/weights/default.safetensors
      held-out real areas as benchmarks/bench_heldout.py prepares them (under --heldout-work,
      default out/heldout), the same two runs and rows (no settings variants). Truth read with
      each area's evaluation settings, kept where it meets the image's footprint; in Dubai the
      predictions lying mostly on unlabeled pixels are dropped (as bench_heldout does).
  python benchmarks/bench_buildings.py --label sweep --sweep-separation --seeds 4000 4001 4002
      the defaults of `separate:` chosen on other synthetic scenes than the ones reported:
      predict with --no-separate, then split the masks of probability.tif (p >= 0.5) for every
      seed threshold x minimum seed area of SWEEP with geounet.vectorize.separate.separate_mask
      and score the pixel outlines (F1, mean IoU, merge rate).
  python benchmarks/bench_buildings.py --label cost --cost IMAGE [--repeat 2]
      end-to-end cost of both steps: `geounet predict IMAGE` with the synthetic model as
      shipped and with --no-separate --no-regularize, interleaved --repeat times; process wall
      seconds and scene.json timings.
  python benchmarks/bench_buildings.py --label cost-4096 --picture
      after a --cost run of that label: a before/after picture of the 120 m window where
      separation split the most buildings (pixel outlines without either step beside the
      shipped outlines, each polygon in its own colour) -> results/buildings/before_after.png.

Columns (counts summed over the scenes): building F1 at IoU >= 0.5 and the mean IoU of the
matches (geounet.evaluate.building_f1); the merge rate (true buildings whose best-overlapping
prediction also covers half of another true building, geounet.evaluate.objects.merge_rate);
vertices per polygon (exterior ring, mean and median); the share of corners (vertices turning
by >= 1 degree) within 10 degrees of a right angle -- pixel outlines are all right angles, so
read it with the vertex count; the mean difference between the dominant directions of matched
predictions and truths (geounet.vectorize.regularize.dominant_direction on both, degrees); how
many outlines were regularized and the seconds regularization took. Writes
benchmarks/results/buildings/<label>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

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
    "library only (no fast paths)": {"rectangle_iou": 1.0, "orthogonal": False},
    "no rectangle fit": {"rectangle_iou": 1.0},
    "no rectilinear path": {"orthogonal": False},
    "rectangle fit from IoU 0.85": {"rectangle_iou": 0.85},
    "rectangle fit from IoU 0.95": {"rectangle_iou": 0.95},
    "no 45°": {"allow_45": False},
    "simplify 1 m": {"simplify_m": 1.0},
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


def predict(images: list[Path], out: Path, model: Path, *extra: str) -> float:
    """``geounet predict`` (options ``extra``); returns its wall seconds."""
    t0 = time.perf_counter()
    cmd = [str(GEOUNET), "predict", *map(str, images), "-m", str(model), "-o", str(out), "--no-progress", "--force"]
    subprocess.run([*cmd, *extra], check=True, capture_output=True)
    return time.perf_counter() - t0


def shape_stats(pred: Any, truth: Any) -> dict[str, Any]:
    """F1, IoU, vertices, right corners and direction error of ``pred`` (GeoSeries) against ``truth``."""
    from geounet.evaluate.objects import building_f1
    from geounet.evaluate.shapes import corner_angles, direction_difference, vertex_counts
    from geounet.vectorize.regularize import dominant_direction

    match = building_f1(pred, truth)  # merge counts included
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
        "merge_rate": m.merge_rate,
        "merged": m.merged,
        "overlapped": m.overlapped,
        "vertices_mean": float(vertices.mean()) if len(vertices) else None,
        "vertices_median": float(np.median(vertices)) if len(vertices) else None,
        "right_corner_share": sum(p["right_corners"] for p in parts) / corners if corners else None,
        "direction_error_deg": float(np.nanmean(errors)) if len(errors) else None,
        "regularized": regularized,
        "seconds": seconds,
    }


class Case(NamedTuple):
    """One scene to score: its image, its truth and where predictions lying mostly are dropped."""

    name: str
    image: Path
    truth: Any  # GeoSeries of the true buildings (any CRS)
    exclude: Any = None  # GeoSeries of unlabeled regions, or None


def synthetic_cases(work: Path, seeds: tuple[int, ...], size: int) -> list[Case]:
    import geopandas as gpd

    return [
        Case(name, image, gpd.read_file(truth, layer="buildings").geometry)
        for name, image, truth in scenes(work, seeds, size)
    ]


def real_cases(areas: list[str], heldout_work: Path) -> tuple[list[Case], list[int] | None]:
    """The held-out areas' scenes as bench_heldout prepares them, and their bands (one set)."""
    import geopandas as gpd
    import rasterio
    import shapely

    from benchmarks.bench_heldout import AREAS
    from geounet.evaluate.score import EvaluationSettings
    from geounet.evaluate.vectors import read_vectors

    out: list[Case] = []
    bands: set[tuple[int, ...] | None] = set()
    for a in areas:
        area = AREAS[a]
        bands.add(area.bands)
        settings = EvaluationSettings(**area.settings)
        for sc in area.prepare(heldout_work / "data" / a):
            tv = read_vectors(
                sc.truth, layer=settings.truth_layer, class_field=settings.class_field, classes=settings.classes
            )
            if tv.buildings is None:
                continue
            with rasterio.open(sc.image) as ds:
                footprint = gpd.GeoSeries([shapely.box(*ds.bounds)], crs=ds.crs).to_crs(tv.buildings.crs).iloc[0]
            truth = tv.buildings[tv.buildings.intersects(footprint)]
            exclude = gpd.read_file(sc.exclude).geometry if sc.exclude is not None else None
            out.append(Case(f"{a}/{sc.name}", sc.image, truth, exclude))
    if len(bands) > 1:
        raise SystemExit(f"areas with different bands {sorted(map(str, bands))}: measure them apart")
    b = bands.pop() if bands else None
    return out, list(b) if b else None


def _kept(geoms: Any, exclude: Any) -> Any:
    """``geoms`` (GeoSeries) without those lying mostly (> 50 %) in ``exclude``."""
    import shapely

    if exclude is None or len(geoms) == 0:
        return geoms
    region = shapely.union_all(exclude.to_crs(geoms.crs).values)
    inside = shapely.area(shapely.intersection(geoms.values, region)) / np.maximum(shapely.area(geoms.values), 1e-12)
    return geoms[inside <= 0.5].reset_index(drop=True)


def table_lines(table: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| outlines | F1@0.5 | mean IoU | merge rate | vertices (mean / median) | corners 90±10° "
        "| direction error ° | regularized | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)

    for label, r in table.items():
        reg = f"{r['regularized']} / {r['polygons']}" if r["regularized"] is not None else "-"
        lines.append(
            f"| {label} | {f(r['f1'], '.3f')} | {f(r['mean_iou'], '.3f')} | {f(r['merge_rate'], '.3f')} "
            f"({r['merged']} / {r['overlapped']}) | {f(r['vertices_mean'], '.1f')} / {f(r['vertices_median'], '.0f')} "
            f"| {f(r['right_corner_share'], '.1%')} | {f(r['direction_error_deg'], '.2f')} | {reg} "
            f"| {f(r['seconds'], '.2f')} |"
        )
    return lines


def cost(image: Path, out: Path, repeat: int) -> dict[str, Any]:
    """Process wall seconds of ``geounet predict`` as shipped and without both steps, interleaved."""
    model = ROOT / "geounet" / "weights" / "synthetic.safetensors"
    variants = {"shipped": (), "without both": ("--no-separate", "--no-regularize")}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for i in range(repeat):
        for name, extra in variants.items():
            dest = out / name.replace(" ", "-")
            wall = predict([image], dest, model, *extra)
            record = json.loads((dest / image.stem / "scene.json").read_text())
            runs[name].append(
                {"process_s": round(wall, 2), "timings_s": record["timings_s"], "polygons": record["polygons"]}
            )
            print(f"[{i}] {name}: {wall:.1f} s, scene {record['timings_s']['wall']} s", flush=True)
    best = {k: min(r["process_s"] for r in v) for k, v in runs.items()}
    return {"runs": runs, "best_process_s": best, "added": best["shipped"] / best["without both"] - 1.0}


SWEEP = {"seed_threshold": (0.6, 0.7, 0.8), "min_seed_m2": (8.0, 16.0, 25.0, 35.0)}


def separation_sweep(cases: list[Case], out: Path, model: Path) -> dict[str, Any]:
    """F1, mean IoU and merge rate of the pixel outlines for every setting of SWEEP."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes

    from geounet.evaluate.objects import MatchResult, building_f1
    from geounet.settings import SeparateSettings
    from geounet.vectorize.polygonize import _features_to_polygons
    from geounet.vectorize.separate import SeparationParams, separate_mask

    predict([c.image for c in cases], out, model, "--no-separate")
    scenes = []
    for c in cases:
        with rasterio.open(out / c.image.stem / "probability.tif") as ds:
            prob = ds.read(1).astype(np.float32) / 255.0  # building: band 1
            scenes.append((prob, ds.transform, ds.crs, abs(ds.transform.a), c.truth.to_crs(ds.crs)))

    def score(masks: list[np.ndarray]) -> dict[str, Any]:
        res = []
        for m, (_, transform, crs, _, truth) in zip(masks, scenes):
            geoms = _features_to_polygons(shapes(m.view(np.uint8), mask=m, connectivity=4, transform=transform))
            res.append(building_f1(gpd.GeoSeries(list(geoms), crs=crs), truth))
        r = MatchResult.combine(res)
        return {"f1": r.f1, "mean_iou": r.mean_iou, "merge_rate": r.merge_rate, "polygons": r.tp + r.fp}

    rows = {"not separated": score([p >= 0.5 for p, *_ in scenes])}
    for level in SWEEP["seed_threshold"]:
        for area in SWEEP["min_seed_m2"]:
            s = SeparateSettings(seed_threshold=level, min_seed_m2=area)
            masks = [
                separate_mask(p >= 0.5, p, SeparationParams.from_settings(s, px, 0.5)) for p, _, _, px, _ in scenes
            ]
            rows[f"seed {level}, {area:g} m²"] = score(masks)
            print(f"seed {level}, {area:g} m2: {rows[f'seed {level}, {area:g} m²']}", flush=True)
    lines = ["| separation | F1@0.5 | mean IoU | merge rate | polygons |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['f1']:.3f} | {r['mean_iou']:.3f} | {r['merge_rate']:.3f} | {r['polygons']} |")
    return {"rows": rows, "table": lines}


def picture(image: Path, runs: Path, dest: Path, window_m: float = 120.0) -> None:
    """Two panels over the window where the shipped run has the most polygons more."""
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from rasterio.windows import from_bounds

    layers = {
        "before: pixel outlines, touching buildings one polygon": runs / "without-both" / image.stem,
        "geounet: touching buildings apart, regular outlines": runs / "shipped" / image.stem,
    }
    frames = {k: gpd.read_file(v / "polygons.gpkg", layer="buildings") for k, v in layers.items()}
    before, after = frames.values()
    with rasterio.open(image) as ds:
        x0, y0, x1, y1 = ds.bounds
        best, where = -1, (x0, y0)
        for x in np.arange(x0, x1 - window_m, window_m / 4):
            for y in np.arange(y0, y1 - window_m, window_m / 4):
                n = len(after.cx[x : x + window_m, y : y + window_m]) - len(
                    before.cx[x : x + window_m, y : y + window_m]
                )
                if n > best:
                    best, where = n, (x, y)
        bx, by = where
        win = from_bounds(bx, by, bx + window_m, by + window_m, ds.transform)
        rgb = np.moveaxis(ds.read([1, 2, 3], window=win), 0, -1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    colours = plt.get_cmap("tab10").colors
    for ax, (title, frame) in zip(axes, frames.items()):
        ax.imshow(rgb, extent=(bx, bx + window_m, by, by + window_m))
        sub = frame.cx[bx : bx + window_m, by : by + window_m]
        for i, geom in enumerate(sub.geometry):
            xs, ys = geom.exterior.xy
            ax.plot(xs, ys, color=colours[i % len(colours)], linewidth=1.6)
        ax.set_xlim(bx, bx + window_m)
        ax.set_ylim(by, by + window_m)
        ax.set_title(f"{title} ({len(sub)})", fontsize=10)
        ax.set_axis_off()
    fig.suptitle(f"{image.name}, synthetic model, {window_m:g} m window", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=80)
    print(f"wrote {dest}")


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
    ap.add_argument("--areas", nargs="+", help="held-out real areas (bench_heldout names) instead of synthetic scenes")
    ap.add_argument("--heldout-work", type=Path, default=ROOT / "out" / "heldout")
    ap.add_argument("--model", type=Path, default=ROOT / "geounet" / "weights" / "synthetic.safetensors")
    ap.add_argument("--cost", type=Path, metavar="IMAGE", help="measure the end-to-end cost on IMAGE instead")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sweep-separation", action="store_true", help="sweep the separation settings instead")
    ap.add_argument("--picture", action="store_true", help="draw the before/after picture of a --cost run")
    opts = ap.parse_args()
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine(),
    }
    dest = RESULTS / "buildings" / f"{opts.label}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if opts.picture:
        previous = json.loads(dest.read_text())
        picture(Path(previous["image"]), opts.work / "runs" / opts.label, dest.parent / "before_after.png")
        return
    if opts.cost is not None:
        record.update(image=str(opts.cost), **cost(opts.cost, opts.work / "runs" / opts.label, opts.repeat))
        print(f"shipped vs without both steps: {record['added']:+.1%} ({record['best_process_s']})")
        dest.write_text(json.dumps(record, indent=2, default=float) + "\n")
        print(f"wrote {dest}")
        return

    if opts.sweep_separation:
        cases = synthetic_cases(opts.work, tuple(opts.seeds), opts.size)
        record.update(
            scenes=[c.name for c in cases], **separation_sweep(cases, opts.work / "runs" / opts.label, opts.model)
        )
        print("\n".join(record["table"]))
        dest.write_text(json.dumps(record, indent=2, default=float) + "\n")
        print(f"wrote {dest}")
        return

    bands: list[int] | None = None
    if opts.areas:
        cases, bands = real_cases(opts.areas, opts.heldout_work)
    else:
        cases = synthetic_cases(opts.work, tuple(opts.seeds), opts.size)
    band_opts = ("--bands", ",".join(map(str, bands))) if bands else ()
    out = opts.work / "runs" / opts.label
    images = [c.image for c in cases]
    predict_s = {
        "separated": predict(images, out / "separated", opts.model, *band_opts),
        "not separated": predict(images, out / "not-separated", opts.model, "--no-separate", *band_opts),
    }
    variants = {} if opts.areas else SETTINGS
    rows: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    done: dict[str, int] = {}
    for case in cases:
        outlines: dict[str, Any] = {}
        crs = None
        for run in ("not separated", "separated"):
            folder = out / run.replace(" ", "-") / case.image.stem
            raw = gpd.read_file(folder / "polygons.gpkg", layer="buildings_raw")
            written = gpd.read_file(folder / "polygons.gpkg", layer="buildings")
            crs = raw.crs
            scene = json.loads((folder / "scene.json").read_text())
            outlines[f"pixel, {run}"] = np.asarray(raw.geometry.values, dtype=object)
            outlines[f"regularized, {run}"] = np.asarray(written.geometry.values, dtype=object)
            reg = scene["regularized"].get("building", {})
            done[f"regularized, {run}"] = done.get(f"regularized, {run}", 0) + int(reg.get("regularized", 0))
            seconds[f"regularized, {run}"] = seconds.get(f"regularized, {run}", 0.0) + scene["timings_s"].get(
                "regularize", 0.0
            )
        if variants:
            g = scene["model_grid"]
            grid = ModelGrid(g["width"], g["height"], g["scale"])
            with rasterio.open(case.image) as ds:
                affine = grid.transform(ds.transform)  # the model grid's, as finalize_scene's
            pixel_m = ground_pixel_size_m(crs.to_wkt(), tuple(affine)[:6], grid.width, grid.height) or 1.0
            centre = affine @ (grid.width / 2, grid.height / 2)
            raw_geoms = outlines["pixel, separated"]
            for label, fields in variants.items():
                t0 = time.perf_counter()
                r = regularize_in_crs(
                    raw_geoms, crs, center_xy=centre, settings=RegularizeSettings(**fields), pixel_m=pixel_m
                )
                seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - t0
                done[label] = done.get(label, 0) + int(r.regularized.sum())
                outlines[label] = r.geoms
            written = outlines["regularized, separated"]
            same = len(written) == len(outlines["default"]) and all(
                shapely.equals_exact(a, b, 1e-6) for a, b in zip(outlines["default"], written)
            )
            if not same:
                raise SystemExit(f"{case.name}: the default row differs from the buildings layer the run wrote")
        truth = case.truth.to_crs(crs)
        for label, geoms in outlines.items():
            pred = _kept(gpd.GeoSeries(list(geoms), crs=crs), case.exclude)
            rows.setdefault(label, []).append(shape_stats(pred, truth))
        print(f"[{case.name}] {len(outlines['pixel, separated'])} outlines", flush=True)

    table = {label: combine(parts, seconds.get(label), done.get(label)) for label, parts in rows.items()}
    lines = table_lines(table)
    print("\n".join(lines))
    record.update(
        scenes=[c.name for c in cases],
        model=str(opts.model),
        size=None if opts.areas else opts.size,
        predict_seconds={k: round(v, 1) for k, v in predict_s.items()},
        settings=variants,
        rows=table,
        table=lines,
    )
    dest.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
