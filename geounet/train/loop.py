"""The training run, as named steps: resume -> output folder -> data -> statistics -> model
-> epochs (train one epoch, validate, save) -> finish.

:func:`run` calls one function per step:

1. :func:`load_resume` (``--resume`` only): the last checkpoint of an earlier run and its
   state sidecar (:mod:`geounet.train.state`).
2. :func:`prepare_output`: refuse to start over an earlier run unless ``output.overwrite``
   (or ``--resume`` continues it).
3. :func:`~geounet.train.inputs.open_data`: generate the synthetic set if configured, open every raster, read the
   labels of each class (:mod:`geounet.train.data`, :mod:`geounet.train.labels`); split
   training and validation areas with a gap; the window sampler and the validation tiles
   (:mod:`geounet.train.sampling`).
4. :func:`~geounet.train.warmstart.warm_start` (``model.init`` only): the model started from a
   checkpoint's weights, which also gives the statistics; else
   :func:`~geounet.train.inputs.choose_normalization`: per-band statistics from sampled training windows (or,
   when resuming, the statistics stored in the checkpoint).
5. :func:`build_fit`: ``create_model`` (or the warm-started model), ``loss_for`` (BCE+Dice or CE+Dice), AdamW (no weight
   decay on biases and BatchNorm), a per-step learning-rate schedule (:mod:`geounet.train.optim`).
6. :func:`train_epochs`: each epoch draws its windows (class-balanced, seeded by epoch) and
   trains on them with autocast (bf16 where native) and gradient clipping
   (:func:`train_epoch`); validates on fixed tiles of the validation area through
   inference's own read, forward, mask and polygon steps
   (:func:`geounet.train.validation.validate`); then saves (:meth:`RunFolder.save_epoch`):
   ``best.safetensors`` when the chosen metric improved (with ``optim.ema`` validation scores,
   and best holds, a moving average of the weights), ``last.safetensors`` (a complete
   geounet checkpoint of the trained weights) with its training state beside it — ``last.state.safetensors``
   (optimizer tensors) and ``last.state.json`` (epoch, step, schedule, history, best) —
   nothing pickled; ``log.csv`` and ``curves.png`` (:mod:`geounet.train.report`).
7. :func:`calibrate_best` (``validation.calibrate`` only): each class's probability threshold
   chosen with the best checkpoint on the validation tiles
   (:func:`geounet.train.validation.calibrate_thresholds`) and stored in it.
8. :func:`finish`: copy the best checkpoint to ``output.export``; the :class:`TrainResult`.

Every file is written through :mod:`geounet.atomic`: a failed write (a full disk, a file
size limit) raises :class:`~geounet.errors.OutputError` naming the file (``geounet train``
exits 4), and the previous file of that name — an earlier best checkpoint — is left intact.

Resuming loads the weights and the state sidecar and continues with the next epoch. The
windows and augmentations of an epoch depend only on ``(seed, epoch)``, so a resumed run
sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from geounet.atomic import describe_os_error, write_bytes
from geounet.checkpoint import load_checkpoint, save_checkpoint
from geounet.compute import resolve_device, resolve_precision
from geounet.errors import CheckpointError, ConfigError, GeounetError, OutputError
from geounet.models.base import SegmentationModel
from geounet.models.registry import create_model
from geounet.scene.normalize import MeanStd, Percentile
from geounet.train.config import OptimSettings, TrainingSettings
from geounet.train.inputs import Batch, BatchLoader, TrainData, choose_normalization, open_data
from geounet.train.labels import to_class_index
from geounet.train.losses import loss_for
from geounet.train.optim import loss_kwargs, lr_at, param_groups
from geounet.train.report import CURVES, LOG_CSV, epoch_provenance, format_row, plot_curves, run_provenance, write_csv
from geounet.train.state import Progress, read_state, restore_optimizer, save_state, state_paths
from geounet.train.validation import calibrate_thresholds, validate
from geounet.train.warmstart import WarmStart, load_init, warm_start, with_architecture

log = logging.getLogger(__name__)

BEST = "best.safetensors"
LAST = "last.safetensors"

EpochCallback = Callable[[dict[str, Any]], None]


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


def run(
    settings: TrainingSettings,
    *,
    resume: str | Path | None = None,
    progress: bool | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
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
        OutputError: an output file or folder cannot be written (named; earlier files intact).
        GeounetError: training diverged (NaN loss).
    """
    t0 = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    out = Path(settings.output.dir)
    earlier = load_resume(Path(resume), settings) if resume is not None else None
    init = load_init(settings) if earlier is None else None
    if earlier is not None and settings.model.init is not None:
        log.info("resuming %s: model.init (%s) is not read again", earlier.path, settings.model.init)
    if init is not None:
        settings = with_architecture(settings, init.spec)
    prepare_output(out, resuming=earlier is not None, overwrite=settings.output.overwrite)
    device, dtype = setup_compute(settings)
    data = open_data(settings, show)
    start = warm_start(settings, data.bands, init) if init is not None else None
    norm = (
        start.normalization
        if start is not None
        else choose_normalization(settings, data, earlier.path if earlier is not None else None)
    )
    fit = build_fit(settings, data.bands, device, dtype, earlier, start)
    state = start_progress(settings, out, earlier)
    folder = RunFolder(
        out=out,
        settings=settings,
        bands=data.bands,
        normalization=norm,
        thresholds=dict.fromkeys(settings.class_names, settings.validation.threshold),
        provenance=run_provenance(
            settings,
            data.scenes,
            data.bands,
            device=device,
            dtype=dtype,
            train_rects=data.train_rects,
            val_rects=data.val_rects,
            val_tiles=len(data.tiles),
            initialized_from=start.provenance if start is not None else started_from(earlier),
        ),
        resumed_from=earlier.path if earlier is not None else None,
    )
    train_epochs(settings, data, norm, fit, state, folder, show=show, on_epoch=on_epoch)
    if settings.validation.calibrate and (out / BEST).exists():
        calibrate_best(out / BEST, settings, data, norm, device=device, dtype=dtype)
    return finish(out, settings, state, t0)


