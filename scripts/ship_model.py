"""Turn a trained checkpoint into a shipped one (``geounet/weights/<name>.safetensors``).

    python scripts/ship_model.py out/train-real-mosaic/best.safetensors geounet/weights/default.safetensors \\
        --config workflows/train-real-mosaic.yaml --heldout benchmarks/results/heldout/default.json --half

Steps: load the checkpoint (every check of ``load_checkpoint``) -> add each training
source's ``terms`` and ``attribution`` from the config to the provenance (so a checkpoint
trained before those keys existed still names them) -> name a shipped ``model.init``
checkpoint by its name and repository path, and record the checkpoint's own architecture in
the config's ``model`` section -> add the held-out accuracy per area
from a ``benchmarks/bench_heldout.py`` result under ``extra.heldout`` (``geounet info`` shows
it) -> store the weights in half precision if asked (half the file; they load as float32) ->
write atomically. The content hash is that of the stored tensors.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from geounet.checkpoint import load_checkpoint, save_checkpoint
from geounet.train.config import load_training_settings
from geounet.weights import shipped_models


def heldout_block(path: Path) -> dict[str, Any]:
    """The per-area rows of a held-out result, as short float fields."""
    result = json.loads(path.read_text())
    keep = {
        "building_f1": "building_f1",
        "building_pixel_iou": "building_iou",
        "road_pixel_iou": "road_iou",
        "road_apls": "road_apls",
    }
    areas = []
    for row in result.get("areas", []):
        entry: dict[str, Any] = {"area": row.get("area")}
        scores = row.get("scores") or {}
        for key, name in keep.items():
            value = scores.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                entry[name] = float(value)
        areas.append(entry)
    note = result.get("note") or "accuracy on areas never trained on (benchmarks/RESULTS.md)"
    return {"note": note, "areas": areas, "measured": result.get("date")}


def portable_start(provenance: dict[str, Any], spec: Any) -> dict[str, Any]:
    """Provenance fixes for a shipped file: a ``model.init`` checkpoint that is a shipped model
    named by that name and its path in the repository (not the training machine's absolute
    path), and the recorded config's ``model`` section set to the architecture the checkpoint
    holds (a warm-started run took it from its init checkpoint)."""
    fixes: dict[str, Any] = {}
    start = provenance.get("initialized_from")
    if isinstance(start, dict) and isinstance(start.get("checkpoint"), str):
        shipped = {path.resolve(): name for name, path in shipped_models().items()}
        name = shipped.get(Path(start["checkpoint"]).resolve())
        if name is not None:
            fixes["initialized_from"] = {**start, "model": name, "checkpoint": f"geounet/weights/{name}.safetensors"}
    config = provenance.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):
        arch = {"arch": spec.arch, "width": spec.width, "depth": spec.depth, "options": dict(spec.options)}
        fixes["config"] = {**config, "model": {**config["model"], **arch}}
    return fixes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--config", type=Path, required=True, help="the training config (sources' terms)")
    ap.add_argument("--heldout", type=Path, help="a bench_heldout.py result JSON")
    ap.add_argument("--half", action="store_true", help="store the weights as float16")
    args = ap.parse_args()

    model = load_checkpoint(args.checkpoint)
    meta = dict(model.metadata)
    provenance = dict(meta.get("provenance") or {})
    settings = load_training_settings(args.config)
    declared = {s.name: s for s in settings.data.sources}
    data = []
    for record in provenance.get("data", []):
        src = declared.get(record.get("source", ""))
        if src is not None:
            record = {**record, "terms": src.terms, "attribution": src.attribution}
        data.append(record)
    provenance["data"] = data
    provenance.update(portable_start(provenance, model.spec))
    extra: dict[str, Any] = {}
    if args.heldout is not None:
        extra["heldout"] = heldout_block(args.heldout)
    if args.half:
        model = model.half()
        extra["stored_as"] = "float16 (loads as float32)"
    digest = save_checkpoint(model, args.dest, provenance=provenance, **extra)
    print(f"{args.dest}: {args.dest.stat().st_size:,} bytes, hash {digest[:12]}")


if __name__ == "__main__":
    main()
