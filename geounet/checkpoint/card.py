"""The model card: everything about a checkpoint a person wants to see.

:func:`model_card` gathers it as a JSON-compatible dict (``geounet info --json`` prints it
whole). :func:`provenance_summary` turns the training provenance, which for a model trained
by :mod:`geounet.train` holds the full settings and a record of every training scene
(several thousand characters), into a few short labelled lines for the text card: date,
epochs, validation metrics, sources, pixel size, settings file, run and software. Both are
pure functions of the checkpoint's metadata; rendering them is the command's job.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from geounet.checkpoint.io import load_checkpoint

__all__ = ["model_card", "provenance_summary", "shorten"]

# Provenance keys that may record the ground sample distance (a pixel's side on the ground).
_PIXEL_KEYS = (
    "gsd",
    "gsd_m",
    "ground_sample_distance",
    "pixel_size",
    "pixel_size_m",
    "resolution",
    "resolution_m",
)

# Keys of a validation row that are shown, by suffix, after the best-model metric and val_loss.
_METRIC_SUFFIXES = ("_iou", "_f1")

# Short facts gathered on one line each: (label, ((key, format), ...)).
_GROUPS = (
    ("run", (("seed", "seed {}"), ("device", "device {}"), ("precision", "precision {}"))),
    (
        "areas",
        (("train_area_px", "train {} px"), ("val_area_px", "validation {} px"), ("val_tiles", "{} validation tiles")),
    ),
    (
        "software",
        (
            ("trainer", "{}"),
            ("geounet_version", "geounet {}"),
            ("torch_version", "torch {}"),
            ("python", "python {}"),
            ("git_commit", "commit {}"),
        ),
    ),
)


def model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything about a checkpoint a person wants to see, as a JSON-compatible dict.

    Loads the checkpoint with every check of :func:`~geounet.checkpoint.io.load_checkpoint`
    (one read of the file, the model built on the CPU), so a card is also proof that the
    file is intact. Returns the metadata (``CheckpointMetadata.to_dict``) plus ``path``,
    ``parameters`` (trainable and frozen parameters, buffers excluded) and ``out_channels``.

    Raises:
        CheckpointError: as ``load_checkpoint``.
    """
    model = load_checkpoint(path)
    card: dict[str, Any] = {"path": str(path)}
    card.update(model.metadata)
    card["parameters"] = sum(p.numel() for p in model.parameters())
    card["out_channels"] = model.spec.out_channels
    return card


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis when longer."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def provenance_summary(
    provenance: Mapping[str, Any], *, width: int = 100, max_sources: int = 5
) -> list[tuple[str, str]]:
    """Short ``(label, text)`` lines describing how a model was trained.

    Known keys (those :mod:`geounet.train` writes) become dedicated lines, in this order:
    ``date``; ``epochs`` with the training time and the checkpoint resumed from; the
    ``validation`` metrics of the saved epoch, the best-model metric first; the training
    ``sources``, one line per scene up to ``max_sources`` (continuation lines have an empty
    label); the ``pixel size`` if recorded; the ``settings`` file; the checkpoint the run
    ``started from`` (``model.init``); the ``run`` (seed,
    device, precision); the ``areas`` trained and validated on; the ``software``. Every
    other key follows under its own name, its value in compact JSON. A value of the wrong
    type for its known key is shown as any other key. Each text is one line of at most
    ``width`` characters (longer ones end in "…"); ``geounet info --json`` has the full
    record. Costs one pass over the record.
    """
    prov = dict(provenance)
    rows: list[tuple[str, str]] = []

    def add(label: str, text: str) -> None:
        rows.append((label, shorten(text, width)))

    if "date" in prov:
        add("date", _brief(prov.pop("date")))
    if "epochs" in prov:
        add("epochs", _epochs(prov))
    if isinstance(prov.get("metrics"), Mapping):
        best = prov.pop("best_metric") if isinstance(prov.get("best_metric"), str) else None
        add("validation", _metrics(prov.pop("metrics"), best))
    data = prov.get("data")
    if isinstance(data, list) and data and all(isinstance(d, Mapping) for d in data):
        del prov["data"]
        add("sources", _roles(data))
        data = [d for d in data if "source" in d] + [d for d in data if "source" not in d]  # terms first
        for record in data[:max_sources]:
            scene, labels = _source(record)
            add("", scene)
            if labels:
                rows.append(("", "  " + shorten(labels, width - 2)))
        if len(data) > max_sources:
            add("", f"… and {len(data) - max_sources} more (geounet info --json lists them all)")
    for key in _PIXEL_KEYS:
        if key in prov:
            unit = " m" if key.endswith("_m") and _is_number(prov[key]) else ""
            add("pixel size", f"{_brief(prov.pop(key))}{unit}")
    if isinstance(prov.get("config"), Mapping) or isinstance(prov.get("config_file"), str):
        has_settings = isinstance(prov.get("config"), Mapping)
        if has_settings:
            del prov["config"]
        text = prov.pop("config_file", None) or "(not read from a file)"
        add("settings", f"{_brief(text)}{' (all settings: geounet info --json)' if has_settings else ''}")
    start = prov.get("initialized_from")
    if isinstance(start, Mapping) and isinstance(start.get("checkpoint"), str) and isinstance(start.get("hash"), str):
        del prov["initialized_from"]
        wider = start.get("widened_from_width")  # its tensors fill the first channels of a wider model
        widened = isinstance(wider, int)
        copied = "original channels copied" if widened else "all tensors copied"
        head = "output layer started afresh" if start.get("fresh") else copied
        if widened:
            head += f", widened from width {wider}"
        name = start["model"] if isinstance(start.get("model"), str) else start["checkpoint"]
        add("started from", f"{_tail(name, width - 40)} (hash {start['hash'][:12]}; {head})")
    for label, fields in _GROUPS:
        parts = [fmt.format(_fact(key, prov.pop(key))) for key, fmt in fields if _is_scalar(prov.get(key))]
        if parts:
            add(label, ", ".join(parts))
    for key, value in prov.items():
        add(str(key), _brief(value))
    return rows