# -- 1. resume -------------------------------------------------------------------------------


@dataclass
class Resume:
    """An earlier run to continue: its last checkpoint, loaded, and the state saved beside it."""

    path: Path
    model: SegmentationModel
    record: dict[str, Any]  # the state sidecar's JSON
    optimizer: dict[str, torch.Tensor]  # the state sidecar's tensors


def load_resume(path: Path, settings: TrainingSettings) -> Resume:
    """The checkpoint ``path`` and its state sidecar, checked against the config's classes.

    Raises:
        CheckpointError: no or a mismatched sidecar, or other classes than the config's.
    """
    record, tensors = read_state(path)
    model = load_checkpoint(path)
    names = settings.class_names
    if list(model.spec.classes) != names:
        raise CheckpointError(path, f"was trained for classes {list(model.spec.classes)}, the config has {names}")
    return Resume(path=path, model=model, record=record, optimizer=tensors)


def started_from(earlier: Resume | None) -> dict[str, Any] | None:
    """The ``model.init`` record of the run a resume continues (its weights' first origin)."""
    if earlier is None:
        return None
    record = earlier.model.metadata.get("provenance", {}).get("initialized_from")
    return record if isinstance(record, dict) else None


# -- 2. output folder ------------------------------------------------------------------------


def prepare_output(out: Path, *, resuming: bool, overwrite: bool) -> None:
    """Create ``out``; refuse one holding an earlier run unless resuming or ``overwrite``
    (which deletes the earlier run's files first).

    Raises:
        ConfigError: ``out`` holds an earlier run (names the files and the three ways on).
        OutputError: the folder cannot be created.
    """
    earlier = [n for n in (LOG_CSV, LAST, BEST) if (out / n).exists()]
    if earlier and not resuming and not overwrite:
        raise ConfigError(
            f"output folder {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite to start "
            f"afresh there, --resume {out / LAST} to continue it, or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create output folder {out}: {exc.strerror or exc}; choose another --out (output.dir)"
        ) from None
    if overwrite and not resuming:
        for n in (LOG_CSV, LAST, BEST, CURVES, *(p.name for p in state_paths(out / LAST))):
            (out / n).unlink(missing_ok=True)


def setup_compute(settings: TrainingSettings) -> tuple[torch.device, torch.dtype]:
    """Torch threads, the device and the autocast precision (``compute``)."""
    if settings.compute.threads:
        torch.set_num_threads(settings.compute.threads)
    device = resolve_device(settings.compute.device)
    return device, resolve_precision(settings.compute.precision, device)


