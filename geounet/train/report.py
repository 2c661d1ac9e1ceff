"""What a training run tells about itself: ``log.csv``, ``curves.png``, the epoch line, and
the provenance record stored in every checkpoint it saves.

Files are written through :mod:`geounet.atomic` (a temporary name, then ``os.replace``), so
a reader never sees half a log or half a picture, and a full disk raises
:class:`~geounet.errors.OutputError` naming the file while the previous one stays.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import platform
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from geounet import __version__
from geounet.atomic import write_bytes, write_text
from geounet.scene.source import fingerprint
from geounet.train.config import TrainingSettings
from geounet.train.data import TrainScene
from geounet.train.sampling import Rect

LOG_CSV = "log.csv"
CURVES = "curves.png"


# -- log.csv and curves.png ------------------------------------------------------------------


def write_csv(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """The epoch log as CSV (one row per epoch, columns in first-seen order), written atomically.

    Raises:
        OutputError: the file cannot be written (names it; the previous log is unchanged).
    """
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def plot_curves(path: Path, history: Sequence[dict[str, Any]], class_names: Sequence[str]) -> None:
    """PNG with the loss curves (left) and validation metrics (right) per epoch, written atomically.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change); the picture
    is rendered in memory (a few hundred kB) and then written.

    Raises:
        OutputError: the file cannot be written (names it; the previous picture is unchanged).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy and only needed here
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [r["epoch"] for r in history]

    def series(key: str) -> list[float]:
        return [float(r.get(key, math.nan)) if r.get(key) is not None else math.nan for r in history]

    ax1.plot(ep, series("train_loss"), marker="o", ms=3, label="train loss")
    ax1.plot(ep, series("val_loss"), marker="o", ms=3, label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for name in class_names:
        ax2.plot(ep, series(f"{name}_iou"), marker="o", ms=3, label=f"{name} pixel IoU")
    if any("building_f1" in r for r in history):
        ax2.plot(ep, series("building_f1"), marker="s", ms=3, label="building F1 (objects)")
    ax2.plot(ep, series("score"), ls="--", color="black", label="score")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation metric")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_bytes(path, png.getvalue())


def format_row(row: dict[str, Any], names: Sequence[str]) -> str:
    """One line for the log and the progress bar: losses, per-class IoU, building F1, time."""
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}", f"val_loss {row['val_loss']:.4f}"]
    parts += [f"{n}_iou {row.get(f'{n}_iou', math.nan):.3f}" for n in names]
    if "building_f1" in row:
        parts.append(f"building_f1 {row['building_f1']:.3f}")
    parts.append(f"{row['epoch_time_s']:.0f}s")
    return "  ".join(parts)


# -- provenance ------------------------------------------------------------------------------


def git_commit() -> str | None:
    """Commit of the geounet source tree (``+dirty`` when it has changes); None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def data_record(scenes: Sequence[TrainScene], settings: TrainingSettings | None = None) -> list[dict[str, Any]]:
    """Per scene of ``data.scenes``/synthetic: image, role, size, CRS, dtype, fingerprint,
    label files and feature counts; per source of ``data.sources`` one summary (images, areas
    by role, pixel sizes, a fingerprint of its images' fingerprints), so that hundreds of chips
    keep the checkpoint header small. Costs one small read per image (the first MiB is hashed)."""
    out: list[dict[str, Any]] = []
    sources: dict[str, list[TrainScene]] = {}
    for s in scenes:
        if s.source:
            sources.setdefault(s.source, []).append(s)
            continue
        out.append(
            {
                "image": str(s.path),
                "role": s.role,
                "size": [s.width, s.height],
                "crs": s.crs.to_string() if s.crs is not None else None,
                "dtype": s.dtype,
                "fingerprint": fingerprint(str(s.path)),
                "labels": {c.name: c.sources for c in s.classes},
                "features": {c.name: int(len(c.geoms)) for c in s.classes},
            }
        )
    declared = {src.name: src for src in settings.data.sources} if settings is not None else {}
    for name, group in sources.items():
        digest = hashlib.sha256("".join(fingerprint(str(s.path)) for s in group).encode()).hexdigest()[:16]
        gsds = [s.gsd_m for s in group if s.gsd_m is not None]
        mosaics = sum(s.members > 1 for s in group)
        out.append(
            {
                "source": name,
                "images": sum(s.members for s in group),
                **({"mosaics": mosaics} if mosaics else {}),
                "pixels": int(sum(s.width * s.height for s in group)),
                "areas": {role: sorted({s.area for s in group if s.role == role}) for role in ("train", "val")},
                "gsd_m": [round(min(gsds), 3), round(max(gsds), 3)] if gsds else None,
                "gsd_known": all(s.gsd_known for s in group),
                "labelled": [c.name for c, k in zip(group[0].classes, group[0].known or []) if k],
                "first_image": str(group[0].path),
                "fingerprint": digest,
                "terms": declared[name].terms if name in declared else None,
                "attribution": declared[name].attribution if name in declared else None,
            }
        )
    return out


def run_provenance(
    settings: TrainingSettings,
    scenes: Sequence[TrainScene],
    bands: Sequence[int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    train_rects: Sequence[Rect],
    val_rects: Sequence[Rect],
    val_tiles: int,
    initialized_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The part of the provenance that is the same for every checkpoint of a run;
    ``initialized_from``: the ``model.init`` checkpoint the weights started from, if any."""
    init = {"initialized_from": initialized_from} if initialized_from is not None else {}
    return {
        "trainer": "geounet.train",
        "geounet_version": __version__,
        "torch_version": torch.__version__,
        "config_file": settings.source,
        "config": settings.model_dump(mode="json"),
        "data": data_record(scenes, settings),
        "bands": list(bands),
        "seed": settings.compute.seed,
        "git_commit": git_commit(),
        "device": str(device),
        "precision": str(dtype).replace("torch.", ""),
        "python": platform.python_version(),
        "train_area_px": int(sum(r.height * r.width for r in train_rects)),
        "val_area_px": int(sum(r.height * r.width for r in val_rects)),
        "val_tiles": val_tiles,
        **init,
    }


def epoch_provenance(
    base: dict[str, Any], row: dict[str, Any], *, metric: str, resumed_from: str | Path | None
) -> dict[str, Any]:
    """``base`` completed with an epoch's row: epochs, metrics (NaN as None), training time, date."""
    return {
        **base,
        "epochs": row["epoch"],
        "metrics": finite(row),
        "best_metric": metric,
        "training_time_s": round(row["elapsed_s"], 1),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
    }


def finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities as None (strict JSON, as checkpoint metadata requires)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