def _epochs(prov: dict[str, Any]) -> str:
    """``3 (1 h 02 min of training; resumed from …)``; pops the keys it uses."""
    text = _brief(prov.pop("epochs"))
    notes = []
    if _is_number(prov.get("training_time_s")):
        notes.append(f"{_duration(prov.pop('training_time_s'))} of training")
    if "resumed_from" in prov and (prov["resumed_from"] is None or isinstance(prov["resumed_from"], str)):
        resumed = prov.pop("resumed_from")
        if resumed:
            notes.append(f"resumed from {resumed}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _metrics(row: Mapping[str, Any], best: str | None) -> str:
    """The saved epoch's validation row: the best-model metric, val_loss, then IoUs and F1s."""
    keys = list(dict.fromkeys(k for k in (best, "val_loss", "mean_iou") if k is not None and k in row))
    keys += [k for k in row if isinstance(k, str) and k.endswith(_METRIC_SUFFIXES) and k not in keys]
    parts = [f"{k} {_number(row[k])}" + (" (selects the best model)" if k == best else "") for k in keys]
    epoch = row.get("epoch")
    return (f"epoch {epoch}: " if _is_scalar(epoch) else "") + (", ".join(parts) or "(no metrics)")


def _roles(data: Sequence[Mapping[str, Any]]) -> str:
    """``30 scenes (train 24, val 6)``, ``4 sources, 424 images`` for image sources, or both
    (``7 sources, 424 images; 4 scenes (train 4)``)."""
    sources = [d for d in data if "source" in d]
    scenes = [d for d in data if "source" not in d]
    parts = []
    if sources:
        images = sum(int(d["images"]) for d in sources if _is_number(d.get("images")))
        parts.append(f"{len(sources)} source{'s' * (len(sources) != 1)}, {images:,} images")
    if scenes:
        roles = Counter(str(d.get("role", "?")) for d in scenes)
        parts.append(
            f"{len(scenes)} scene{'s' * (len(scenes) != 1)} (" + ", ".join(f"{r} {n}" for r, n in roles.items()) + ")"
        )
    return "; ".join(parts)


def _source(record: Mapping[str, Any]) -> tuple[str, str]:
    """One training scene: its image, role, size, CRS, dtype and pixel size; and each
    class's label files and feature count ('' when the record has none). For an image
    source: its name, images, areas by role, pixel sizes and labelled classes; and its terms
    and attribution."""
    if "source" in record:
        facts = [f"{_brief(record.get('images', '?'))} images"]
        if _is_number(record.get("mosaics")):
            joined = int(record["mosaics"])
            facts[0] += f" ({joined} mosaic{'s' * (joined != 1)} of touching chips)"
        areas = record.get("areas")
        if isinstance(areas, Mapping):
            facts += [f"{role} {_brief(names)}" for role, names in areas.items() if names]
        gsd = record.get("gsd_m")
        if isinstance(gsd, list) and len(gsd) == 2:
            known = "" if record.get("gsd_known", True) else " (not documented: assumed)"
            facts.append(f"{gsd[0]}-{gsd[1]} m{known}" if gsd[0] != gsd[1] else f"{gsd[0]} m{known}")
        if isinstance(record.get("labelled"), list):
            facts.append("labels " + _brief(record["labelled"]))
        terms = [f"{k} {record[k]}" for k in ("terms", "attribution") if isinstance(record.get(k), str)]
        return f"{record['source']}: {', '.join(facts)}", "; ".join(terms)
    facts = [str(record[k]) for k in ("role",) if _is_scalar(record.get(k))]
    size = record.get("size")
    if isinstance(size, list) and len(size) == 2:
        facts.append(f"{size[0]}x{size[1]} px")
    facts += [str(record[k]) for k in ("crs", "dtype") if _is_scalar(record.get(k))]
    facts += [f"{_brief(record[k])} px size" for k in _PIXEL_KEYS if k in record]
    labels, features = record.get("labels"), record.get("features")
    classes = []
    if isinstance(labels, Mapping):
        for name, files in labels.items():
            files = files if isinstance(files, list) else [files]
            n = features.get(name) if isinstance(features, Mapping) else None
            count = f" ({n:,} features)" if isinstance(n, int) else ""
            classes.append(f"{name} from {', '.join(_tail(str(f), 50) for f in files)}{count}")
    return f"{_tail(str(record.get('image', '?')), 60)}: {', '.join(facts)}", "; ".join(classes)


def _brief(value: Any) -> str:
    """Strings as they are, lists of scalars comma-separated, anything else compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        return ", ".join(_brief(v) for v in value)
    return json.dumps(value, separators=(", ", ": "), default=str)


def _number(value: Any) -> str:
    """Metric values with four significant digits; None (not finite when saved) as n/a."""
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else _brief(value)


def _fact(key: str, value: Any) -> str:
    """A short fact: areas with thousands separators, a commit by its first 12 hex digits."""
    if key.endswith("_px") and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if key == "git_commit" and isinstance(value, str):
        return value[:12] + ("+dirty" if value.endswith("+dirty") else "")
    return _brief(value)


def _duration(seconds: float) -> str:
    """``42.0 s``, ``12 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _tail(text: str, width: int) -> str:
    """The end of a long path (its file name matters most), with a leading ellipsis."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))
