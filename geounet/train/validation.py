"""Validation after each epoch: the model scored on fixed tiles of the validation area.

Each tile goes through inference's own steps, so the numbers describe the model as
``geounet predict`` will use it: read and normalize (:meth:`TrainScene.read` ->
:func:`geounet.scene.read.read_window`, :func:`geounet.scene.read.prepare_input`),
forward (:func:`geounet.infer.block.run_model`), masks
(:func:`~geounet.infer.block.class_probabilities`, :func:`~geounet.infer.block.class_masks`)
and polygons (:func:`geounet.vectorize.polygonize.polygonize_block`, then
:func:`geounet.vectorize.postprocess.to_world`). Scores come from the evaluate package:
pixel counts summed over tiles (:class:`~geounet.evaluate.PixelCounts`, whose ratios follow
:mod:`geounet.evaluate.ratios`) and building objects matched one-to-one
(:func:`~geounet.evaluate.building_f1`, combined with :meth:`MatchResult.combine`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import shapely
import torch

from geounet.evaluate import MatchResult, PixelCounts, building_f1, pixel_counts
from geounet.infer.block import class_masks, class_probabilities, run_model
from geounet.models.base import SegmentationModel
from geounet.scene.normalize import MeanStd, Percentile
from geounet.scene.read import keep_handles, prepare_input
from geounet.train.config import TrainingSettings
from geounet.train.data import TrainScene, pixel_weights
from geounet.train.labels import to_class_index, window_box
from geounet.train.sampling import WindowRef
from geounet.vectorize.polygonize import polygonize_block
from geounet.vectorize.postprocess import to_world


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
    mode = model.spec.mode
    vcfg = settings.validation
    bidx = names.index(vcfg.building_class) if vcfg.building_class in names else None
    thresholds = [vcfg.threshold] * len(names)
    counts = [PixelCounts() for _ in names]
    matches: list[MatchResult] = []
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
            masks = class_masks(cls_probs, labels, valid, thresholds)
            truth = sc.labels(ref, separate=False)
            for k, m in enumerate(masks):
                if sc.known is None or sc.known[k]:
                    counts[k] += pixel_counts(m, truth[k], valid)
            if bidx is not None and (sc.known is None or sc.known[bidx]):
                pred = predicted_polygons(masks[bidx], sc, ref)
                true = truth_polygons(sc, bidx, ref)
                matches.append(building_f1(pred, true, vcfg.iou, min_area=vcfg.min_area_px * sc.pixel_area))
    finally:
        model.train(was_training)
    return summarize(names, counts, matches, bidx, loss_sum / loss_px if loss_px else math.nan)


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
