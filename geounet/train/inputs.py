"""The data side of a training run: open the scenes with their labels, split them into
training and validation areas, choose the normalization statistics, and load the batches
of each epoch (one ahead on a data thread).

Steps 3 and 4 of :func:`geounet.train.loop.run`, and the loader its epochs draw from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from geounet.checkpoint import read_metadata
from geounet.errors import CheckpointError, ConfigError
from geounet.scene.normalize import MeanStd, Percentile
from geounet.scene.read import close_datasets
from geounet.train.config import TrainingSettings
from geounet.train.data import (
    TrainScene,
    bands_of,
    check_classes,
    class_presence,
    estimate_normalization,
    load_batch,
    open_scenes,
)
from geounet.train.sampling import Rect, WindowRef, WindowSampler, split_scene, spread, tile_rects
from geounet.train.sources import held_out, open_sources

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # images, label stacks, pixel weights


@dataclass
class TrainData:
    """The scenes of a run and the windows drawn from them."""

    scenes: list[TrainScene]
    bands: list[int]  # 1-based, fed to the model
    train_rects: list[Rect]
    val_rects: list[Rect]
    sampler: WindowSampler  # training windows of each epoch
    tiles: list[WindowRef]  # validation tiles, the same every epoch


def open_data(settings: TrainingSettings, show: bool = False) -> TrainData:
    """Open the scenes with their labels, split them and set up training windows and validation tiles.

    Raises:
        ConfigError: a missing file, bad bands, a class without features, or no training or
            validation area.
    """
    scenes = open_scenes(settings, progress=show)
    scenes += open_sources(settings, len(scenes))
    check_classes(settings, scenes)
    bands = bands_of(settings, scenes)
    train_rects, val_rects = split_areas(scenes, settings)
    sc = settings.sampling
    sampler = WindowSampler(
        train_rects,
        sc.window,
        sc.windows_per_epoch,
        settings.compute.seed,
        balance=sc.balance,
        candidates=sc.candidates,
        presence=partial(class_presence, scenes, min_pixels=sc.min_class_pixels),
    )
    tiles = spread(tile_rects(val_rects, settings.validation.tile), settings.validation.max_tiles)
    return TrainData(scenes, bands, train_rects, val_rects, sampler, tiles)


def split_areas(scenes: Sequence[TrainScene], settings: TrainingSettings) -> tuple[list[Rect], list[Rect]]:
    """Training and validation rectangles of every scene (``split``), a gap between them.

    Raises:
        ConfigError: no training area, or no validation area.
    """
    train: list[Rect] = []
    val: list[Rect] = []
    sp = settings.split
    for s in scenes:
        if s.source:  # an image of data.sources: whole, by area; windows may exceed small chips
            whole = Rect(s.index, 0, 0, s.grid_height, s.grid_width, loose=True)
            (val if s.role == "val" else train).append(whole)
            continue
        role = "val" if s.role == "auto" and sp.val_areas and held_out(s.path.stem, sp.val_areas) else s.role
        t, v = split_scene(
            s.index,
            s.grid_height,
            s.grid_width,
            role,
            kind=sp.kind,
            val_fraction=sp.val_fraction,
            cell=sp.cell,
            gap=settings.gap,
            window=settings.sampling.window,
            seed=settings.compute.seed,
            name=str(s.path),
        )
        train += t
        val += v
    if settings.data.sources:
        train = balance_sources(train, scenes, settings)
    if not train:
        raise ConfigError(f"{settings.source}: no training area: every scene has role 'val'")
    if not val:
        raise ConfigError(
            f"{settings.source}: no validation area: with split.kind 'scenes' give at least one scene "
            "role 'val' (or synthetic.val), or use split.kind strip / checkerboard"
        )
    return train, val


def balance_sources(rects: Sequence[Rect], scenes: Sequence[TrainScene], settings: TrainingSettings) -> list[Rect]:
    """Training rectangles weighted so that each source gets its ``weight`` share of the
    windows, whatever its pixel count (``data.scenes`` and synthetic scenes together count as
    one source, of ``data.synthetic.weight``, else 1): a window position's weight is the
    source's weight over the source's number of window positions."""
    size = settings.sampling.window
    weight = {s.name: s.weight for s in settings.data.sources}
    if settings.data.synthetic is not None:
        weight[""] = settings.data.synthetic.weight
    totals: dict[str, int] = {}
    for r in rects:
        key = scenes[r.scene].source
        totals[key] = totals.get(key, 0) + r.positions(size)
    out = []
    for r in rects:
        key = scenes[r.scene].source
        w = weight.get(key, 1.0) / max(totals[key], 1)
        out.append(dataclasses.replace(r, weight=w))
    return out


# -- 4. statistics ---------------------------------------------------------------------------


def choose_normalization(
    settings: TrainingSettings, data: TrainData, resumed_from: Path | None
) -> MeanStd | Percentile:
    """The statistics of the checkpoint a run resumes from, else statistics of sampled
    training windows.

    Raises:
        CheckpointError: the resumed checkpoint was trained on other bands.
        ConfigError: the sampled windows hold no valid pixel.
    """
    if resumed_from is not None:
        meta = read_metadata(resumed_from)
        if list(meta.bands) != list(data.bands):
            raise CheckpointError(resumed_from, f"was trained on bands {meta.bands}, the config gives {data.bands}")
        norm = meta.normalization
    else:
        norm = estimate_normalization(
            data.scenes,
            data.train_rects,
            data.bands,
            settings.normalization,
            settings.sampling.window,
            settings.compute.seed,
            settings.data.use_nodata,
        )
    log.info("normalization: %s", norm.model_dump())
    return norm


class BatchLoader:
    """The batches of an epoch, each built one ahead on a data thread when ``compute.prefetch``.

    Batches are the same whichever thread builds them (:func:`~geounet.train.data.load_batch`
    seeds each window by ``(seed, epoch, index)``). The data thread reads through its own
    dataset handles (:mod:`geounet.scene.read` keeps them per thread); :meth:`close` closes
    them on that thread, then this thread's.
    """

    def __init__(self, settings: TrainingSettings, data: TrainData, norm: MeanStd | Percentile) -> None:
        self.settings = settings
        self.data = data
        self.norm = norm
        self.executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-train-data")
            if settings.compute.prefetch
            else None
        )

    def load(self, epoch: int, first: int, refs: Sequence[WindowRef]) -> Batch:
        """Windows ``first, first + 1, ...`` of ``epoch``, read, augmented and stacked."""
        s = self.settings
        return load_batch(
            self.data.scenes,
            refs,
            self.data.bands,
            self.norm,
            use_nodata=s.data.use_nodata,
            aug=s.augment,
            seed=s.compute.seed,
            epoch=epoch,
            first=first,
            separation_weight=s.loss.separation_weight,
        )

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Every batch of ``epoch`` in order (``sampling.batch_size`` windows each, the last may be short)."""
        size = self.settings.sampling.batch_size
        refs = self.data.sampler.epoch(epoch)
        batches = [(i, refs[i : i + size]) for i in range(0, len(refs), size)]
        if self.executor is None:
            for first, chunk in batches:
                yield self.load(epoch, first, chunk)
            return
        pending = self.executor.submit(self.load, epoch, *batches[0])
        for k in range(len(batches)):
            batch = pending.result()
            if k + 1 < len(batches):
                pending = self.executor.submit(self.load, epoch, *batches[k + 1])
            yield batch

    def close(self) -> None:
        """Close the dataset handles of the data thread and of this thread; stop the data thread."""
        if self.executor is not None:
            self.executor.submit(close_datasets).result()
            self.executor.shutdown(wait=True)
        close_datasets()
