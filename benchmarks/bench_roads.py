"""Road networks: APLS of the centerline graphs and how the cleaning settings change it.

  python benchmarks/bench_roads.py --label default-roads
      needs a bench_heldout.py run of the road areas with the same label first:
        python benchmarks/bench_heldout.py --model geounet/weights/default.safetensors \
            --label default-roads --areas dubai-tile8 las-vegas new-brunswick
      plus three held-out synthetic scenes (seeds 3000-3002, 1024^2 px; training used
      1000-1015 and 2000-2001) predicted with geounet/weights/synthetic.safetensors.
      For every scene and every cleaning setting of SETTINGS, the road graph is traced again
      from the scene's probability.tif (the road band >= 128 of 255, i.e. the threshold 0.5
      up to the uint8 rounding of probabilities within 1/510 of it) as one whole mask, which
      the window-by-window pipeline equals exactly; then scored with geounet.evaluate as
      `geounet evaluate` scores the road_centerlines.geojson a run writes. Writes
      benchmarks/results/roads/<label>.json and prints a Markdown table.

APLS is SpaceNet 3's (control points every 50 m, snapped within 4 m ... see
geounet.evaluate.roads.apls); completeness / correctness are the shares of the truth's and
the prediction's centerline length within the snap distance of the other.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_heldout import AREAS, Scene, score_scene  # noqa: E402

GEOUNET = Path(sys.executable).parent / "geounet"
SYNTH_SEEDS = (3000, 3001, 3002)
SYNTH_SIZE = 1024
# name -> CenterlineSettings fields (metres); "default" is what geounet ships
SETTINGS: dict[str, dict[str, float]] = {
    "none": {"fill_holes_m2": 0, "min_spur_m": 0, "min_length_m": 0},
    "default": {},
    "spur 5 m": {"min_spur_m": 5},
    "spur 20 m": {"min_spur_m": 20},
    "min length 50 m": {"min_length_m": 50},
    "holes 0": {"fill_holes_m2": 0},
    "bridge 15 m": {"bridge_m": 15},
}


def synthetic(work: Path) -> tuple[list[Scene], Path]:
    """Three held-out synthetic scenes, predicted with the synthetic model."""
    data, out = work / "synthetic", work / "synthetic-run"
    scenes = []
    for seed in SYNTH_SEEDS:
        folder = data / str(seed)
        tif = folder / "synth_0000.tif"
        if not tif.exists():
            cmd = [str(GEOUNET), "synth", str(folder), "-n", "1", "--size", str(SYNTH_SIZE), "--seed", str(seed)]
            subprocess.run(cmd, check=True, capture_output=True)
        target = data / f"synth-{seed}.tif"
        if not target.exists():
            shutil.copy(tif, target)
        scenes.append(Scene(f"synth-{seed}", target, folder / "synth_0000_truth.gpkg"))
    model = ROOT / "geounet" / "weights" / "synthetic.safetensors"
    cmd = [str(GEOUNET), "predict", *[str(s.image) for s in scenes], "-m", str(model), "-o", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True)
    return scenes, out


def retrace(scene_dir: Path, dest: Path, overrides: dict[str, float]) -> float:
    """Copy ``scene_dir``'s vectors to ``dest`` with road_centerlines.geojson traced again
    with ``overrides``; returns the tracing seconds."""
    import geopandas as gpd
    import rasterio

    from geounet.export.vectors import write_geojson
    from geounet.scene.source import ground_pixel_size_m
    from geounet.settings import CenterlineSettings
    from geounet.vectorize.centerlines import centerline_graph
    from geounet.vectorize.network import GraphParams, graph_tables

    dest.mkdir(parents=True, exist_ok=True)
    for f in scene_dir.glob("*.geojson"):
        if f.name != "road_centerlines.geojson":
            shutil.copy(f, dest / f.name)
    with rasterio.open(scene_dir / "probability.tif") as ds:
        names = [d.split(" ")[0] for d in ds.descriptions]
        band = ds.read(names.index("road") + 1)
        transform, crs = ds.transform, ds.crs.to_wkt()
    pixel_m = ground_pixel_size_m(crs, tuple(transform)[:6], band.shape[1], band.shape[0]) or 1.0
    p = GraphParams.from_settings(CenterlineSettings(**overrides), pixel_m)
    t0 = time.perf_counter()
    graph = centerline_graph(
        band >= 128,
        band,
        max_hole_area_px=p.max_hole_area_px,
        max_hole_extent_px=p.max_hole_extent_px,
        min_spur_px=p.min_spur_px,
        min_component_px=p.min_component_px,
        bridge_px=p.bridge_px,
        simplify_px=p.simplify_px,
    )
    seconds = time.perf_counter() - t0
    t = graph_tables(graph, transform, crs, pixel_m)
    gdf = gpd.GeoDataFrame({"u": t.u, "v": t.v, "length_m": t.length_m}, geometry=list(t.lines), crs=crs)
    write_geojson(gdf, dest / "road_centerlines.geojson")
    return seconds


def main() -> None:
    from geounet.evaluate.score import EvaluationSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="the bench_heldout.py label whose runs are re-traced")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "heldout")
    ap.add_argument("--areas", nargs="+", default=["dubai-tile8", "las-vegas", "new-brunswick", "synthetic"])
    opts = ap.parse_args()
    groups: dict[str, tuple[list[Scene], Path, Any]] = {}
    for name in opts.areas:
        if name == "synthetic":
            scenes, out = synthetic(opts.work / "roads")
            groups[name] = (scenes, out, EvaluationSettings())
        else:
            area = AREAS[name]
            scenes = area.prepare(opts.work / "data" / name)
            groups[name] = (scenes, opts.work / "runs" / opts.label / name, EvaluationSettings(**area.settings))
    results: dict[str, dict[str, Any]] = {}
    scratch = opts.work / "roads" / "retraced"
    for setting, overrides in SETTINGS.items():
        results[setting] = {}
        for name, (scenes, out, settings) in groups.items():
            apls, comp, corr, secs = [], [], [], 0.0
            for s in scenes:
                dest = scratch / setting.replace(" ", "_") / name / s.name
                secs += retrace(out / s.name, dest, overrides)
                result, _ = score_scene(s, dest, settings, offsets=False)
                if result.roads is not None and np.isfinite(result.roads.apls):
                    apls.append(result.roads.apls)
                    comp.append(result.roads.completeness)
                    corr.append(result.roads.correctness)
            results[setting][name] = {
                "scenes": len(apls),
                "apls": float(np.mean(apls)) if apls else None,
                "completeness": float(np.nanmean(comp)) if comp else None,
                "correctness": float(np.nanmean(corr)) if corr else None,
                "trace_seconds": round(secs, 2),
            }
            print(setting, name, results[setting][name], flush=True)
    dest = ROOT / "benchmarks" / "results" / "roads"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{opts.label}.json").write_text(json.dumps({"settings": SETTINGS, "results": results}, indent=1) + "\n")
    head = "| cleaning | " + " | ".join(f"{n} APLS (compl / corr)" for n in groups) + " |"
    print("\n" + head + "\n|---|" + "---|" * len(groups))
    for setting, per in results.items():
        cells = []
        for n in groups:
            r = per[n]
            cells.append(
                "n/a" if r["apls"] is None else f"{r['apls']:.3f} ({r['completeness']:.2f} / {r['correctness']:.2f})"
            )
        print(f"| {setting} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
