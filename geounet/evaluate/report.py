"""The edge of the evaluation: typed results become a text table or a JSON file here, and
nowhere else.

:func:`format_table` prints one row per scene (and a TOTAL row); :func:`write_result_json`
writes every number as strict JSON (NaN as ``null``) through geounet's one atomic writer
(:func:`geounet.atomic.write_json`), refusing to replace a file unless told to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geounet import atomic
from geounet.errors import ConfigError
from geounet.evaluate.score import EvaluationResult, SceneFailure, SceneResult, Totals

__all__ = ["format_table", "write_result_json"]

_COLUMNS = (
    "scene",
    "TP",
    "FP",
    "FN",
    "prec",
    "recall",
    "F1",
    "mIoU",
    "merged",
    "px IoU bldg",
    "px IoU road",
    "APLS",
    "compl",
    "corr",
)


def _fmt(x: float | int | None, digits: int = 3) -> str:
    """A table cell: ``-`` for a missing or undefined (NaN) value, floats to ``digits`` decimals."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _row(r: SceneResult | SceneFailure | Totals) -> list[str]:
    if isinstance(r, SceneFailure):
        return [r.scene, "error: " + r.error[:60]] + [""] * (len(_COLUMNS) - 2)
    b, px, rd = r.buildings, r.pixels or {}, r.roads
    name = r.scene + (" (no pred)" if isinstance(r, SceneResult) and r.missing_prediction else "")
    px_b, px_r = px.get("building"), px.get("road")
    return [
        name,
        _fmt(b.tp if b else None),
        _fmt(b.fp if b else None),
        _fmt(b.fn if b else None),
        _fmt(b.precision if b else None),
        _fmt(b.recall if b else None),
        _fmt(b.f1 if b else None),
        _fmt(b.mean_iou if b else None),
        _fmt(b.merge_rate if b else None),
        _fmt(px_b.iou if px_b else None),
        _fmt(px_r.iou if px_r else None),
        _fmt(rd.apls if rd else None),
        _fmt(rd.completeness if rd else None),
        _fmt(rd.correctness if rd else None),
    ]


def format_table(result: EvaluationResult | SceneResult) -> str:
    """An aligned text table: one row per scene (and a TOTAL row when there are several).

    Columns: building TP/FP/FN, precision, recall, F1, mean IoU of matches; pixel IoU of
    buildings and roads; road APLS, completeness, correctness. ``-`` marks a value that is
    undefined or not scored. Predictions without truth are listed below the table.
    """
    rows = [list(_COLUMNS)]
    if isinstance(result, EvaluationResult):
        rows += [_row(s) for s in result.scenes]
        if len(result.scenes) != 1 or result.failed:
            rows.append(_row(result.total))
    else:
        rows.append(_row(result))
    widths = [max(len(r[i]) for r in rows if len(r) > i) for i in range(len(_COLUMNS))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = []
    if isinstance(result, EvaluationResult) and result.unmatched_predictions:
        notes.append("predictions without truth (not scored): " + ", ".join(result.unmatched_predictions))
    return "\n".join(lines + notes)


def _jsonable(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``None``, numpy scalars as Python numbers, paths as
    strings, tuples as lists: what strict JSON accepts."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_result_json(result: EvaluationResult | SceneResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``result`` as strict JSON (NaN -> ``null``), atomically (:func:`geounet.atomic.write_json`).

    An interrupted or failed write leaves the previous file as it was and no new one.

    Raises:
        ConfigError: the file exists and ``overwrite`` is false.
        OutputError: the folder cannot take the file (missing, read-only, disk full).
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} exists; pass --overwrite (overwrite=True) to replace it")
    return atomic.write_json(_jsonable(result.to_dict()), p, strict=True)
