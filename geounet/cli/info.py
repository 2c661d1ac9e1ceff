"""``geounet info``: print a checkpoint's model card."""

from __future__ import annotations

import json
from typing import Any

import click

from geounet.checkpoint.card import model_card, provenance_summary
from geounet.weights import resolve_model_name


def format_count(n: int) -> str:
    """``31037633`` -> ``31.04 M``; ``7549`` -> ``7.55 k``; small counts as they are."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _normalization(norm: dict[str, Any]) -> str:
    if norm["kind"] == "meanstd":
        return f"meanstd: (x - mean) / std, mean {_numbers(norm['mean'])}, std {_numbers(norm['std'])}"
    return (
        f"percentile: clip((x - low) / (high - low), 0, 1), low {_numbers(norm['low'])}, high {_numbers(norm['high'])}"
    )


def _mapping(d: dict[str, Any]) -> str:
    if not d:
        return "(none)"
    return ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in d.items())


def _pixel_size(gsd_m: float | None) -> str:
    if gsd_m is None:
        return "not recorded (scenes are read at their own pixel size)"
    return f"{gsd_m:g} m (each scene is read resampled to it; --gsd overrides a scene's own)"


def _heldout(block: Any) -> list[tuple[str, str]]:
    """Rows for an ``extra.heldout`` record: one line per held-out area and the average."""
    if not isinstance(block, dict) or not isinstance(block.get("areas"), list):
        return []
    rows = [("held-out", str(block.get("note", "accuracy on areas never trained on")))]
    for area in block["areas"]:
        if isinstance(area, dict):
            parts = [f"{k} {v:.3g}" for k, v in area.items() if isinstance(v, float)]
            rows.append(("", f"{area.get('area', '?')}: {', '.join(parts)}"))
    return rows


def render_card(card: dict[str, Any]) -> str:
    """The text form of :func:`geounet.checkpoint.model_card`, one labelled line per fact.

    The training provenance is shown as the short lines of
    :func:`~geounet.checkpoint.card.provenance_summary`, indented under ``provenance``.
    """
    spec = card["spec"]
    options = f", options {_mapping(spec['options'])}" if spec.get("options") else ""
    mode_note = {
        "binary": "sigmoid",
        "multilabel": "independent sigmoids",
        "multiclass": "softmax, channel 0 is background",
    }[spec["mode"]]
    channels = card["out_channels"]
    rows = [
        ("checkpoint", card["path"]),
        ("hash", f"{card['hash'][:12]} (sha256 {card['hash']})"),
        ("architecture", f"{spec['arch']} (width {spec['width']}, depth {spec['depth']}{options})"),
        ("parameters", f"{format_count(card['parameters'])} ({card['parameters']:,})"),
        ("input bands", ", ".join(str(b) for b in card["bands"]) + " (1-based scene bands, in model order)"),
        ("normalization", _normalization(card["normalization"])),
        ("classes", ", ".join(spec["classes"])),
        ("output mode", f"{spec['mode']} ({mode_note}; {channels} output channel{'s' * (channels != 1)})"),
        ("thresholds", ", ".join(f"{k}={v:g}" for k, v in card["thresholds"].items())),
        ("pixel size", _pixel_size(card.get("gsd_m"))),
        ("receptive field", f"radius {card['receptive_field_radius']} px"),
        ("tile / halo", f"{card['tile_size']} px / {card['halo']} px (suggested)"),
    ]
    summary = provenance_summary(card["provenance"])
    rows.append(("provenance", "" if summary else "(none)"))
    rows += [(f"  {label}" if label else "", text) for label, text in summary]
    extra = dict(card.get("extra") or {})
    rows += _heldout(extra.pop("heldout", None))
    if extra:
        rows.append(("extra", _mapping(extra)))
    rows.append(("format", f"{card['format']} v{card['format_version']}, geounet {card['geounet_version']}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows)


@click.command("info")
@click.argument("checkpoint")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the card as one JSON object (the checkpoint's metadata plus path, parameters "
    "and out_channels) instead of text, for scripts.",
)
def command(checkpoint: str, as_json: bool) -> None:
    """Show the model card of CHECKPOINT (a .safetensors file written by geounet, or the
    name of a shipped model such as 'default').

    Prints the architecture, parameter count, input bands and their normalization, classes
    and output mode, receptive field, suggested tile size and halo, per-class thresholds,
    a summary of the training provenance (date, epochs, validation metrics, sources; long
    values cut with "…") and the content hash. --json gives the full provenance. The file is
    fully verified on the way (header, metadata, tensor shapes, content hash, finite weights);
    pickled .pt/.pth files are refused, never loaded.

    Exit codes: 0 success, 2 the checkpoint is missing, unsafe or invalid.
    """
    card = model_card(resolve_model_name(checkpoint))
    if as_json:
        click.echo(json.dumps(card, indent=2, sort_keys=True))
    else:
        click.echo(render_card(card))
