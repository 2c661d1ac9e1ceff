"""The training run: data -> split -> statistics -> model -> epochs (train, validate, save).

:func:`run` goes through these named steps:

1. **Output folder**: refuse to start over an earlier run unless ``output.overwrite`` (or
   ``--resume`` continues it).
2. **Scenes**: generate the synthetic set if configured, open every raster, read the
   labels of each class (:mod:`geounet.train.data`, :mod:`geounet.train.labels`).
3. **Split**: training and validation areas with a gap (:mod:`geounet.train.sampling`).
4. **Normalization**: per-band statistics from sampled training windows (or, when
   resuming, the statistics stored in the checkpoint).
5. **Model, loss, optimizer**: ``create_model``, ``loss_for`` (BCE+Dice or CE+Dice),
   AdamW (no weight decay on biases and BatchNorm), a per-step learning-rate schedule.
6. **Epochs**: each draws its windows (class-balanced, seeded by epoch), trains on them
   with autocast (bf16 where native) and gradient clipping, then validates on fixed
   tiles of the validation area: pixel IoU/F1 per class, loss, and the building F1@IoU
   (predicted tiles polygonized with ``rasterio.features.shapes`` and matched one-to-one
   against the truth polygons, :func:`geounet.evaluate.building_f1`).
7. **Saving** after every epoch: ``last.safetensors`` (a complete geounet checkpoint) with
   its training state beside it — ``last.state.safetensors`` (optimizer tensors) and
   ``last.state.json`` (epoch, step, schedule, history, best) — nothing pickled;
   ``best.safetensors`` when the chosen metric improved; ``log.csv`` and ``curves.png``.

Resuming loads the weights and the state sidecar and continues with the next epoch. The
windows and augmentations of an epoch depend only on ``(seed, epoch)``, so a resumed run
sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
import shapely.geometry
import torch
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save_file as save_tensors

from geounet import __version__
from geounet.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from geounet.errors import CheckpointError, ConfigError, GeounetError
from geounet.evaluate import MatchResult, building_f1
from geounet.compute import resolve_device, resolve_precision
from geounet.train.losses import loss_for
from geounet.models.base import SegmentationModel, activate
from geounet.models.registry import create_model
from geounet.scene.normalize import MeanStd, Percentile
from geounet.scene.source import fingerprint
from geounet.train.config import OptimSettings, TrainingSettings
from geounet.train.data import (
    TrainScene, bands_of, close_datasets, estimate_normalization, load_batch, open_scenes, pixel_weights, prepare,
)
from geounet.train.labels import to_class_index, window_box
from geounet.train.sampling import Rect, WindowRef, WindowSampler, spread, split_scene, tile_rects

log = logging.getLogger(__name__)

STATE_FORMAT = "geounet.train-state"
STATE_VERSION = 1
BEST = "best.safetensors"
LAST = "last.safetensors"
LOG_CSV = "log.csv"
CURVES = "curves.png"


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out_dir: the run's folder.
        best_checkpoint: checkpoint of the best epoch (by ``metric``).
        last_checkpoint: checkpoint after the last epoch (with its ``.state.*`` sidecar).
        best_epoch: 1-based epoch of the best checkpoint.
        metric: name of the metric that chose it; ``best_value`` its value.
        metrics: the best epoch's row of the log (losses, per-class IoU/F1, building F1...).
        history: every epoch's row, oldest first.
        epochs: epochs completed in total (including those before a resume).
        wall_time_s: seconds this call took (data preparation included).
        exported: where the best checkpoint was copied (``output.export``), if anywhere.
    """

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    metric: str
    best_value: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    epochs: int
    wall_time_s: float
    exported: Path | None = None


EpochCallback = Callable[[dict[str, Any]], None]


# -- learning-rate schedule ------------------------------------------------------------------