# -- 3. data ---------------------------------------------------------------------------------


# -- 5. model, loss, optimizer ---------------------------------------------------------------


@dataclass
class Fit:
    """The model being trained and what updates it."""

    model: SegmentationModel
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 on CUDA only
    device: torch.device
    dtype: torch.dtype  # autocast precision
    grad_clip: float  # max gradient norm; 0 turns clipping off
    steps_per_epoch: int
    total_steps: int
    ema: AveragedModel | None = None  # moving average of the weights (optim.ema), updated after each step

    @property
    def evaluated(self) -> SegmentationModel:
        """The weights validation scores and ``best.safetensors`` holds: the average with ``optim.ema``."""
        return self.model if self.ema is None else self.ema.module  # type: ignore[return-value]

    def ema_tensors(self) -> dict[str, torch.Tensor]:
        """The average's weights and buffers as ``ema.<name>`` tensors (for the state sidecar); none without it."""
        if self.ema is None:
            return {}
        return {f"ema.{k}": v for k, v in self.ema.module.state_dict().items()}

    def loss(self, batch: Batch) -> torch.Tensor:
        """Forward a batch (autocast) and return its training loss."""
        x, y, v = batch
        xt = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        vt = torch.from_numpy(v).to(self.device)
        if self.model.spec.mode == "multiclass":
            yt = torch.from_numpy(np.stack([to_class_index(s) for s in y])).to(self.device)
        else:
            yt = torch.from_numpy(y).to(self.device, torch.float32)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = self.model(xt)
        return self.loss_fn(logits, yt, vt)

    def update(self, loss: torch.Tensor, lr: float) -> None:
        """One optimizer step at learning rate ``lr``: backward, clip, step (scaled for fp16)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)


def build_fit(
    settings: TrainingSettings,
    bands: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
    earlier: Resume | None,
    start: WarmStart | None = None,
) -> Fit:
    """A new model seeded by ``compute.seed`` (or the resumed one, or the one ``model.init``
    started), its loss and its optimizer (AdamW; the resumed optimizer state restored)."""
    torch.manual_seed(settings.compute.seed)
    if earlier is not None:
        model = earlier.model
    elif start is not None:
        model = start.model
    else:
        m = settings.model
        model = create_model(
            m.arch,
            in_channels=len(bands),
            classes=tuple(settings.class_names),
            mode=m.mode,
            width=m.width,
            depth=m.depth,
            **m.options,
        )
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format
    model.train()
    loss_fn = loss_for(model.spec, **loss_kwargs(settings)).to(device)
    opt = torch.optim.AdamW(param_groups(model, settings.optim.weight_decay), lr=settings.optim.lr)
    if earlier is not None:
        restore_optimizer(opt, earlier.optimizer, earlier.record["optimizer"])
    scaler = torch.amp.GradScaler("cuda") if (device.type == "cuda" and dtype == torch.float16) else None
    sc = settings.sampling
    steps_per_epoch = math.ceil(sc.windows_per_epoch / sc.batch_size)
    ema = start_average(model, settings.optim.ema, earlier)
    return Fit(
        model=model,
        loss_fn=loss_fn,
        opt=opt,
        scaler=scaler,
        device=device,
        dtype=dtype,
        grad_clip=settings.optim.grad_clip,
        steps_per_epoch=steps_per_epoch,
        total_steps=settings.optim.epochs * steps_per_epoch,
        ema=ema,
    )


def start_average(model: SegmentationModel, decay: float, earlier: Resume | None) -> AveragedModel | None:
    """The moving average of ``model``'s weights and buffers (``optim.ema``); None when off.

    A resumed run continues the average its state sidecar holds; a sidecar without one (the
    earlier run had no ``optim.ema``) starts it from the resumed weights.
    """
    if decay <= 0:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    saved = {
        k[len("ema.") :]: v
        for k, v in (earlier.optimizer if earlier is not None else {}).items()
        if k.startswith("ema.")
    }
    if saved:
        ema.module.load_state_dict(saved)
        ema.n_averaged.fill_(1)  # go on averaging rather than copying the next step's weights
    elif earlier is not None:
        log.info("resuming %s: its state holds no weight average; optim.ema starts one now", earlier.path)
    return ema


def start_progress(settings: TrainingSettings, out: Path, earlier: Resume | None) -> Progress:
    """Nothing done yet, or where the resumed run stopped."""
    metric = settings.validation.best_metric
    if earlier is None:
        return Progress(metric=metric)
    state = Progress.from_record(earlier.record, metric, best_exists=(out / BEST).exists())
    if state.epoch >= settings.optim.epochs:
        log.warning(
            "the checkpoint already holds %d epochs (optim.epochs = %d); nothing to train",
            state.epoch,
            settings.optim.epochs,
        )
    return state


# -- 6. epochs -------------------------------------------------------------------------------


def train_epoch(
    fit: Fit, loader: BatchLoader, epoch: int, state: Progress, optim: OptimSettings, bar: tqdm, note: str = ""
) -> tuple[float, float]:
    """Train on every batch of ``epoch`` (0-based); advances ``state.step`` per batch.

    Returns:
        The mean loss per window and the learning rate of the last step.

    Raises:
        GeounetError: the loss is NaN or infinite (training diverged); names the epoch, the
            step and the learning rate to lower.
    """
    fit.model.train()
    loss_sum, loss_n = 0.0, 0
    lr = optim.lr
    for batch in loader.epoch(epoch):
        lr = lr_at(min(state.step, fit.total_steps - 1), fit.total_steps, optim)
        loss = fit.loss(batch)
        if not torch.isfinite(loss):
            raise GeounetError(
                f"training diverged: the loss is {float(loss)} at epoch {epoch + 1}, step {state.step}; "
                f"lower optim.lr (now {optim.lr}) or keep optim.grad_clip on"
            )
        fit.update(loss, lr)
        state.step += 1
        n = len(batch[0])
        loss_sum += float(loss.detach()) * n
        loss_n += n
        bar.update(1)
        bar.set_postfix_str(f"ep {epoch + 1} loss {loss_sum / loss_n:.4f} lr {lr:.2e}{note}", refresh=False)
    return loss_sum / max(loss_n, 1), lr


@dataclass
class RunFolder:
    """The run's output folder and what every checkpoint saved in it records."""

    out: Path
    settings: TrainingSettings
    bands: list[int]
    normalization: MeanStd | Percentile
    thresholds: dict[str, float]
    provenance: dict[str, Any]  # the run's part; each save adds the epoch's (report.epoch_provenance)
    resumed_from: Path | None = None

    def save_epoch(self, fit: Fit, state: Progress, row: dict[str, Any]) -> bool:
        """Record ``row`` in ``state`` and save: ``best.safetensors`` if it is the new best, then
        ``last.safetensors``, its state sidecar, ``log.csv`` and ``curves.png``, each atomically.
        Returns whether the epoch is the new best.

        Raises:
            OutputError: a file cannot be written (names it); files saved before stay intact.
        """
        improved = state.record(row)
        prov = epoch_provenance(self.provenance, row, metric=state.metric, resumed_from=self.resumed_from)
        if improved:
            self._checkpoint(fit.evaluated, self.out / BEST, prov)
        digest = self._checkpoint(fit.model, self.out / LAST, prov)
        save_state(
            self.out / LAST,
            fit.opt,
            {
                **state.to_record(),
                "total_steps": fit.total_steps,
                "checkpoint_hash": digest,
                "seed": self.settings.compute.seed,
                "schedule": self.settings.optim.model_dump(mode="json"),
            },
            extra=fit.ema_tensors(),
        )
        write_csv(self.out / LOG_CSV, state.history)
        plot_curves(self.out / CURVES, state.history, self.settings.class_names)
        return improved

    def _checkpoint(self, model: SegmentationModel, path: Path, provenance: dict[str, Any]) -> str:
        return save_checkpoint(
            model,
            path,
            bands=self.bands,
            normalization=self.normalization,
            thresholds=self.thresholds,
            gsd_m=self.settings.data.gsd_m,
            linear_classes=self.settings.linear_classes,
            provenance=provenance,
        )


def train_epochs(
    settings: TrainingSettings,
    data: TrainData,
    norm: MeanStd | Percentile,
    fit: Fit,
    state: Progress,
    folder: RunFolder,
    *,
    show: bool = False,
    on_epoch: EpochCallback | None = None,
) -> None:
    """Each remaining epoch: train it, validate, save, report (log line, ``on_epoch``)."""
    names = settings.class_names
    loader = BatchLoader(settings, data, norm)
    bar = tqdm(
        total=max(settings.optim.epochs - state.epoch, 0) * fit.steps_per_epoch,
        disable=not show,
        unit="step",
        dynamic_ncols=True,
        desc="training",
    )
    elapsed_before, run_t0 = state.elapsed_s, time.perf_counter()
    note = ""
    try:
        for epoch in range(state.epoch, settings.optim.epochs):
            te = time.perf_counter()
            train_loss, lr = train_epoch(fit, loader, epoch, state, settings.optim, bar, note)
            tv = time.perf_counter()
            val = validate(
                fit.evaluated,
                data.scenes,
                data.tiles,
                data.bands,
                norm,
                settings,
                device=fit.device,
                dtype=fit.dtype,
                loss_fn=fit.loss_fn,
            )
            val_time = time.perf_counter() - tv
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": state.step,
                "lr": lr,
                "train_loss": train_loss,
                **val,
                "train_time_s": tv - te,
                "val_time_s": val_time,
                "epoch_time_s": time.perf_counter() - te,
                "elapsed_s": elapsed_before + (time.perf_counter() - run_t0),
            }
            improved = folder.save_epoch(fit, state, row)
            note = f" | val {state.metric} {row.get(state.metric, math.nan):.3f}"
            line = format_row(row, names) + ("  *best*" if improved else "")
            if show:
                bar.write(line)
            log.info(line)
            if on_epoch is not None:
                on_epoch(row)
    finally:
        bar.close()
        loader.close()


# -- 7. thresholds --------------------------------------------------------------------------


def calibrate_best(
    best: Path,
    settings: TrainingSettings,
    data: TrainData,
    norm: MeanStd | Percentile,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Choose each class's threshold among ``validation.calibrate`` on the validation tiles with
    the best checkpoint, and store them in it (its provenance records every candidate's score).
    The tensors, and so the checkpoint's hash, do not change. Returns the thresholds.

    Raises:
        OutputError: the checkpoint cannot be rewritten (the previous file stays intact).
    """
    model = load_checkpoint(best).to(device)
    thresholds, record = calibrate_thresholds(
        model, data.scenes, data.tiles, data.bands, norm, settings, device=device, dtype=dtype
    )
    log.info("thresholds chosen on the validation tiles: %s (%s)", thresholds, record.get("scores", record))
    provenance = {**(model.metadata or {}).get("provenance", {}), "threshold_calibration": record}
    save_checkpoint(model.cpu(), best, thresholds=thresholds, provenance=provenance)
    return thresholds


# -- 8. finish -------------------------------------------------------------------------------


def finish(out: Path, settings: TrainingSettings, state: Progress, t0: float) -> TrainResult:
    """Export the best checkpoint if ``output.export`` asks, and describe the run.

    Raises:
        ConfigError: no epoch was trained.
        GeounetError: no best checkpoint (every validation metric was NaN).
        OutputError: the export cannot be written.
    """
    if not state.history:
        raise ConfigError(f"{settings.source}: no epoch was trained (optim.epochs = {settings.optim.epochs})")
    if not (out / BEST).exists():
        raise GeounetError(f"no best checkpoint in {out}; every validation metric was NaN")
    best_row = next((r for r in state.history if r["epoch"] == state.best_epoch), state.history[-1])
    exported = export_best(out / BEST, settings.output.export)
    return TrainResult(
        out_dir=out,
        best_checkpoint=out / BEST,
        last_checkpoint=out / LAST,
        best_epoch=state.best_epoch,
        metric=state.metric,
        best_value=float(state.best_value) if state.best_value is not None else math.nan,
        metrics=best_row,
        history=state.history,
        epochs=state.history[-1]["epoch"],
        wall_time_s=time.perf_counter() - t0,
        exported=exported,
    )


def export_best(best: Path, dest: str | Path | None) -> Path | None:
    """Copy ``best`` to ``dest`` (``output.export``) atomically; None when not asked.

    Raises:
        OutputError: the folder or the file cannot be written (named).
    """
    if not dest:
        return None
    exported = Path(dest)
    try:
        exported.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exported, exc)) from None
    write_bytes(exported, best.read_bytes(), durable=True)
    return exported
