"""A scene's output folder: every file name, scene.json, is-complete and clear.

Every name a scene folder can hold is spelled here and nowhere else; the pipeline, the
writers, evaluation (which finds predictions by these names) and the demo import them.
``scene.json`` is written last and, with every output it lists at the size it records, is the
proof that a scene is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geounet.atomic import NO_ROOM_ERRNOS, os_error_cause, partial_name, remove_partials
from geounet.errors import OutputError
from geounet.settings import ALL_FORMATS

SCENE_JSON = "scene.json"  # the scene's record, written last: it lists the outputs and their sizes
GPKG_NAME = "polygons.gpkg"  # every class as a layer, scene CRS
PROBABILITY_NAME = "probability.tif"  # COG, one uint8 band per class (p x 255)
QUICKLOOK_NAME = "quicklook.png"  # downsampled picture with the outlines
ITEM_NAME = "item.json"  # the scene's outputs as a STAC Item (label extension), written before scene.json
CATALOG_NAME = "catalog.json"  # OUT/catalog.json: a self-contained STAC Catalog of the run's scene items
RUN_JSON = "run.json"  # OUT/run.json: the run's record, one entry per scene
LOG_NAME = "geounet.log"  # OUT/geounet.log: the run's log
LOCK_NAME = ".geounet.lock"  # OUT/.geounet.lock: held (flock) while a run writes to OUT
RUN_FILES = (RUN_JSON, LOG_NAME, LOCK_NAME, CATALOG_NAME)  # no scene folder may take one of these names
FORMATS = ALL_FORMATS  # every output format a scene folder can hold
NO_RECORD = "no scene.json"  # why_incomplete's reason for a scene never finished


def plural(class_name: str) -> str:
    """File/layer name for a class: ``building`` -> ``buildings``; ``roads`` stays."""
    return class_name if class_name.endswith("s") else f"{class_name}s"


def geojson_name(class_name: str) -> str:
    """``building`` -> ``buildings.geojson`` (RFC 7946, one file per class)."""
    return f"{plural(class_name)}.geojson"


def centerline_layer(class_name: str) -> str:
    """Layer (and GeoJSON stem) of a linear class's centerlines: ``road`` -> ``road_centerlines``."""
    return f"{class_name}_centerlines"


def node_layer(class_name: str) -> str:
    """GeoPackage layer of a linear class's graph nodes: ``road`` -> ``road_nodes``."""
    return f"{class_name}_nodes"


RAW_SUFFIX = "_raw"  # GeoPackage layer of a regularized class's pixel outlines: buildings_raw


def raw_layer(class_name: str) -> str:
    """GeoPackage layer of a regularized class's pixel outlines: ``building`` -> ``buildings_raw``."""
    return f"{plural(class_name)}{RAW_SUFFIX}"


def is_raw_layer(name: str) -> bool:
    """Whether a layer holds pixel outlines (:func:`raw_layer`): in the GeoPackage only."""
    return name.endswith(RAW_SUFFIX)


def output_names(class_names: Sequence[str], formats: Sequence[str], linear: Sequence[str] = ()) -> list[str]:
    """File names a finished scene folder holds besides scene.json (``linear``: the classes
    traced as centerline graphs, which get a GeoJSON of their centerlines)."""
    names = []
    if "geojson" in formats:
        names += [geojson_name(c) for c in class_names]
        names += [geojson_name(centerline_layer(c)) for c in linear]
    if "gpkg" in formats:
        names.append(GPKG_NAME)
    if "probability" in formats:
        names.append(PROBABILITY_NAME)
    if "quicklook" in formats:
        names.append(QUICKLOOK_NAME)
    if "stac" in formats:
        names.append(ITEM_NAME)
    return names


def read_scene_record(folder: Path) -> dict[str, Any] | None:
    """The scene's ``scene.json`` if present and parseable, else None."""
    try:
        record = json.loads((folder / SCENE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def holds_scene_record(folder: Path) -> bool:
    """True when ``folder`` holds a geounet ``scene.json`` (a scene's output folder)."""
    rec = read_scene_record(folder)
    return rec is not None and "input_fingerprint" in rec and "stem" in rec


def output_sizes(folder: Path, names: Sequence[str]) -> dict[str, int]:
    """``{name: size in bytes}`` of the finished output files ``names`` in ``folder``, for
    scene.json (resume checks them against the files).

    Raises:
        OutputError: a file that was just written is gone.
    """
    sizes = {}
    for name in names:
        try:
            sizes[name] = (folder / name).stat().st_size
        except OSError as exc:
            raise OutputError(f"cannot read the size of {folder / name}, just written: {exc.strerror or exc}") from None
    return sizes


def why_incomplete(
    folder: Path, *, input_fingerprint: str, model_fingerprint: str, config_hash: str, outputs: Sequence[str]
) -> str | None:
    """None when ``scene.json`` records success for the same input, model and settings and
    every output it lists (at least ``outputs``) is on disk with the size it records; else
    why the scene must be computed again. Costs one small read and a ``stat`` per output."""
    path = folder / SCENE_JSON
    if not path.exists():
        return NO_RECORD
    rec = read_scene_record(folder)
    if rec is None:
        return f"{path} is not a JSON object"
    if rec.get("status") != "success":
        return f"{path} records status {rec.get('status')!r}"
    if rec.get("input_fingerprint") != input_fingerprint:
        return "the scene file changed (its input fingerprint differs)"
    if rec.get("model_fingerprint") != model_fingerprint:
        return "the model changed (its weights or metadata that change outputs differ)"
    if rec.get("config_hash") != config_hash:
        return "settings that change outputs differ"
    listed = rec.get("outputs")
    if not isinstance(listed, dict) or not all(isinstance(v, int) for v in listed.values()):
        return f"{path} records no output sizes (written by an older geounet)"
    missing = [n for n in outputs if n not in listed]
    if missing:
        return f"{path} does not list {missing[0]}"
    for name, size in listed.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return f"{folder / name} is missing"
        if actual != size:
            return f"{folder / name} is {actual} bytes, scene.json records {size}"
    return None


def clear_scene_folder(folder: Path, class_names: Sequence[str]) -> None:
    """Remove scene.json first (the folder stops claiming completeness), then outputs."""
    for name in [SCENE_JSON, *output_names(class_names, FORMATS, linear=class_names)]:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    remove_partials(folder)


def unwritable_folder(out: Path, exc: OSError) -> OutputError:
    """The error for an output folder (``run`` and ``predict``'s ``--out``) that cannot take
    files: names the folder, the cause and the fix."""
    blocker = next((p for p in (out, *out.parents) if os.path.exists(p) and not os.path.isdir(p)), None)
    if blocker == out:
        return OutputError(f"output folder {out} is a file, not a folder; choose a folder for --out (new or existing)")
    if blocker is not None:
        return OutputError(
            f"output folder {out} is not writable: {blocker} is a file, not a folder; choose another --out"
        )
    cause, fix = os_error_cause(exc, elsewhere="another --out")
    if exc.errno not in NO_ROOM_ERRNOS:
        cause = exc.strerror or str(exc)  # the system's words: "Read-only file system", "Permission denied"
    return OutputError(f"output folder {out} is not writable: {cause}; {fix}")


def check_writable(out: Path) -> None:
    """Fail before computing when the output folder cannot take files. The probe file is removed
    however the check ends (a full disk takes the file's name but not its bytes)."""
    probe = partial_name(out / "write-probe")
    try:
        out.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as exc:
        raise unwritable_folder(out, exc) from None