def lr_at(step: int, total: int, cfg: OptimSettings) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total``; a pure function.

    ``onecycle``: cosine from lr/25 up to lr over the warm-up, then cosine down to lr/1e4
    (the shape of ``torch.optim.lr_scheduler.OneCycleLR``); ``cosine``: linear from 0 up to
    lr, then cosine down to 0; ``constant``: lr.
    """
    peak = cfg.lr
    if cfg.schedule == "constant" or total <= 1:
        return peak
    warm = int(round(cfg.warmup * total))
    if cfg.schedule == "onecycle":
        start, end = peak / 25.0, peak / 1e4
        if step < warm:
            t = step / max(warm, 1)
            return start + (peak - start) * (1 - math.cos(math.pi * t)) / 2
        t = (step - warm) / max(total - warm - 1, 1)
        return end + (peak - end) * (1 + math.cos(math.pi * min(t, 1.0))) / 2
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(total - warm - 1, 1)
    return peak * (1 + math.cos(math.pi * min(t, 1.0))) / 2


# -- optimizer state sidecar -----------------------------------------------------------------


def state_paths(checkpoint: Path) -> tuple[Path, Path]:
    """``(json, safetensors)`` sidecar paths of a checkpoint: ``<stem>.state.json``, ``<stem>.state.safetensors``."""
    stem = checkpoint.name[: -len(".safetensors")] if checkpoint.name.endswith(".safetensors") else checkpoint.stem
    return checkpoint.with_name(f"{stem}.state.json"), checkpoint.with_name(f"{stem}.state.safetensors")


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GeounetError(f"cannot write {path}: {exc.strerror or exc}") from None


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (for safetensors) and JSON (for the rest)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    groups = [{**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_state(checkpoint: Path, opt: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    """Write the training-state sidecar of ``checkpoint`` (tensors first, JSON last)."""
    jpath, tpath = state_paths(checkpoint)
    tensors, meta = optimizer_state(opt)
    tmp = tpath.with_name(f".{tpath.name}.tmp-{os.getpid()}")
    save_tensors(tensors, str(tmp))
    os.replace(tmp, tpath)
    doc = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **info, "optimizer": meta}
    _atomic_bytes(jpath, json.dumps(doc, indent=1, allow_nan=True).encode())


def read_state(checkpoint: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The training state saved beside ``checkpoint``; checked against the checkpoint's hash.

    Raises:
        CheckpointError: no sidecar, a corrupt one, or one that belongs to other weights.
    """
    jpath, tpath = state_paths(checkpoint)
    if not jpath.exists() or not tpath.exists():
        raise CheckpointError(
            checkpoint,
            f"cannot resume: its training state ({jpath.name} and {tpath.name}) is not beside it; "
            f"resume from the last.safetensors of a geounet training run",
        )
    try:
        info = json.loads(jpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(jpath, f"is not readable JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != STATE_FORMAT:
        raise CheckpointError(jpath, f"is not a geounet training state (format {info.get('format')!r})")
    meta = read_metadata(checkpoint)
    if info.get("checkpoint_hash") != meta.hash:
        raise CheckpointError(
            checkpoint,
            f"its weights (hash {meta.short_hash}) are not those the training state {jpath.name} was saved "
            "with; the two files come from different epochs or runs",
        )
    try:
        tensors = load_tensors(str(tpath))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(tpath, f"cannot be read as safetensors: {exc}") from None
    return info, tensors


# -- validation ------------------------------------------------------------------------------


def _polygons(mask: np.ndarray, transform: Any) -> list[shapely.Geometry]:
    """4-connected regions of a boolean mask as polygons in CRS coordinates."""
    if not mask.any():
        return []
    return [
        shapely.geometry.shape(geom)
        for geom, _ in rasterio.features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=transform)
    ]


def _truth_polygons(scene: TrainScene, k: int, ref: WindowRef) -> list[shapely.Geometry]:
    """Truth features of class ``k`` clipped to the tile (the prediction cannot reach beyond it)."""
    box = window_box(scene.transform_of(ref), ref.height, ref.width)
    geoms = scene.classes[k].query(box)
    if not len(geoms):
        return []
    clipped = shapely.intersection(geoms, box)
    return [g for g in clipped if not g.is_empty and shapely.area(g) > 0]


def validate(model: SegmentationModel, scenes: Sequence[TrainScene], tiles: Sequence[WindowRef],
             bands: Sequence[int], norm: MeanStd | Percentile, settings: TrainingSettings, *,
             device: torch.device, dtype: torch.dtype, loss_fn: torch.nn.Module | None = None) -> dict[str, Any]:
    """Score ``model`` on validation tiles; returns a flat dict of metrics.

    Keys: ``val_loss``; per class ``<class>_iou``, ``<class>_f1`` (pixel F1 = Dice),
    ``<class>_precision``, ``<class>_recall``; for the building class ``building_f1``,
    ``building_precision``, ``building_recall`` (objects at IoU >= ``validation.iou``); ``mean_iou``
    and ``score`` (mean of the building F1 and the IoU of the other classes). Pixel metrics
    compare with the plain truth (no separation gaps) over valid pixels; ratios are NaN
    where a class is absent from both truth and prediction.

    Cost: one forward pass per tile (inference mode, autocast), one rasterization per class
    and tile, one polygonization of the building mask per tile.
    """
    names = settings.class_names
    spec = model.spec
    vcfg = settings.validation
    bidx = names.index(vcfg.building_class) if vcfg.building_class in names else None
    counts = np.zeros((len(names), 3), dtype=np.int64)  # tp, fp, fn
    matches: list[MatchResult] = []
    loss_sum, loss_px = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for ref in tiles:
            sc = scenes[ref.scene]
            raw, valid = sc.read(ref, bands, settings.data.use_nodata)
            x = torch.from_numpy(prepare(raw, valid, norm))[None].to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(x)
            logits = logits.float()
            truth = sc.labels(ref, separate=False)
            if loss_fn is not None and valid.any():
                target, gaps = sc.targets(ref)
                vt = torch.from_numpy(pixel_weights(valid, gaps, settings.loss.separation_weight))[None].to(device)
                if spec.mode == "multiclass":
                    tt = torch.from_numpy(to_class_index(target))[None].to(device)
                else:
                    tt = torch.from_numpy(target)[None].to(device, torch.float32)
                with torch.inference_mode():
                    n = int(valid.sum())
                    loss_sum += float(loss_fn(logits, tt, vt)) * n
                    loss_px += n
            probs = activate(logits, spec.mode)[0].cpu().numpy()
            if spec.mode == "multiclass":
                label = probs.argmax(axis=0)
                masks = [(label == k + 1) & valid for k in range(len(names))]
            else:
                masks = [(probs[k] >= vcfg.threshold) & valid for k in range(len(names))]
            for k, m in enumerate(masks):
                t = truth[k].astype(bool) & valid
                tp = int(np.count_nonzero(m & t))
                counts[k] += (tp, int(np.count_nonzero(m)) - tp, int(np.count_nonzero(t)) - tp)
            if bidx is not None:
                pred = _polygons(masks[bidx], sc.transform_of(ref))
                true = _truth_polygons(sc, bidx, ref)
                matches.append(building_f1(pred, true, vcfg.iou, min_area=vcfg.min_area_px * sc.pixel_area))
    finally:
        model.train(was_training)
    out: dict[str, Any] = {"val_loss": loss_sum / loss_px if loss_px else math.nan}
    ious = []
    for k, name in enumerate(names):
        tp, fp, fn = (int(v) for v in counts[k])
        empty = tp + fp + fn == 0
        iou = math.nan if empty else tp / (tp + fp + fn)
        out[f"{name}_iou"] = iou
        out[f"{name}_f1"] = math.nan if empty else 2 * tp / (2 * tp + fp + fn)
        out[f"{name}_precision"] = math.nan if empty else (tp / (tp + fp) if tp + fp else 0.0)
        out[f"{name}_recall"] = math.nan if empty else (tp / (tp + fn) if tp + fn else 0.0)
        ious.append(iou)
    out["mean_iou"] = _nanmean(ious)
    parts = []
    if bidx is not None:
        total = MatchResult.combine(matches)
        out["building_f1"] = total.f1
        out["building_precision"] = total.precision
        out["building_recall"] = total.recall
        parts.append(total.f1)
    parts += [iou for k, iou in enumerate(ious) if k != bidx]
    out["score"] = _nanmean(parts)
    return out


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities as None (strict JSON, as checkpoint metadata requires)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def is_better(value: float, best: float | None, metric: str) -> bool:
    """True when ``value`` beats ``best`` (lower for val_loss, higher otherwise; NaN never wins)."""
    if value is None or math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value < best if metric == "val_loss" else value > best


# -- logs ------------------------------------------------------------------------------------


def write_csv(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """The epoch log as CSV (one row per epoch, columns in first-seen order), written atomically."""
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def plot_curves(path: Path, history: Sequence[dict[str, Any]], class_names: Sequence[str]) -> None:
    """PNG with the loss curves (left) and validation metrics (right) per epoch.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


# -- provenance ------------------------------------------------------------------------------


def git_commit() -> str | None:
    """Commit of the geounet source tree (``+dirty`` when it has changes); None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _data_record(scenes: Sequence[TrainScene]) -> list[dict[str, Any]]:
    out = []
    for s in scenes:
        out.append({
            "image": str(s.path), "role": s.role, "size": [s.width, s.height], "crs": s.crs.to_string(),
            "dtype": s.dtype, "fingerprint": fingerprint(str(s.path)),
            "labels": {c.name: c.sources for c in s.classes},
            "features": {c.name: int(len(c.geoms)) for c in s.classes},
        })
    return out


# -- the run ---------------------------------------------------------------------------------


def _prepare_output(out: Path, resuming: bool, overwrite: bool) -> None:
    earlier = [n for n in (LOG_CSV, LAST, BEST) if (out / n).exists()]
    if earlier and not resuming and not overwrite:
        raise ConfigError(
            f"output folder {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite to start "
            f"afresh there, --resume {out / LAST} to continue it, or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeounetError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
    if overwrite and not resuming:
        for n in (LOG_CSV, LAST, BEST, CURVES, *(p.name for p in state_paths(out / LAST))):
            (out / n).unlink(missing_ok=True)


def _split(scenes: Sequence[TrainScene], settings: TrainingSettings) -> tuple[list[Rect], list[Rect]]:
    train: list[Rect] = []
    val: list[Rect] = []
    sp = settings.split
    for s in scenes:
        t, v = split_scene(s.index, s.height, s.width, s.role, kind=sp.kind, val_fraction=sp.val_fraction,
                           cell=sp.cell, gap=settings.gap, window=settings.sampling.window,
                           seed=settings.compute.seed, name=str(s.path))
        train += t
        val += v
    if not train:
        raise ConfigError(f"{settings.source}: no training area: every scene has role 'val'")
    if not val:
        raise ConfigError(
            f"{settings.source}: no validation area: with split.kind 'scenes' give at least one scene "
            "role 'val' (or synthetic.val), or use split.kind strip / checkerboard"
        )
    return train, val


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weights decay, biases and normalization parameters (1-D) do not."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _loss_kwargs(settings: TrainingSettings) -> dict[str, Any]:
    names = settings.class_names
    cw = settings.loss.class_weights
    if settings.model.mode == "multiclass":
        kw: dict[str, Any] = {"ce_weight": settings.loss.ce_weight, "dice_weight": settings.loss.dice_weight}
        if cw:
            kw["class_weights"] = [1.0] + [float(cw.get(n, 1.0)) for n in names]
        return kw
    kw = {"bce_weight": settings.loss.ce_weight, "dice_weight": settings.loss.dice_weight}
    if cw:
        kw["pos_weight"] = [float(cw.get(n, 1.0)) for n in names]
    return kw


def _format_row(row: dict[str, Any], names: Sequence[str]) -> str:
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}", f"val_loss {row['val_loss']:.4f}"]
    parts += [f"{n}_iou {row.get(f'{n}_iou', math.nan):.3f}" for n in names]
    if "building_f1" in row:
        parts.append(f"building_f1 {row['building_f1']:.3f}")
    parts.append(f"{row['epoch_time_s']:.0f}s")
    return "  ".join(parts)


def run(settings: TrainingSettings, *, resume: str | Path | None = None, progress: bool | None = None,
        on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train a model as ``settings`` says; see the module docstring for the steps.

    Args:
        settings: validated training settings.
        resume: a ``last.safetensors`` of an earlier run (its ``.state.*`` sidecar beside it);
            training continues with the epoch after the one it holds, in ``output.dir``.
        progress: tqdm progress bar (loss, learning rate, last validation); None: only when
            stderr is a terminal.
        on_epoch: called with each epoch's log row after it is saved.

    Raises:
        ConfigError: bad data or settings (file, key and value named).
        CheckpointError: ``resume`` is not a resumable checkpoint.
        GeounetError: training diverged (NaN loss) or outputs cannot be written.
    """
    import sys

    from tqdm import tqdm

    t0 = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    out = Path(settings.output.dir)
    names = settings.class_names
    seed = settings.compute.seed

    # 1. resume state and output folder
    state: dict[str, Any] | None = None
    state_tensors: dict[str, torch.Tensor] = {}
    resumed: SegmentationModel | None = None
    if resume is not None:
        rpath = Path(resume)
        state, state_tensors = read_state(rpath)
        resumed = load_checkpoint(rpath)
        if list(resumed.spec.classes) != names:
            raise CheckpointError(rpath, f"was trained for classes {list(resumed.spec.classes)}, the config has {names}")
    _prepare_output(out, resume is not None, settings.output.overwrite)

    if settings.compute.threads:
        torch.set_num_threads(settings.compute.threads)
    device = resolve_device(settings.compute.device)
    dtype = resolve_precision(settings.compute.precision, device)

    # 2. scenes; 3. split
    scenes = open_scenes(settings, progress=show)
    bands = bands_of(settings, scenes)
    train_rects, val_rects = _split(scenes, settings)
    sc = settings.sampling
    min_px = sc.min_class_pixels

    def presence(refs: Sequence[WindowRef]) -> np.ndarray:
        res = np.zeros((len(refs), len(names)), dtype=bool)
        by_scene: dict[int, list[int]] = {}
        for i, r in enumerate(refs):
            by_scene.setdefault(r.scene, []).append(i)
        for s, idx in by_scene.items():
            res[idx] = scenes[s].presence([refs[i] for i in idx], min_px)
        return res

    sampler = WindowSampler(train_rects, sc.window, sc.windows_per_epoch, seed, balance=sc.balance,
                            candidates=sc.candidates, presence=presence)
    tiles = spread(tile_rects(val_rects, settings.validation.tile), settings.validation.max_tiles)

    # 4. normalization
    if resumed is not None:
        rmeta = read_metadata(Path(resume))  # type: ignore[arg-type]
        if list(rmeta.bands) != list(bands):
            raise CheckpointError(Path(resume), f"was trained on bands {rmeta.bands}, the config gives {bands}")  # type: ignore[arg-type]
        norm = rmeta.normalization
    else:
        norm = estimate_normalization(scenes, train_rects, bands, settings.normalization, sc.window, seed,
                                      settings.data.use_nodata)
    log.info("normalization: %s", norm.model_dump())

    # 5. model, loss, optimizer
    torch.manual_seed(seed)
    if resumed is not None:
        model = resumed
    else:
        m = settings.model
        model = create_model(m.arch, in_channels=len(bands), classes=tuple(names), mode=m.mode, width=m.width,
                             depth=m.depth, **m.options)
    model = model.to(device).to(memory_format=torch.channels_last)
    model.train()
    loss_fn = loss_for(model.spec, **_loss_kwargs(settings)).to(device)
    opt = torch.optim.AdamW(_param_groups(model, settings.optim.weight_decay), lr=settings.optim.lr)
    scaler = torch.amp.GradScaler("cuda") if (device.type == "cuda" and dtype == torch.float16) else None
    steps_per_epoch = math.ceil(sc.windows_per_epoch / sc.batch_size)
    total_steps = settings.optim.epochs * steps_per_epoch

    start_epoch, step, elapsed_before = 0, 0, 0.0
    history: list[dict[str, Any]] = []
    metric = settings.validation.best_metric
    best_value: float | None = None
    best_epoch = 0
    if state is not None:
        restore_optimizer(opt, state_tensors, state["optimizer"])
        start_epoch = int(state["epoch"])
        step = int(state["step"])
        history = list(state.get("history", []))
        best_value = state.get("best", {}).get("value")
        best_epoch = int(state.get("best", {}).get("epoch", 0))
        elapsed_before = float(state.get("elapsed_s", 0.0))
        if state.get("best", {}).get("metric") not in (None, metric) or not (out / BEST).exists():
            best_value, best_epoch = None, 0  # another metric, or another folder: the next epoch sets the best
        if start_epoch >= settings.optim.epochs:
            log.warning("the checkpoint already holds %d epochs (optim.epochs = %d); nothing to train",
                        start_epoch, settings.optim.epochs)

    data_record = _data_record(scenes)
    base_provenance = {
        "trainer": "geounet.train", "geounet_version": __version__, "torch_version": torch.__version__,
        "config_file": settings.source, "config": settings.model_dump(mode="json"), "data": data_record,
        "bands": bands, "seed": seed, "git_commit": git_commit(), "device": str(device),
        "precision": str(dtype).replace("torch.", ""), "python": platform.python_version(),
        "train_area_px": int(sum(r.height * r.width for r in train_rects)),
        "val_area_px": int(sum(r.height * r.width for r in val_rects)),
        "val_tiles": len(tiles),
    }
    thresholds = {n: settings.validation.threshold for n in names}

    def save(path: Path, row: dict[str, Any], epochs_done: int, elapsed: float) -> str:
        prov = {**base_provenance, "epochs": epochs_done, "metrics": _finite(row), "best_metric": metric,
                "training_time_s": round(elapsed, 1),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "resumed_from": str(resume) if resume is not None else None}
        return save_checkpoint(model, path, bands=bands, normalization=norm, thresholds=thresholds, provenance=prov)

    # 6. epochs
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-train-data") if settings.compute.prefetch else None
    aug = settings.augment
    use_nodata = settings.data.use_nodata
    bar = tqdm(total=(settings.optim.epochs - start_epoch) * steps_per_epoch, disable=not show, unit="step",
               dynamic_ncols=True, desc="training")
    run_t0 = time.perf_counter()
    last_val = ""
    try:
        for epoch in range(start_epoch, settings.optim.epochs):
            te = time.perf_counter()
            refs = sampler.epoch(epoch)
            batches = [(i, refs[i : i + sc.batch_size]) for i in range(0, len(refs), sc.batch_size)]

            def load(b: tuple[int, list[WindowRef]], epoch: int = epoch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                return load_batch(scenes, b[1], bands, norm, use_nodata=use_nodata, aug=aug, seed=seed,
                                  epoch=epoch, first=b[0], separation_weight=settings.loss.separation_weight)

            pending: Future | None = executor.submit(load, batches[0]) if executor else None
            loss_sum, loss_n = 0.0, 0
            model.train()
            for bi, b in enumerate(batches):
                if executor is not None:
                    x, y, v = pending.result()  # type: ignore[union-attr]
                    pending = executor.submit(load, batches[bi + 1]) if bi + 1 < len(batches) else None
                else:
                    x, y, v = load(b)
                lr = lr_at(min(step, total_steps - 1), total_steps, settings.optim)
                for g in opt.param_groups:
                    g["lr"] = lr
                xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
                vt = torch.from_numpy(v).to(device)
                if model.spec.mode == "multiclass":
                    yt = torch.from_numpy(np.stack([to_class_index(s) for s in y])).to(device)
                else:
                    yt = torch.from_numpy(y).to(device, torch.float32)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    logits = model(xt)
                loss = loss_fn(logits, yt, vt)
                if not torch.isfinite(loss):
                    raise GeounetError(
                        f"training diverged: the loss is {float(loss)} at epoch {epoch + 1}, step {step}; "
                        f"lower optim.lr (now {settings.optim.lr}) or keep optim.grad_clip on"
                    )
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if settings.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.optim.grad_clip)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                step += 1
                loss_sum += float(loss.detach()) * len(b[1])
                loss_n += len(b[1])
                bar.update(1)
                bar.set_postfix_str(f"ep {epoch + 1} loss {loss_sum / loss_n:.4f} lr {lr:.2e}{last_val}", refresh=False)

            tv = time.perf_counter()
            val = validate(model, scenes, tiles, bands, norm, settings, device=device, dtype=dtype, loss_fn=loss_fn)
            val_time = time.perf_counter() - tv
            elapsed = elapsed_before + (time.perf_counter() - run_t0)
            row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / max(loss_n, 1),
                                   **val, "train_time_s": tv - te, "val_time_s": val_time,
                                   "epoch_time_s": time.perf_counter() - te, "elapsed_s": elapsed}
            history.append(row)
            value = row.get(metric, math.nan)
            improved = is_better(value, best_value, metric)
            if improved:
                best_value, best_epoch = value, epoch + 1
                save(out / BEST, row, epoch + 1, elapsed)
            digest = save(out / LAST, row, epoch + 1, elapsed)
            save_state(out / LAST, opt, {
                "epoch": epoch + 1, "step": step, "total_steps": total_steps, "elapsed_s": elapsed,
                "checkpoint_hash": digest, "history": history, "seed": seed,
                "best": {"metric": metric, "value": best_value, "epoch": best_epoch},
                "schedule": settings.optim.model_dump(mode="json"),
            })
            write_csv(out / LOG_CSV, history)
            plot_curves(out / CURVES, history, names)
            last_val = f" | val {metric} {value:.3f}"
            line = _format_row(row, names) + ("  *best*" if improved else "")
            if show:
                bar.write(line)
            log.info(line)
            if on_epoch is not None:
                on_epoch(row)
    finally:
        bar.close()
        if executor is not None:
            executor.submit(close_datasets).result()
            executor.shutdown(wait=True)
        close_datasets()

    if not history:
        raise ConfigError(f"{settings.source}: no epoch was trained (optim.epochs = {settings.optim.epochs})")
    if not (out / BEST).exists():
        raise GeounetError(f"no best checkpoint in {out}; every validation metric was NaN")
    best_row = next((r for r in history if r["epoch"] == best_epoch), history[-1])
    exported = None
    if settings.output.export:
        exported = Path(settings.output.export)
        exported.parent.mkdir(parents=True, exist_ok=True)
        _atomic_bytes(exported, (out / BEST).read_bytes())
    return TrainResult(out_dir=out, best_checkpoint=out / BEST, last_checkpoint=out / LAST, best_epoch=best_epoch,
                       metric=metric, best_value=float(best_value) if best_value is not None else math.nan,
                       metrics=best_row, history=history, epochs=history[-1]["epoch"],
                       wall_time_s=time.perf_counter() - t0, exported=exported)
