"""Shared helpers for the benchmark scripts: cached synthetic scenes and random checkpoints."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    import torch

    from geounet.compute import cpu_supports_bf16

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_bf16": cpu_supports_bf16(),
        "load_avg_at_start": os.getloadavg()[0],
    }


def scene(size: int, seed: int = 0) -> Path:
    """A cached synthetic scene of size x size pixels (written window by window)."""
    from geounet.synth import synthesize_scene

    out = CACHE / "scenes"
    name = f"synth_{size}_{seed}"
    path = out / f"{name}.tif"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        synthesize_scene(out, name=name, width=size, height=size, seed=seed)
    return path


def checkpoint(width: int = 16, depth: int = 4, seed: int = 0) -> Path:
    """A cached random-weight UNet (buildings + roads) with calibrated BatchNorm statistics."""
    import torch

    from geounet import create_model, save_checkpoint

    path = CACHE / f"unet_w{width}_d{depth}_s{seed}.safetensors"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = create_model("unet", classes=("building", "road"), mode="multilabel", width=width, depth=depth)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 128, 128))
    model.eval()
    save_checkpoint(model, path)
    return path


class TreeMemory:
    """Samples the summed RSS of a process and all its descendants every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemory:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_cli(args: list[str]) -> tuple[float, int, str]:
    """Run ``geounet ARGS`` as a subprocess; returns (wall seconds, peak tree RSS bytes, output)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "geounet.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with TreeMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"geounet {' '.join(args)} failed ({proc.returncode}):\n{out}")
    return time.perf_counter() - t0, mem.peak, out


def save(name: str, record: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps(record, indent=2, default=str))
    return path


def widened(ckpt: Path, factor: int) -> Path:
    """A UNet ``factor`` times as wide as ``ckpt``'s that computes exactly the same function.

    Every layer gets ``factor`` times the channels (:func:`geounet.train.warmstart.widen`: the
    original weights fill the first channels of each layer and take nothing from the added
    ones, so the logits are unchanged). Used to time the pipeline around a model with the cost
    of a wider UNet while keeping a trained model's outputs (a random-weight model's noise
    masks would make the polygon work unrealistically large). Cached beside the scenes.
    """
    from geounet import create_model, load_checkpoint, save_checkpoint
    from geounet.train.warmstart import widen

    path = CACHE / f"{ckpt.stem}_x{factor}.safetensors"
    if path.exists():
        return path
    src = load_checkpoint(ckpt)
    spec = src.spec
    dst = create_model(
        "unet",
        classes=tuple(spec.classes),
        mode=spec.mode,
        width=spec.width * factor,
        depth=spec.depth,
        in_channels=spec.in_channels,
    )
    widen(src, dst)  # checks that the features reaching the output layer are the source's
    dst.eval()
    dst.metadata = src.metadata  # bands, normalization, thresholds, tile and halo carry over
    CACHE.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, path, provenance={"widened_from": str(ckpt), "factor": factor})
    return path
