"""Pairing prediction files with truth files, scene by scene, by file stem.

:func:`pair_scenes` understands a single truth file or a folder of them, geounet's output
layout (``OUT/<scene>/buildings.geojson``) or loose prediction files, and finds each
scene's raster; it returns :class:`ScenePair` records for the evaluation to read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from geounet.errors import ConfigError
from geounet.evaluate.vectors import PRED_FALLBACK, PRED_FILES

__all__ = ["ScenePair", "pair_scenes", "scene_stem"]

#: Vector file extensions recognised when a folder is scanned for scenes.
#: (``.json`` is left out: geounet writes ``run.json`` and ``scene.json`` next to its outputs;
#: a ``.json`` vector file can still be named explicitly.)
VECTOR_SUFFIXES = (".geojson", ".gpkg", ".shp", ".fgb", ".gml", ".kml")
#: Raster extensions tried for ``<stem>.tif`` next to the truth files.
RASTER_SUFFIXES = (".tif", ".tiff")
#: Suffixes stripped from truth file stems to get the scene stem (``<stem>_truth.gpkg``).
STEM_SUFFIXES = ("_truth", "_labels", "_road_centerlines", "_centerlines", "_buildings", "_roads")


@dataclass(frozen=True)
class ScenePair:
    """Files of one scene to evaluate: predictions, truth and (optionally) its raster."""

    name: str
    pred: tuple[Path, ...]
    truth: tuple[Path, ...]
    raster: Path | None = None


def scene_stem(path: Path) -> str:
    """The scene a file or folder belongs to: its stem without a suffix of :data:`STEM_SUFFIXES`."""
    stem = path.stem if path.is_file() or path.suffix else path.name
    for suf in STEM_SUFFIXES:
        if stem.lower().endswith(suf):
            return stem[: -len(suf)]
    return stem


def _group_files(folder: Path) -> dict[str, list[Path]]:
    """Vector files grouped by scene stem. Where a ``<stem>_truth.gpkg`` exists it holds every
    class, so the per-class copies beside it (``<stem>_buildings.geojson``...) are not read
    again: reading both would count every true object twice."""
    groups: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in VECTOR_SUFFIXES:
            groups.setdefault(scene_stem(f), []).append(f)
    for stem, files in groups.items():
        containers = [f for f in files if f.stem.endswith("_truth") and f.suffix.lower() == ".gpkg"]
        if containers:
            groups[stem] = containers
    return groups


def _is_scene_dir(p: Path) -> bool:
    """Whether ``p`` is one scene folder of geounet's output."""
    return p.is_dir() and any((p / n).exists() for n in (*PRED_FILES, PRED_FALLBACK))


def _find_raster(stem: str, folders: Iterable[Path]) -> Path | None:
    """The first ``<stem>.tif`` / ``<stem>.tiff`` in ``folders``, or ``None``."""
    for folder in folders:
        for suf in RASTER_SUFFIXES:
            cand = folder / f"{stem}{suf}"
            if cand.exists():
                return cand
    return None


def pair_scenes(
    pred: str | Path, truth: str | Path, raster: str | Path | None = None
) -> tuple[list[ScenePair], list[str]]:
    """Pair predictions with truth, by scene stem; returns the pairs and unmatched prediction stems.

    Layouts understood:

    * ``truth`` a file: one scene; ``pred`` a file or one geounet scene folder
      (``PRED/buildings.geojson``, ``roads.geojson``) or a run folder holding exactly one
      scene, or ``PRED/<stem>/`` matching the truth's stem.
    * ``truth`` a folder: files grouped by stem, where ``<stem>_truth.gpkg`` (layers
      ``buildings``, ``roads``, ``road_centerlines``), ``<stem>_buildings.geojson``,
      ``<stem>_roads.geojson``, ``<stem>_road_centerlines.geojson`` and ``<stem>.gpkg`` all
      belong to scene ``<stem>``. ``pred`` is then a geounet run folder
      ``PRED/<stem>/buildings.geojson, roads.geojson`` (or a folder of files grouped by stem
      like the truth).
    * ``raster``: a GeoTIFF (one scene only), a folder holding ``<stem>.tif``, or ``None``:
      ``<stem>.tif`` next to the truth file if present, else no raster.

    A truth scene without predictions is evaluated against empty predictions (every true
    object is missed), as SpaceNet scores a missing submission. Predictions without truth
    cannot be scored and are returned as unmatched.
    """
    pp, tp = Path(pred), Path(truth)
    rp = Path(raster) if raster is not None else None
    for label, p in (("predictions", pp), ("truth", tp), ("raster", rp)):
        if p is not None and not p.exists():
            raise ConfigError(f"{label} path {p} does not exist")
    if tp.is_file():
        stem = scene_stem(tp)
        if pp.is_file() or _is_scene_dir(pp):
            pfiles: tuple[Path, ...] = (pp,)
        elif (pp / stem).is_dir():
            pfiles = (pp / stem,)
        else:
            subs = [d for d in sorted(pp.iterdir()) if _is_scene_dir(d)]
            groups = _group_files(pp)
            if len(subs) == 1 and not groups:
                pfiles = (subs[0],)
            elif stem in groups:
                pfiles = tuple(groups[stem])
            else:
                raise ConfigError(
                    f"cannot find predictions of scene {stem!r} in {pp}: expected {pp}/{stem}/"
                    f"{PRED_FILES[0]} or a single scene folder"
                )
        single = rp if rp is not None and rp.is_file() else _find_raster(stem, [rp] if rp is not None else [tp.parent])
        return [ScenePair(stem, pfiles, (tp,), single)], []

    truth_groups = _group_files(tp)
    if not truth_groups:
        raise ConfigError(f"truth folder {tp} holds no vector files ({', '.join(VECTOR_SUFFIXES)})")
    if pp.is_file():
        raise ConfigError(f"truth {tp} is a folder of scenes, so predictions must be a folder too, not the file {pp}")
    if rp is not None and rp.is_file() and len(truth_groups) > 1:
        raise ConfigError(
            f"raster {rp} is one file but truth folder {tp} holds {len(truth_groups)} scenes; "
            "pass a folder of <scene>.tif instead"
        )
    pred_scenes: dict[str, tuple[Path, ...]] = {d.name: (d,) for d in sorted(pp.iterdir()) if _is_scene_dir(d)}
    for stem, files in _group_files(pp).items():
        pred_scenes.setdefault(stem, tuple(files))
    if _is_scene_dir(pp) and len(truth_groups) == 1:
        pred_scenes.setdefault(next(iter(truth_groups)), (pp,))
    pairs: list[ScenePair] = []
    for stem, tfiles in truth_groups.items():
        if rp is not None and rp.is_file():
            ras: Path | None = rp
        else:
            ras = _find_raster(stem, [rp] if rp is not None else [tp])
        pairs.append(ScenePair(stem, pred_scenes.get(stem, ()), tuple(tfiles), ras))
    if not any(p.pred for p in pairs):
        raise ConfigError(
            f"no prediction in {pp} matches a truth scene of {tp}: truth stems {sorted(truth_groups)[:5]}, "
            f"prediction scenes {sorted(pred_scenes)[:5]}; expected {pp}/<stem>/{PRED_FILES[0]}"
        )
    unmatched = sorted(set(pred_scenes) - set(truth_groups))
    return pairs, unmatched
