"""Validation after each epoch: the model scored on fixed tiles of the validation area.

Each tile goes through inference's own steps, so the numbers describe the model as
``geounet predict`` will use it: read and normalize (:meth:`TrainScene.read` ->
:func:`geounet.scene.read.read_window`, :func:`geounet.scene.read.prepare_input`),
forward (:func:`geounet.infer.block.run_model`), masks
(:func:`~geounet.infer.block.class_probabilities`, :func:`~geounet.infer.block.class_masks`),
touching buildings split (:func:`geounet.vectorize.separate.separate_mask`, inference's
default settings) and polygons (:func:`geounet.vectorize.polygonize.polygonize_block`, then
:func:`geounet.vectorize.postprocess.to_world`). Scores come from the evaluate package:
pixel counts summed over tiles (:class:`~geounet.evaluate.PixelCounts`, whose ratios follow
:mod:`geounet.evaluate.ratios`) and building objects matched one-to-one
(:func:`~geounet.evaluate.building_f1`, combined with :meth:`MatchResult.combine`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import torch

from geounet.checkpoint.metadata import is_building_name
from geounet.evaluate import MatchResult, PixelCounts, building_f1, pixel_counts
from geounet.infer.block import class_masks, class_probabilities, run_model
from geounet.models.base import SegmentationModel
from geounet.scene.normalize import MeanStd, Percentile
from geounet.scene.read import keep_handles, prepare_input
from geounet.scene.source import ground_pixel_size_m
from geounet.settings import SeparateSettings
from geounet.train.config import TrainingSettings
from geounet.train.data import TrainScene, pixel_weights
from geounet.train.labels import to_class_index, window_box
from geounet.train.sampling import WindowRef
from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.postprocess import to_world
from geounet.vectorize.separate import SeparationParams, separate_mask


@contextlib.contextmanager
def captured_logits(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The raw outputs (logits) of ``model``'s forward passes inside the block, in order.

    :func:`~geounet.infer.block.run_model` returns probabilities; the validation loss needs
    the logits of the same pass (the losses fuse their own sigmoid/softmax with the log), so
    they are taken with a forward hook rather than by a second forward pass or a copy of
    ``run_model``. The hook is removed on leaving the block.
    """
    seen: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda _module, _inputs, output: seen.append(output))
    try:
        yield seen
    finally:
        handle.remove()


def predicted_polygons(mask: np.ndarray, scene: TrainScene, ref: WindowRef) -> np.ndarray:
    """4-connected regions of a tile's mask as polygons in the scene's CRS, as inference
    makes them (:func:`~geounet.vectorize.polygonize.polygonize_block` on the tile's place in the
    scene, then the scene's affine transform)."""
    if not mask.any():
        return np.empty(0, dtype=object)
    block = polygonize_block(mask, None, row_off=0, col_off=0, scene_height=ref.height, scene_width=ref.width)
    return to_world(block.geoms, scene.transform_of(ref))


def predicted_buildings(
    mask: np.ndarray, prob: np.ndarray, scene: TrainScene, ref: WindowRef, params: SeparationParams | None
) -> np.ndarray:
    """Building polygons of a tile as inference draws them: touching buildings split at the
    probability valleys between their seeds (``params``; None: not split), then
    :func:`predicted_polygons`."""
    if params is not None:
        mask = separate_mask(mask, prob, params)
    return predicted_polygons(mask, scene, ref)


def truth_polygons(scene: TrainScene, k: int, ref: WindowRef) -> list[shapely.Geometry]:
    """Truth features of class ``k`` clipped to the tile (the prediction cannot reach beyond
    it); for a raster-mask scene, the mask's regions polygonized as predictions are."""
    if scene.mask is not None:
        return list(predicted_polygons(scene.labels(ref)[k].astype(bool), scene, ref))
    box = window_box(scene.transform_of(ref), ref.height, ref.width)
    geoms = scene.classes[k].query(box)
    if not len(geoms):
        return []
    clipped = shapely.intersection(geoms, box)
    return [g for g in clipped if not g.is_empty and shapely.area(g) > 0]


