"""Batch benchmark (issues 4 and 7): many small scenes plus a few large ones in one run.

  python benchmarks/bench_batch.py --small 50 --small-size 512 --large 2 --large-size 4096 --workers 1 2

For each worker count it runs the workflow in-process on an embedded LocalCluster (worker
processes) and records: wall time and scene throughput; every worker's RSS sampled through
the run (first / median / last / max, and the slope per scene done, which must be ~0 for
"flat"); open file descriptors of the client process and of the workers before and after.
Results: benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, machine, save


def _scenes(n_small: int, small: int, n_large: int, large: int) -> list[str]:
    from geounet.synth import synthesize_scene

    folder = CACHE / f"batch_{n_small}x{small}_{n_large}x{large}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_small + n_large):
        size = small if i < n_small else large
        name = f"b{i:03d}_{size}"
        if not (folder / f"{name}.tif").exists():
            synthesize_scene(folder, name=name, width=size, height=size, seed=20000 + i, overwrite=True)
        paths.append(str(folder / f"{name}.tif"))
    # the large scenes in the middle, so small ones run before and after them
    mid = n_small // 2
    return paths[:mid] + paths[n_small:] + paths[mid:n_small]


def _run(scenes: list[str], model: str, workers: int) -> dict:
    import psutil
    from distributed import Client, LocalCluster

    from geounet.batch.engine import WorkerSetup, available_cores
    from geounet.batch.run import run_scenes
    from geounet.settings import InferenceSettings

    me = psutil.Process()
    fds_before = me.num_fds()
    cores = available_cores()
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=max(1, cores // workers), processes=True, dashboard_address=None
    )
    client = Client(cluster)
    client.register_plugin(WorkerSetup(1))
    pids = list(client.run(lambda: __import__("os").getpid()).values())
    wprocs = [psutil.Process(p) for p in pids]
    worker_fds_before = [p.num_fds() for p in wprocs]
    samples: dict[int, list[tuple[int, float]]] = {p: [] for p in pids}
    done = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p in wprocs:
                try:
                    samples[p.pid].append((done[0], p.memory_info().rss / 2**20))
                except psutil.Error:
                    pass
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_scenes(
            scenes,
            model,
            Path(tmp),
            InferenceSettings(min_area_m2=4.0),
            client=client,
            progress=False,
            on_outcome=lambda o: done.__setitem__(0, done[0] + 1),
        )
        wall = time.perf_counter() - t0
    stop.set()
    t.join()
    worker_fds_after = [p.num_fds() for p in wprocs]
    client.close()
    cluster.close()
    fds_after = me.num_fds()
    per_worker = []
    for s in samples.values():
        rss = [r for _, r in s]
        xs = [d for d, _ in s]
        slope = 0.0
        if len(set(xs)) > 1:
            mx, my = statistics.fmean(xs), statistics.fmean(rss)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, rss)) / sum((x - mx) ** 2 for x in xs)
        # "flat": compare the first and last small-scene phases (both after warm-up)
        q = max(1, len(rss) // 5)
        per_worker.append(
            {
                "samples": len(rss),
                "rss_first_mb": round(rss[0], 1),
                "rss_median_mb": round(statistics.median(rss), 1),
                "rss_max_mb": round(max(rss), 1),
                "rss_last_mb": round(rss[-1], 1),
                "rss_first_fifth_median_mb": round(statistics.median(rss[:q]), 1),
                "rss_last_fifth_median_mb": round(statistics.median(rss[-q:]), 1),
                "slope_mb_per_scene": round(slope, 3),
            }
        )
    px = sum(r.pixels for r in res)
    return {
        "workers": workers,
        "threads_per_worker": max(1, cores // workers),
        "wall_s": round(wall, 2),
        "scenes": len(res),
        "failed": sum(r.status == "failed" for r in res),
        "scenes_per_s": round(len(res) / wall, 3),
        "mpx_per_s": round(px / wall / 1e6, 3),
        "client_fds_before": fds_before,
        "client_fds_after": fds_after,
        "worker_fds_before": worker_fds_before,
        "worker_fds_after": worker_fds_after,
        "worker_memory": per_worker,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=50)
    ap.add_argument("--small-size", type=int, default=512)
    ap.add_argument("--large", type=int, default=2)
    ap.add_argument("--large-size", type=int, default=4096)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    from geounet.batch.workflow import resolve_model

    model = resolve_model(args.model)
    scenes = _scenes(args.small, args.small_size, args.large, args.large_size)
    runs = [_run(scenes, model, w) for w in args.workers]
    save(
        f"batch_{args.small}x{args.small_size}_{args.large}x{args.large_size}",
        {
            "command": "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "model": model,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
