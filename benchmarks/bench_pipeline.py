"""Pipeline benchmarks on this machine (issues 3 and 6).

  python benchmarks/bench_pipeline.py ratio  --size 4096 --width 16
      end-to-end `run_scenes` time / model-forward-only time over the same tiles, same
      precision and threads (target <= 1.10-1.15 on CPU)
      (--widen 2: the same model widened to twice the channels (function-preserving), 4x the work, same outputs;
       --scenes 4: a batch of 4 copies of the scene, against the model over 4x the tiles)
  python benchmarks/bench_pipeline.py memory --sizes 4000 12000 --width 16
      peak RSS of all processes of `geounet predict` (client + workers) per scene size
      (target: 12000^2 / 4000^2 <= 1.3)
  python benchmarks/bench_pipeline.py halo --size 1024 --width 16
      seam error (max |tiled - whole|) and compute overhead against the halo
  python benchmarks/bench_pipeline.py precision --size 2048 --width 16
      bf16 vs fp32: max probability difference and polygon agreement (F1@0.5)
  python benchmarks/bench_pipeline.py pages --width 16 --tile 1008 --tiles 26 --repeat 4
      forward passes alone (2 threads x 1 torch thread, as the workers run) with torch's
      transparent huge pages (THP_MEM_ALLOC_ENABLE) off and on: wall, user and kernel CPU
      seconds, page faults; each run in a fresh process (not adopted: no gain, RESULTS.md)
  python benchmarks/bench_pipeline.py housekeeping --seconds 20 --repeat 2
      CPU seconds that an embedded cluster (as `geounet predict` starts it) spends on Dask's
      own periodic work while its tasks sleep: client + scheduler and workers, with Dask's
      default intervals and with geounet's (engine.QUIET_DASK)
  python benchmarks/bench_pipeline.py sweep --width 16 --tiles 256 512 1024 1536
      model throughput per tile size, and scene throughput (scene px/s = model px/s /
      halo overhead) for every halo up to the seam-free one; writes results/sweep.png

Results are printed and saved as benchmarks/results/<suite>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import checkpoint, machine, run_cli, save, scene, widened


def model_option(args: argparse.Namespace) -> str:
    """The command-line option naming the model a run used: ``--model PATH``, else ``--width N``
    (a cached random-weight UNet of that width)."""
    return f"--model {args.model}" if getattr(args, "model", None) else f"--width {args.width}"


def _model_only(
    ckpt: Path, plan: Any, *, threads: int, precision: str, batch_size: int, scenes: int = 1
) -> dict[str, float]:
    """Seconds to run the model over every tile of ``plan``, ``scenes`` times (random inputs),
    in each layout of ``threads``: ``"1xT"`` (one thread, torch uses all T) and ``"Tx1"``
    (T Python threads x 1 torch thread, as the Dask workers run). The ratio takes the best."""
    import torch

    from geounet.checkpoint import load_checkpoint
    from geounet.compute import resolve_precision
    from geounet.heap import tune_malloc
    from geounet.infer.block import run_model
    from geounet.infer.model_cache import keep_activations, prepare_for_inference

    tune_malloc()  # the workers' heap settings (engine.WorkerSetup)
    model = prepare_for_inference(load_checkpoint(ckpt))  # exactly as the workers prepare it
    device = torch.device("cpu")
    dtype = resolve_precision(precision, device)
    th, tw = plan.tile_shape
    keep_activations(model, (th, tw), dtype)  # as process_block
    n = plan.n_tiles * scenes
    x = torch.rand(batch_size, model.spec.in_channels, th, tw)
    run_model(model, x[:1], device=device, dtype=dtype)  # warm-up

    def work(count: int) -> None:
        done = 0
        while done < count:
            b = min(batch_size, count - done)
            run_model(model, x[:b], device=device, dtype=dtype)
            done += b

    times: dict[str, float] = {}
    # layout A: one thread, torch uses all threads
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    work(n)
    times[f"1x{threads}"] = time.perf_counter() - t0
    # layout B: `threads` Python threads, torch single-threaded (what the workers do)
    torch.set_num_threads(1)
    share = [n // threads + (i < n % threads) for i in range(threads)]
    ts = [threading.Thread(target=work, args=(k,)) for k in share]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    times[f"{threads}x1"] = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return times


def ratio(args: argparse.Namespace) -> None:
    from geounet.batch.engine import dask_client, plan_cluster
    from geounet.batch.run import make_plan, run_scenes
    from geounet.checkpoint import read_metadata
    from geounet.scene.source import open_scene
    from geounet.settings import InferenceSettings

    path = scene(args.size)
    ckpt = Path(args.model) if args.model else checkpoint(args.width)
    if args.widen > 1:
        ckpt = widened(ckpt, args.widen)
    extra: dict[str, Any] = {"tiles_per_block": args.tiles_per_block} if args.tiles_per_block else {}
    if args.formats:
        extra["formats"] = tuple(args.formats)
    settings = InferenceSettings(
        precision=args.precision, tile_size=args.tile, batch_size=args.batch, min_area_m2=4.0, **extra
    )
    mi = read_metadata(ckpt)
    plan = make_plan(open_scene(path, in_channels=3), mi, settings)
    shape = plan_cluster("cpu")
    threads = shape.workers * shape.threads_per_worker
    # One untimed run (workers load the model, caches fill), then pairs: an end-to-end run
    # followed at once by the model alone over the same tiles, so that both halves of each
    # pair see the same state of this shared machine (runs minutes apart differed by 10 %).
    runs: list[float] = []
    layouts: list[dict[str, float]] = []
    # the cluster `geounet predict` starts (engine.dask_client): same workers, threads,
    # malloc environment and Dask settings
    with dask_client(device="cpu", dashboard=False) as client, tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat + 1):
            w0, c0 = sum(client.run(_cpu_seconds).values()), _cpu_seconds()
            t0 = time.perf_counter()
            res = run_scenes(
                [str(path)] * args.scenes, ckpt, Path(tmp) / f"o{i}", settings, client=client, progress=False
            )
            dt = time.perf_counter() - t0
            cpu = {
                "workers": round(sum(client.run(_cpu_seconds).values()) - w0, 2),
                "client_and_scheduler": round(_cpu_seconds() - c0, 2),
            }
            assert all(r.status == "success" for r in res), [r.error for r in res]
            timings = res[0].timings
            if i == 0:
                warmup = dt
                continue
            runs.append(dt)
            layouts.append(
                _model_only(
                    ckpt, plan, threads=threads, precision=args.precision, batch_size=args.batch, scenes=args.scenes
                )
            )
    pairs = [r / min(t.values()) for r, t in zip(runs, layouts)]
    model_s = min(min(t.values()) for t in layouts)
    e2e = min(runs)
    save(
        "ratio",
        {
            "command": f"python benchmarks/bench_pipeline.py ratio --size {args.size} {model_option(args)} "
            f"--precision {args.precision} --tile {args.tile} --batch {args.batch} --repeat {args.repeat}"
            + (f" --tiles-per-block {args.tiles_per_block}" if args.tiles_per_block else "")
            + (f" --widen {args.widen}" if args.widen > 1 else "")
            + (f" --formats {' '.join(args.formats)}" if args.formats else "")
            + (f" --scenes {args.scenes}" if args.scenes > 1 else ""),
            "model": str(ckpt),
            "scenes": args.scenes,
            "polygons": res[0].polygons,
            "machine": machine(),
            "scene_px": args.size**2,
            "tiles": plan.n_tiles,
            "tile_shape": plan.tile_shape,
            "halo": plan.halo,
            "blocks": len(plan.blocks),
            "overhead": round(plan.overhead, 3),
            "end_to_end_s": round(e2e, 3),
            "end_to_end_warmup_s": round(warmup, 3),
            "end_to_end_runs_s": [round(r, 3) for r in runs],
            "model_only_s": round(model_s, 3),
            "model_only_layouts_s": [{k: round(v, 3) for k, v in t.items()} for t in layouts],
            "ratio": round(e2e / model_s, 3),
            "pair_ratios": [round(r, 3) for r in pairs],
            "pair_ratio_median": round(float(np.median(pairs)), 3),
            "scene_mpx_per_s": round(args.scenes * args.size**2 / e2e / 1e6, 3),
            "model_mpx_per_s": round(
                args.scenes * plan.n_tiles * plan.tile_shape[0] * plan.tile_shape[1] / model_s / 1e6, 3
            ),
            "stage_timings_s": timings,
            "cpu_seconds_last_run": cpu,
        },
    )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    t = os.times()
    return t.user + t.system


def memory(args: argparse.Namespace) -> None:
    ckpt = Path(args.model) if args.model else checkpoint(args.width)
    rows = []
    for size in args.sizes:
        path = scene(size)
        with tempfile.TemporaryDirectory() as tmp:
            wall, peak, _ = run_cli(
                ["-q", "predict", str(path), "-m", str(ckpt), "-o", tmp, "--no-progress", "--min-area-m2", "4"]
            )
        rows.append(
            {"size": size, "pixels": size * size, "wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1)}
        )
    save(
        "memory",
        {
            "command": "python benchmarks/bench_pipeline.py memory "
            f"--sizes {' '.join(map(str, args.sizes))} {model_option(args)}",
            "machine": machine(),
            "runs": rows,
            "ratio_largest_to_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3),
        },
    )


def halo(args: argparse.Namespace) -> None:
    import torch
    from rasterio.windows import Window

    from geounet.checkpoint import load_checkpoint, read_metadata
    from geounet.compute import resolve_precision
    from geounet.infer.block import infer_block, run_model
    from geounet.infer.model_cache import prepare_for_inference
    from geounet.scene.plan import plan_tiles
    from geounet.scene.read import prepare_input, read_window
    from geounet.scene.source import open_scene

    path = scene(args.size)
    ckpt = checkpoint(args.width)
    model = prepare_for_inference(load_checkpoint(ckpt))
    mi = read_metadata(ckpt)
    info = open_scene(path, in_channels=3)
    dev = torch.device("cpu")
    dtype = resolve_precision("fp32", dev)
    raw, valid = read_window(info, Window(0, 0, info.width, info.height))
    whole = run_model(model, prepare_input(raw, valid, mi.normalization), device=dev, dtype=dtype).numpy()[0]
    rows = []
    m = model.spec.multiple
    for h in range(0, ((model.receptive_field_radius + m - 1) // m) * m + 1, m):
        plan = plan_tiles(info.width, info.height, tile_size=args.tile, halo=h, multiple=m)
        tiled = np.empty_like(whole)
        t0 = time.perf_counter()
        for b in plan.blocks:
            r, v = read_window(info, b.read)
            p = infer_block(model, prepare_input(r, v, mi.normalization), b, batch_size=4, device=dev, dtype=dtype)
            c = b.core
            tiled[:, int(c.row_off) : int(c.row_off + c.height), int(c.col_off) : int(c.col_off + c.width)] = p
        dt = time.perf_counter() - t0
        err = float(np.abs(tiled - whole).max())
        rows.append(
            {
                "halo": h,
                "max_abs_error": err,
                "mean_abs_error": float(np.abs(tiled - whole).mean()),
                "overhead": round(plan.overhead, 3),
                "seconds": round(dt, 2),
            }
        )
        print(rows[-1])
    save(
        "halo",
        {
            "command": "python benchmarks/bench_pipeline.py halo "
            f"--size {args.size} --width {args.width} --tile {args.tile}",
            "machine": machine(),
            "receptive_field_radius": model.receptive_field_radius,
            "tile": args.tile,
            "precision": "fp32",
            "rows": rows,
        },
    )


def precision(args: argparse.Namespace) -> None:
    import geopandas as gpd

    from geounet.evaluate import building_f1

    path = scene(args.size)
    ckpt = checkpoint(args.width) if not args.model else Path(args.model)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in ("fp32", "bf16"):
            wall, _, _ = run_cli(
                ["-q", "predict", str(path), "-m", str(ckpt), "-o", f"{tmp}/{p}", "--precision", p, "--no-progress"]
            )
            out[p] = wall
        import rasterio

        with (
            rasterio.open(f"{tmp}/fp32/{path.stem}/probability.tif") as a,
            rasterio.open(f"{tmp}/bf16/{path.stem}/probability.tif") as b,
        ):
            diff = max(int(np.abs(a.read(k).astype(int) - b.read(k).astype(int)).max()) for k in (1, 2))
        f1 = {}
        for cls in ("buildings", "roads"):
            g32 = gpd.read_file(f"{tmp}/fp32/{path.stem}/{cls}.geojson").to_crs(3857)
            g16 = gpd.read_file(f"{tmp}/bf16/{path.stem}/{cls}.geojson").to_crs(3857)
            f1[cls] = round(building_f1(g16.geometry, g32.geometry).f1, 4)
    save(
        "precision",
        {
            "command": f"python benchmarks/bench_pipeline.py precision --size {args.size} {model_option(args)}",
            "machine": machine(),
            "wall_s": {k: round(v, 2) for k, v in out.items()},
            "max_probability_difference": round(diff / 255.0, 4),
            "polygon_f1_bf16_vs_fp32": f1,
        },
    )


def sweep(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from geounet.checkpoint import load_checkpoint
    from geounet.compute import resolve_precision
    from geounet.infer.block import run_model
    from geounet.infer.model_cache import prepare_for_inference
    from geounet.scene.plan import plan_tiles

    ckpt = checkpoint(args.width)
    model = prepare_for_inference(load_checkpoint(ckpt))
    dev = torch.device("cpu")
    dtype = resolve_precision(args.precision, dev)
    m = model.spec.multiple
    seam_free = ((model.receptive_field_radius + m - 1) // m) * m
    halos = sorted({0, 32, 64, 96, seam_free})
    rows = []
    for tile in args.tiles:
        x = torch.rand(1, 3, tile, tile)
        run_model(model, x, device=dev, dtype=dtype)
        reps = max(2, int(4 * 1024**2 / tile**2))
        t0 = time.perf_counter()
        for _ in range(reps):
            run_model(model, x, device=dev, dtype=dtype)
        model_mpx = reps * tile * tile / (time.perf_counter() - t0) / 1e6
        for h in halos:
            if tile - 2 * h < 2 * m:
                continue
            plan = plan_tiles(args.scene, args.scene, tile_size=tile, halo=h, multiple=m)
            rows.append(
                {
                    "tile": tile,
                    "halo": h,
                    "seam_free": h >= seam_free,
                    "model_mpx_per_s": round(model_mpx, 3),
                    "overhead": round(plan.overhead, 3),
                    "scene_mpx_per_s": round(model_mpx / plan.overhead, 3),
                }
            )
            print(rows[-1])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for h in halos:
        pts = [(r["tile"], r["scene_mpx_per_s"]) for r in rows if r["halo"] == h]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"halo {h} px" + (" (seam-free)" if h >= seam_free else ""))
    pts = sorted({(r["tile"], r["model_mpx_per_s"]) for r in rows})
    ax.plot(*zip(*pts), "k--", label="model only (no halo cost)")
    ax.set_xlabel("tile size (px)")
    ax.set_ylabel("throughput (Mpx/s of scene)")
    ax.set_title(f"UNet width {args.width}, {args.precision}, {machine()['cores']} CPU cores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    RESULTS_DIR = Path(__file__).resolve().parent / "results"
    RESULTS_DIR.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "sweep.png", dpi=110)
    save(
        "sweep",
        {
            "command": f"python benchmarks/bench_pipeline.py sweep --width {args.width} --tiles "
            + " ".join(map(str, args.tiles))
            + f" --precision {args.precision}",
            "machine": machine(),
            "receptive_field_radius": model.receptive_field_radius,
            "scene_px_for_overhead": args.scene,
            "rows": rows,
            "plot": "benchmarks/results/sweep.png",
        },
    )


_FORWARD = """
import json, resource, sys, threading, time
import torch
from geounet.checkpoint import load_checkpoint
from geounet.heap import tune_malloc
from geounet.infer.model_cache import prepare_for_inference
from geounet.compute import resolve_precision
from geounet.infer.block import run_model
tune_malloc()
ckpt, tile, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = prepare_for_inference(load_checkpoint(ckpt))
dev = torch.device("cpu")
dtype = resolve_precision("auto", dev)
torch.set_num_threads(1)
x = torch.rand(1, model.spec.in_channels, tile, tile)
run_model(model, x, device=dev, dtype=dtype)
def work(k):
    for _ in range(k):
        run_model(model, x, device=dev, dtype=dtype)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