def tile_loss(
    loss_fn: torch.nn.Module,
    logits: torch.Tensor,
    scene: TrainScene,
    ref: WindowRef,
    valid: np.ndarray,
    mode: str,
    separation_weight: float,
) -> float:
    """The training loss of one tile (same targets and pixel weights as in training)."""
    target, gaps = scene.targets(ref)
    device = logits.device
    w = pixel_weights(valid, gaps, separation_weight)
    if scene.partial:
        w = w[None] * np.asarray(scene.known, dtype=np.float32)[:, None, None]
    weights = torch.from_numpy(w)[None].to(device)
    if mode == "multiclass":
        tt = torch.from_numpy(to_class_index(target))[None].to(device)
    else:
        tt = torch.from_numpy(target)[None].to(device, torch.float32)
    with torch.inference_mode():
        return float(loss_fn(logits, tt, weights))


def validate(
    model: SegmentationModel,
    scenes: Sequence[TrainScene],
    tiles: Sequence[WindowRef],
    bands: Sequence[int],
    norm: MeanStd | Percentile,
    settings: TrainingSettings,
    *,
    device: torch.device,
    dtype: torch.dtype,
    loss_fn: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Score ``model`` on validation tiles; returns a flat dict of metrics.

    Keys: ``val_loss``; per class ``<class>_iou``, ``<class>_f1`` (pixel F1 = Dice),
    ``<class>_precision``, ``<class>_recall``; for the building class ``building_f1``,
    ``building_precision``, ``building_recall`` (objects at IoU >= ``validation.iou``; for a
    class named ``building`` these replace its pixel F1, precision and recall); ``mean_iou``
    and ``score`` (mean of the building F1 and the IoU of the other classes). Pixel metrics
    compare with the plain truth (no separation gaps) over valid pixels; ratios are NaN
    where a class is absent from both truth and prediction.

    Cost: one forward pass per tile (inference mode, autocast), one rasterization per class
    and tile, one polygonization of the building mask per tile.
    """
    names = settings.class_names
    bidx = building_index(settings)
    (scored,), val_loss = score_tiles(
        model,
        scenes,
        tiles,
        bands,
        norm,
        settings,
        [settings.validation.threshold],
        device=device,
        dtype=dtype,
        loss_fn=loss_fn,
    )
    return summarize(names, scored.counts, scored.matches, bidx, val_loss)


@dataclass
class Scored:
    """Summed pixel counts (one per class) and building matches (one per tile) at one threshold."""

    threshold: float
    counts: list[PixelCounts]
    matches: list[MatchResult]


def building_index(settings: TrainingSettings) -> int | None:
    """Index of ``validation.building_class`` among the classes (None: no such class)."""
    names = settings.class_names
    return names.index(settings.validation.building_class) if settings.validation.building_class in names else None


def score_tiles(
    model: SegmentationModel,
    scenes: Sequence[TrainScene],
    tiles: Sequence[WindowRef],
    bands: Sequence[int],
    norm: MeanStd | Percentile,
    settings: TrainingSettings,
    thresholds: Sequence[float],
    *,
    device: torch.device,
    dtype: torch.dtype,
    loss_fn: torch.nn.Module | None = None,
) -> tuple[list[Scored], float]:
    """Pixel counts and building matches of the validation tiles at each probability threshold
    (the same threshold for every class), from one forward pass per tile; and the validation
    loss (NaN without ``loss_fn`` or valid pixels). A softmax model's classes come from the
    argmax, so its masks do not depend on the threshold. A building class is split where its
    buildings touch as inference splits it by default (:mod:`geounet.vectorize.separate`,
    :class:`~geounet.settings.SeparateSettings`) before its regions are polygonized."""
    names = settings.class_names
    mode = model.spec.mode
    vcfg = settings.validation
    bidx = building_index(settings)
    scored = [Scored(t, [PixelCounts() for _ in names], []) for t in thresholds]
    separate = SeparateSettings() if bidx is not None and is_building_name(names[bidx]) else None
    loss_sum, loss_px = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        keep_handles(min(2 * len(scenes), 256))
        for ref in tiles:
            sc = scenes[ref.scene]
            raw, valid = sc.read(ref, bands, settings.data.use_nodata)
            if sc.mask is not None:
                valid = valid & ~sc.label_ids(ref)[1]
            with captured_logits(model) as logits:
                probs = run_model(model, prepare_input(raw, valid, norm), device=device, dtype=dtype)[0].numpy()
            if loss_fn is not None and valid.any():
                n = int(valid.sum())
                loss_sum += tile_loss(loss_fn, logits[-1], sc, ref, valid, mode, settings.loss.separation_weight) * n
                loss_px += n
            del logits
            cls_probs, labels = class_probabilities(probs, mode)
            truth = sc.labels(ref, separate=False)
            true = truth_polygons(sc, bidx, ref) if bidx is not None else []
            pixel_m = grid_pixel_m(settings, sc) if separate else 0.0
            for entry in scored:
                masks = class_masks(cls_probs, labels, valid, [entry.threshold] * len(names))
                for k, m in enumerate(masks):
                    if sc.known is None or sc.known[k]:
                        entry.counts[k] += pixel_counts(m, truth[k], valid)
                if bidx is not None and (sc.known is None or sc.known[bidx]):
                    params = SeparationParams.from_settings(separate, pixel_m, entry.threshold) if separate else None
                    pred = predicted_buildings(masks[bidx], cls_probs[bidx], sc, ref, params)
                    entry.matches.append(building_f1(pred, true, vcfg.iou, min_area=vcfg.min_area_px * sc.pixel_area))
    finally:
        model.train(was_training)
    return scored, (loss_sum / loss_px if loss_px else math.nan)


def grid_pixel_m(settings: TrainingSettings, scene: TrainScene) -> float:
    """Pixel size of the grid the model sees, metres: ``data.gsd_m``, else the scene's own
    (from its georeferencing, as inference measures it; 1 m for a scene without a CRS)."""
    if settings.data.gsd_m is not None:
        return settings.data.gsd_m
    if scene.gsd_m:
        return scene.gsd_m
    crs = scene.crs.to_wkt() if scene.crs is not None else None
    return ground_pixel_size_m(crs, tuple(scene.transform)[:6], scene.width, scene.height) or 1.0


def calibrate_thresholds(
    model: SegmentationModel,
    scenes: Sequence[TrainScene],
    tiles: Sequence[WindowRef],
    bands: Sequence[int],
    norm: MeanStd | Percentile,
    settings: TrainingSettings,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Each class's probability threshold chosen on the validation tiles among
    ``validation.calibrate``: the building class by its object F1, the others by pixel IoU.

    Returns the thresholds ``{class: threshold}`` and a record for the provenance: the
    candidates, each class's score at each, and the choice. A class whose score is NaN at
    every candidate (absent from the validation areas), and every class of a softmax model,
    keeps ``validation.threshold``; ties go to the candidate nearest to it.
    """
    names = settings.class_names
    vcfg = settings.validation
    default = dict.fromkeys(names, vcfg.threshold)
    if model.spec.mode == "multiclass":
        return default, {"skipped": "a softmax model's classes come from the argmax, not from thresholds"}
    candidates = sorted(set(vcfg.calibrate))
    scored, _ = score_tiles(model, scenes, tiles, bands, norm, settings, candidates, device=device, dtype=dtype)
    bidx = building_index(settings)
    chosen = dict(default)
    table: dict[str, list[float | None]] = {}
    for k, name in enumerate(names):
        if k == bidx:
            values = [MatchResult.combine(e.matches).f1 for e in scored]
            metric = "object F1"
        else:
            values = [e.counts[k].iou for e in scored]
            metric = "pixel IoU"
        table[f"{name} ({metric})"] = [None if v is None or math.isnan(v) else round(float(v), 4) for v in values]
        ranked = [
            (v, -abs(t - vcfg.threshold), t) for v, t in zip(values, candidates) if v is not None and not math.isnan(v)
        ]
        if ranked:
            chosen[name] = max(ranked)[2]
    return chosen, {"candidates": candidates, "scores": table, "chosen": chosen}


def summarize(
    names: Sequence[str],
    counts: Sequence[PixelCounts],
    matches: Sequence[MatchResult],
    building: int | None,
    val_loss: float,
) -> dict[str, Any]:
    """The flat metrics dict of :func:`validate` from summed pixel counts and building matches."""
    out: dict[str, Any] = {"val_loss": val_loss}
    ious = []
    for name, c in zip(names, counts):
        out[f"{name}_iou"] = c.iou
        out[f"{name}_f1"] = c.dice
        out[f"{name}_precision"] = c.precision
        out[f"{name}_recall"] = c.recall
        ious.append(c.iou)
    out["mean_iou"] = nanmean(ious)
    parts = []
    if building is not None:
        total = MatchResult.combine(matches)
        out["building_f1"] = total.f1
        out["building_precision"] = total.precision
        out["building_recall"] = total.recall
        parts.append(total.f1)
    parts += [iou for k, iou in enumerate(ious) if k != building]
    out["score"] = nanmean(parts)
    return out


def nanmean(values: Sequence[float | None]) -> float:
    """Mean of the values that are not None or NaN; NaN when none is left."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan
