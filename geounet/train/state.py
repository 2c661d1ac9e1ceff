"""Where a training run stands, and the state sidecar that lets ``--resume`` continue it.

:class:`Progress` is the run's position after its last completed epoch: epochs and
optimizer steps done, every epoch's log row, the best epoch so far. After each epoch it is
saved beside ``last.safetensors`` with the optimizer's state, nothing pickled:

* ``last.state.safetensors`` — the optimizer's tensors (AdamW moments) and, with
  ``optim.ema``, the weight average (``ema.<name>``), written first;
* ``last.state.json`` — the progress, the schedule, the optimizer's JSON part and the
  content hash of the checkpoint it belongs to, written last.

Both go through :func:`geounet.atomic.write_bytes` (a temporary name, then ``os.replace``,
the folder fsynced as for checkpoints), so an interrupted or failed write leaves the
previous file of that name and raises :class:`~geounet.errors.OutputError` naming the file.
:func:`read_state` refuses a sidecar whose checkpoint hash is not that of the weights beside
it, so a half-updated pair (new tensors, old JSON) is never resumed from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save as serialize_tensors

from geounet.atomic import write_bytes, write_json
from geounet.checkpoint import read_metadata
from geounet.errors import CheckpointError

STATE_FORMAT = "geounet.train-state"
STATE_VERSION = 1


def is_better(value: float | None, best: float | None, metric: str) -> bool:
    """True when ``value`` beats ``best`` (lower for val_loss, higher otherwise; NaN never wins)."""
    if value is None or math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value < best if metric == "val_loss" else value > best


@dataclass
class Progress:
    """A run's position after its last completed epoch.

    Attributes:
        metric: the validation metric that chooses the best epoch (``validation.best_metric``).
        epoch: epochs completed (1-based number of the last one; 0 before the first).
        step: optimizer steps taken.
        history: every completed epoch's log row, oldest first.
        best_value: the best epoch's ``metric``; None until an epoch sets it.
        best_epoch: 1-based epoch of ``best.safetensors``; 0 for none.
        elapsed_s: training seconds of earlier calls (a resumed run adds its own).
    """

    metric: str
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    elapsed_s: float = 0.0

    @classmethod
    def from_record(cls, record: dict[str, Any], metric: str, *, best_exists: bool) -> Progress:
        """The progress a state sidecar recorded. The best is forgotten (the next epoch sets it)
        when it was chosen by another metric or its checkpoint is not in the output folder."""
        best = record.get("best", {})
        progress = cls(
            metric=metric,
            epoch=int(record["epoch"]),
            step=int(record["step"]),
            history=list(record.get("history", [])),
            best_value=best.get("value"),
            best_epoch=int(best.get("epoch", 0)),
            elapsed_s=float(record.get("elapsed_s", 0.0)),
        )
        if best.get("metric") not in (None, metric) or not best_exists:
            progress.best_value, progress.best_epoch = None, 0
        return progress

    def record(self, row: dict[str, Any]) -> bool:
        """Add a completed epoch's log row; True when it is the new best by :attr:`metric`."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        self.step = int(row["step"])
        self.elapsed_s = float(row["elapsed_s"])
        value = row.get(self.metric, math.nan)
        if not is_better(value, self.best_value, self.metric):
            return False
        self.best_value, self.best_epoch = value, self.epoch
        return True

    def to_record(self) -> dict[str, Any]:
        """The JSON part of the sidecar that :meth:`from_record` reads back."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "history": self.history,
            "best": {"metric": self.metric, "value": self.best_value, "epoch": self.best_epoch},
        }


def state_paths(checkpoint: Path) -> tuple[Path, Path]:
    """``(json, safetensors)`` sidecar paths of a checkpoint: ``<stem>.state.json``, ``<stem>.state.safetensors``."""
    stem = checkpoint.name[: -len(".safetensors")] if checkpoint.name.endswith(".safetensors") else checkpoint.stem
    return checkpoint.with_name(f"{stem}.state.json"), checkpoint.with_name(f"{stem}.state.safetensors")


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
    """Inverse of :func:`optimizer_state` (other tensors of the sidecar, such as ``ema.*``, are left alone)."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    groups = [
        {**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g for g in meta["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_state(
    checkpoint: Path, opt: torch.optim.Optimizer, info: dict[str, Any], extra: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the training-state sidecar of ``checkpoint``: tensors first, JSON (``info`` and
    the optimizer's JSON part) last, each atomically. Costs one serialized copy of the
    optimizer's tensors in memory (about twice the model's weights for AdamW). ``extra``
    tensors (the weight average, ``ema.<name>``) are stored beside the optimizer's.

    Raises:
        OutputError: a file cannot be written (names it; the previous one is unchanged).
    """
    jpath, tpath = state_paths(checkpoint)
    tensors, meta = optimizer_state(opt)
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    write_bytes(tpath, serialize_tensors(tensors), durable=True)
    doc = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **info, "optimizer": meta}
    write_json(doc, jpath)


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
    found = info.get("format") if isinstance(info, dict) else f"a JSON {type(info).__name__}"
    if found != STATE_FORMAT:
        raise CheckpointError(jpath, f"is not a geounet training state (format {found!r}, expected {STATE_FORMAT!r})")
    meta = read_metadata(checkpoint)
    if info.get("checkpoint_hash") != meta.hash:
        raise CheckpointError(
            checkpoint,
            f"its weights (hash {meta.short_hash}) are not those the training state {jpath.name} was saved "
            "with; the two files come from different epochs or runs",
        )
    try:
        tensors = load_tensors(str(tpath))
    except Exception as exc:
        raise CheckpointError(tpath, f"cannot be read as safetensors: {exc}") from None
    return info, tensors
