"""A scene's output folder: every file name, scene.json, is-complete and clear.

Every name a scene folder can hold is spelled here and nowhere else; the pipeline, the
writers, evaluation (which finds predictions by these names) and the demo import them.
``scene.json`` is written last and is the proof that a scene is complete.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geounet.atomic import partial_name, remove_partials
from geounet.errors import OutputError
from geounet.settings import ALL_FORMATS

SCENE_JSON = "scene.json"  # the scene's record, written last: its presence means complete
GPKG_NAME = "polygons.gpkg"  # every class as a layer, scene CRS
PROBABILITY_NAME = "probability.tif"  # COG, one uint8 band per class (p x 255)
QUICKLOOK_NAME = "quicklook.png"  # downsampled picture with the outlines
RUN_JSON = "run.json"  # OUT/run.json: the run's record, one entry per scene
LOG_NAME = "geounet.log"  # OUT/geounet.log: the run's log
LOCK_NAME = ".geounet.lock"  # OUT/.geounet.lock: held (flock) while a run writes to OUT
RUN_FILES = (RUN_JSON, LOG_NAME, LOCK_NAME)  # no scene folder may take one of these names
FORMATS = ALL_FORMATS  # every output format a scene folder can hold


def plural(class_name: str) -> str:
    """File/layer name for a class: ``building`` -> ``buildings``; ``roads`` stays."""
    return class_name if class_name.endswith("s") else f"{class_name}s"


def geojson_name(class_name: str) -> str:
    """``building`` -> ``buildings.geojson`` (RFC 7946, one file per class)."""
    return f"{plural(class_name)}.geojson"


def output_names(class_names: Sequence[str], formats: Sequence[str]) -> list[str]:
    """File names a finished scene folder holds besides scene.json."""
    names = []
    if "geojson" in formats:
        names += [geojson_name(c) for c in class_names]
    if "gpkg" in formats:
        names.append(GPKG_NAME)
    if "probability" in formats:
        names.append(PROBABILITY_NAME)
    if "quicklook" in formats:
        names.append(QUICKLOOK_NAME)
    return names


def read_scene_record(folder: Path) -> dict[str, Any] | None:
    """The scene's ``scene.json`` if present and parseable, else None."""
    try:
        record = json.loads((folder / SCENE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_complete(folder: Path, *, input_fingerprint: str, model_hash: str, config_hash: str) -> bool:
    """True when ``scene.json`` records success for the same input, model and settings."""
    rec = read_scene_record(folder)
    return bool(
        rec
        and rec.get("status") == "success"
        and rec.get("input_fingerprint") == input_fingerprint
        and rec.get("model_hash") == model_hash
        and rec.get("config_hash") == config_hash
    )


def clear_scene_folder(folder: Path, class_names: Sequence[str]) -> None:
    """Remove scene.json first (the folder stops claiming completeness), then outputs."""
    for name in [SCENE_JSON, *output_names(class_names, FORMATS)]:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    remove_partials(folder)


def check_writable(out: Path) -> None:
    """Fail before computing when the output folder cannot take files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = partial_name(out / "write-probe")
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output folder {out} is not writable: {exc.strerror or exc}") from None