ts = [threading.Thread(target=work, args=(n // 2 + (i < n % 2),)) for i in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": round(time.perf_counter() - t0, 3), "user_s": round(r1.ru_utime - r0.ru_utime, 2),
                  "sys_s": round(r1.ru_stime - r0.ru_stime, 2), "page_faults": r1.ru_minflt - r0.ru_minflt}))
"""


def pages(args: argparse.Namespace) -> None:
    import json
    import subprocess

    ckpt = Path(args.model) if args.model else checkpoint(args.width)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(args.repeat):
        for name, value in (("off", "0"), ("on", "1")):  # alternated: load drifts alike
            env = {**os.environ, "THP_MEM_ALLOC_ENABLE": value}  # read by torch's CPU allocator
            out = subprocess.run(
                [sys.executable, "-c", _FORWARD, str(ckpt), str(args.tile), str(args.tiles)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1])
    summary = {k: {m: round(float(np.median([r[m] for r in v])), 3) for m in v[0]} for k, v in runs.items()}
    save(
        "pages",
        {
            "command": f"python benchmarks/bench_pipeline.py pages {model_option(args)} --tile {args.tile} "
            f"--tiles {args.tiles} --repeat {args.repeat}",
            "machine": machine(),
            "model": str(ckpt),
            "runs": runs,
            "median": summary,
        },
    )


def _nap(seconds: float) -> int:
    time.sleep(seconds)
    return 1


def housekeeping(args: argparse.Namespace) -> None:
    import geounet.batch.engine as engine
    from geounet.batch.run import threads as _threads

    quiet = dict(engine.QUIET_DASK)
    rows = []
    try:
        for _ in range(args.repeat):
            for name, table in (("dask_defaults", {}), ("geounet", quiet)):
                engine.QUIET_DASK = table  # {}: nothing changed, Dask's own defaults
                with engine.dask_client(device="cpu", dashboard=False) as client:
                    client.submit(_nap, 0.0, pure=False).result()  # the workers are up and warm
                    time.sleep(2)
                    w0, c0 = sum(client.run(_cpu_seconds).values()), _cpu_seconds()
                    futures = [client.submit(_nap, args.seconds, pure=False) for _ in range(_threads(client))]
                    client.gather(futures)
                    rows.append(
                        {
                            "settings": name,
                            "seconds": args.seconds,
                            "client_and_scheduler_cpu_s": round(_cpu_seconds() - c0, 3),
                            "workers_cpu_s": round(sum(client.run(_cpu_seconds).values()) - w0, 3),
                        }
                    )
                print(rows[-1])
    finally:
        engine.QUIET_DASK = quiet
    save(
        "housekeeping",
        {
            "command": "python benchmarks/bench_pipeline.py housekeeping "
            f"--seconds {args.seconds} --repeat {args.repeat}",
            "machine": machine(),
            "quiet_dask": quiet,
            "rows": rows,
        },
    )


# Suites that time forward passes in this process: they run with the embedded workers' malloc
# environment (engine.WORKER_MALLOC_ENV), which glibc reads only when a process starts.
IN_PROCESS_MODEL_SUITES = ("ratio", "halo", "sweep", "pages")


def _with_worker_malloc_env() -> None:
    """Re-run this command with the workers' malloc environment unless it already has it."""
    from geounet.batch.engine import WORKER_MALLOC_ENV

    env = {k: str(v) for k, v in WORKER_MALLOC_ENV.items()}
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="suite", required=True)
    a = sub.add_parser("ratio")
    a.add_argument("--size", type=int, default=4096)
    a.add_argument("--width", type=int, default=16)
    a.add_argument("--precision", default="auto")
    a.add_argument("--tile", type=int, default=1024)
    a.add_argument("--batch", type=int, default=1)
    a.add_argument("--tiles-per-block", type=int, default=None, help="default: the settings' default")
    a.add_argument("--repeat", type=int, default=2)
    a.add_argument("--model", help="checkpoint to use (default: a cached random-weight UNet of --width)")
    a.add_argument(
        "--widen",
        type=int,
        default=1,
        help="time a UNet this many times wider that computes the same function "
        "(benchmarks.common.widened): a heavier model with the same polygons",
    )
    a.add_argument("--formats", nargs="+", help="outputs to write (default: all)")
    a.add_argument(
        "--scenes",
        type=int,
        default=1,
        help="run the scene this many times in one batch (a scene's write tail then "
        "overlaps the next one's blocks, as in a directory run)",
    )
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=int, nargs="+", default=[4000, 12000])
    m.add_argument("--width", type=int, default=16)
    m.add_argument("--model", help="checkpoint to use (default: a cached random-weight UNet of --width)")
    h = sub.add_parser("halo")
    h.add_argument("--size", type=int, default=1024)
    h.add_argument("--width", type=int, default=16)
    h.add_argument("--tile", type=int, default=512)
    p = sub.add_parser("precision")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--model")
    w = sub.add_parser("sweep")
    w.add_argument("--width", type=int, default=16)
    w.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024, 1536])
    w.add_argument("--precision", default="auto")
    w.add_argument("--scene", type=int, default=8192)
    g = sub.add_parser("pages")
    g.add_argument("--width", type=int, default=16)
    g.add_argument("--model", help="checkpoint to use (default: a cached random-weight UNet of --width)")
    g.add_argument("--tile", type=int, default=1008)
    g.add_argument("--tiles", type=int, default=26)
    g.add_argument("--repeat", type=int, default=4)
    k = sub.add_parser("housekeeping")
    k.add_argument("--seconds", type=float, default=20.0)
    k.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if args.suite in IN_PROCESS_MODEL_SUITES:
        _with_worker_malloc_env()
    {
        "housekeeping": housekeeping,
        "pages": pages,
        "ratio": ratio,
        "memory": memory,
        "halo": halo,
        "precision": precision,
        "sweep": sweep,
    }[args.suite](args)


if __name__ == "__main__":
    main()
