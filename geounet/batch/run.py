"""Segment many scenes with one checkpoint on a Dask cluster: scenes -> blocks -> tasks ->
merged, written outputs (:func:`run_scenes`).

Steps: read the checkpoint once (its facts, a full check in a thread, its bytes sent to
every worker); open and check every scene and plan its blocks before any work is
scheduled; skip scenes whose scene.json shows the same input, model and settings; then
the :class:`~geounet.batch.scheduler.BlockScheduler` runs the blocks and finalizes scenes.

No step holds a full-scene array: peak memory depends on block size, tasks in flight and
polygon count, not on the scene's width and height.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future as LocalFuture
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import rasterio
from distributed import Client

from geounet.atomic import no_room, os_error_cause
from geounet.batch.finalize import regularized_classes, separated_classes
from geounet.batch.outcomes import SceneOutcome
from geounet.batch.scheduler import BlockScheduler
from geounet.checkpoint import CheckpointMetadata, load_checkpoint, read_metadata
from geounet.compute import resolve_halo, resolve_tile_size, resolve_tiles_per_block
from geounet.errors import CheckpointError, ConfigError, OutputError, SceneError
from geounet.export.layout import (
    CATALOG_NAME,
    NO_RECORD,
    RUN_FILES,
    SCENE_JSON,
    check_writable,
    clear_scene_folder,
    output_names,
    read_scene_record,
    why_incomplete,
)
from geounet.export.stac import write_catalog
from geounet.infer.block import BlockTaskSpec
from geounet.infer.tasks import cuda_available, load_model, release_worker
from geounet.scene.plan import ModelGrid, TilingPlan, model_grid, plan_tiles
from geounet.scene.source import SceneInfo, ground_pixel_size_m, open_scene, unique_stems
from geounet.scene.stac import StacScene
from geounet.settings import InferenceSettings

log = logging.getLogger(__name__)
CATALOG_EVERY_S = 2.0  # OUT/catalog.json is rewritten at most this often while scenes finish

CLIENT_GDAL_CACHE_BYTES = 64 * 2**20  # GDAL block cache of the client process (bytes)


def resolve_thresholds(model: CheckpointMetadata, settings: InferenceSettings) -> list[float]:
    """Per-class thresholds: settings, else checkpoint, else 0.5. Unknown names are errors."""
    classes = list(model.spec.classes)
    unknown = set(settings.thresholds) - set(classes)
    if unknown:
        raise ConfigError(
            f"thresholds given for unknown class(es) {sorted(unknown)}; the model's classes are {classes}"
        )
    return [float(settings.thresholds.get(c, model.thresholds.get(c, 0.5))) for c in classes]


def linear_classes(model: CheckpointMetadata, settings: InferenceSettings) -> list[str]:
    """Classes traced as centerline graphs: ``centerlines.classes``, else the checkpoint's
    linear classes (named like roads); none when ``centerlines.enabled`` is off or no vector
    format (geojson, gpkg) is written."""
    c = settings.centerlines
    if not c.enabled or not {"geojson", "gpkg"} & set(settings.formats):
        return []
    if c.classes is None:
        return list(model.linear)
    unknown = sorted(set(c.classes) - set(model.spec.classes))
    if unknown:
        raise ConfigError(
            f"centerlines.classes names {unknown}, which the model does not predict; its classes are "
            f"{list(model.spec.classes)}"
        )
    return [k for k in model.spec.classes if k in c.classes]


def scene_gsd_m(info: SceneInfo, settings: InferenceSettings) -> float | None:
    """The scene's ground pixel size, metres: the settings' ``gsd_m`` when given, else measured
    at the scene's centre from its CRS and geotransform (None when it cannot be)."""
    if settings.gsd_m is not None:
        return settings.gsd_m
    return ground_pixel_size_m(info.crs_wkt, info.transform, info.width, info.height)


def scene_grid(info: SceneInfo, model: CheckpointMetadata, settings: InferenceSettings) -> ModelGrid:
    """The grid the scene is inferred on: resampled to the model's pixel size when both are
    known and differ by more than 2 % (:func:`geounet.scene.plan.model_grid`).

    Raises:
        SceneError: the resampled grid has more pixels than ``max_pixels``.
    """
    grid = model_grid(info.width, info.height, scene_gsd_m(info, settings), model.gsd_m)
    pixels = grid.width * grid.height
    if grid.resampled and pixels > settings.max_pixels:
        raise SceneError(
            info.path,
            f"resampled from {grid.scene_gsd_m:.4g} m to the model's {grid.model_gsd_m:.4g} m pixels it is "
            f"{grid.width} x {grid.height} = {pixels:,} pixels, above the pixel budget of "
            f"{settings.max_pixels:,}; raise `max_pixels` if this is intended, or check its pixel size (--gsd)",
        )
    return grid


def make_plan(
    info: SceneInfo, model: CheckpointMetadata, settings: InferenceSettings, grid: ModelGrid | None = None
) -> TilingPlan:
    """The scene's tiling on ``grid`` (default: the scene's own pixels), from settings, else
    checkpoint suggestions, else defaults. Tile size, halo and block budget are model-grid pixels."""
    multiple = model.spec.multiple
    halo = resolve_halo(settings.halo, model.halo, model.receptive_field_radius, multiple)
    tile = resolve_tile_size(settings.tile_size, model.tile_size)
    grid = grid if grid is not None else ModelGrid(info.width, info.height)
    return plan_tiles(
        grid.width,
        grid.height,
        tile_size=tile,
        halo=halo,
        multiple=multiple,
        tiles_per_block=resolve_tiles_per_block(settings.tiles_per_block, settings.device),
        grid=grid,
    )


def why_recompute(folder: Path, info: SceneInfo, model: CheckpointMetadata, settings: InferenceSettings) -> str | None:
    """None when ``folder`` holds this scene's complete outputs for the same input, model
    (:attr:`~geounet.checkpoint.CheckpointMetadata.output_fingerprint`) and settings
    (:meth:`~geounet.settings.InferenceSettings.fingerprint`), each output at the size
    scene.json records; else why the scene must be computed (``run``, ``predict`` and
    ``--dry-run`` alike)."""
    return why_incomplete(
        folder,
        input_fingerprint=info.fingerprint,
        model_fingerprint=model.output_fingerprint,
        config_hash=settings.fingerprint(),
        outputs=output_names(model.spec.classes, settings.formats, linear_classes(model, settings)),
    )


def threads(client: Client) -> int:
    """Worker threads of the cluster (at least 1)."""
    info = client.scheduler_info()
    return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))


def run_scenes(
    scenes: Sequence[str],
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: InferenceSettings,
    *,
    client: Client,
    force: bool = False,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_outcome: Callable[[SceneOutcome], None] | None = None,
    max_in_flight: int | None = None,
    stac: Mapping[str, StacScene] | None = None,
) -> list[SceneOutcome]:
    """Segment ``scenes`` into ``out/<stem>/``; returns one outcome per scene, in order.

    ``stac``: the STAC item each scene path came from (:mod:`geounet.scene.stac`): the scene
    keeps the item's id (its folder's name when the id is a safe file name), its bands and a
    link to it; an item without a usable asset is a failed scene. With the ``stac`` format,
    OUT/catalog.json lists the item.json of every finished scene, rewritten as scenes finish.

    Bad scenes are recorded as failed and the others go on. Environment errors (the output
    folder cannot take files) stop the run with :class:`OutputError` after cleaning up.
    The checkpoint file is read once; only when every worker holding its copy died is it
    read again, and refused unless its content hash is unchanged.
    """
    out = Path(out)
    check_writable(out)
    model_path = os.fspath(checkpoint)
    data = read_checkpoint_bytes(model_path)
    model = read_metadata(data, name=model_path)
    # The header alone does not prove the weights load: check tensor shapes, content hash and
    # finite values once here, so a bad model is a CheckpointError (exit 2) before any scene
    # is reported or any block submitted. The check (0.44 s for a width-64 UNet's 124 MB on
    # this project's machine) runs in a thread beside the scene checks, the cluster's start
    # and the workers' own model load (:func:`warm_workers`), and is waited for below.
    checked = in_background(check_checkpoint, data, model_path)
    thresholds = resolve_thresholds(model, settings)
    linear_classes(model, settings)  # unknown class names: a ConfigError before any scene
    regularized_classes(model.spec.classes, settings)  # the same for regularize.classes
    separated_classes(model.spec.classes, settings)  # ... and separate.classes
    config_hash = settings.fingerprint()
    options = settings.model_dump(mode="json")
    stac = stac or {}
    paths = [os.fspath(s) for s in scenes]
    stems = unique_stems(paths, reserved=RUN_FILES, names=[stac[p].item_id if p in stac else None for p in paths])
    class_names = list(model.spec.classes)
    outcomes: dict[int, SceneOutcome] = {}

    # 1. validate every scene before any work is scheduled
    todo: list[tuple[int, SceneInfo, TilingPlan]] = []
    for i, (path, stem) in enumerate(zip(scenes, stems)):
        if stop is not None and stop.is_set():  # SIGTERM while checking thousands of scenes
            break
        path = os.fspath(path)
        folder = out / stem
        item = stac.get(path)
        try:
            if item is not None and item.error:
                raise SceneError(path, item.error)
            info = open_scene(
                path,
                in_channels=model.spec.in_channels,
                bands=scene_bands(settings, model, item),
                max_pixels=settings.max_pixels,
                use_nodata=settings.use_nodata,
                stem=stem,
            )
            grid = scene_grid(info, model, settings)
            plan = make_plan(info, model, settings, grid)
        except SceneError as exc:
            outcomes[i] = SceneOutcome(
                scene=path,
                stem=stem,
                status="failed",
                out_dir=str(folder),
                error=str(exc),
                stac_item=item.item_id if item is not None else None,
            )
            log.error("%s", exc)
            if (folder / SCENE_JSON).exists():
                clear_scene_folder(folder, class_names)
            continue
        reason = "--force" if force else why_recompute(folder, info, model, settings)
        if reason is None:
            outcomes[i] = SceneOutcome(
                scene=path,
                stem=stem,
                status="skipped",
                out_dir=str(folder),
                polygons=(read_scene_record(folder) or {}).get("polygons", {}),
                pixels=info.pixels,
                stac_item=item.item_id if item is not None else None,
            )
            continue
        if reason != NO_RECORD and (folder / SCENE_JSON).exists():
            log.info("scene %s: computing it again: %s", path, reason)
        if grid.warning:
            log.warning("scene %s: %s", path, grid.warning)
        todo.append((i, info, plan))
    warming: list[Any] = []
    ckpt_ref = None
    if todo:
        ckpt_ref = client.scatter(data, broadcast=True, hash=False)
        warming = warm_workers(client, ckpt_ref, model.output_fingerprint, settings.device)
    checked.result()  # a bad checkpoint raises here: nothing reported, no block submitted
    catalog = RunCatalog(out, stems, model) if "stac" in settings.formats else None
    if catalog is not None:
        on_outcome = _reporting(catalog, on_outcome)
    del data  # the workers hold the bytes now; the client keeps only Dask's reference
    for i in sorted(outcomes):
        if on_outcome:
            on_outcome(outcomes[i])

    if todo:
        gpu = settings.device != "cpu" and any(client.run(cuda_available).values())
        spec = BlockTaskSpec(
            model_key=model.output_fingerprint,
            normalization=model.normalization,
            thresholds=thresholds,
            batch_size=settings.batch_size,
            device=settings.device,
            precision=settings.precision,
            keep_probability="probability" in settings.formats,
            quicklook_size=settings.quicklook_size if "quicklook" in settings.formats else None,
            tta=settings.tta,
            linear=tuple(class_names.index(c) for c in linear_classes(model, settings)),
        )
        scheduler = BlockScheduler(
            client,
            out=out,
            model=model,
            model_path=model_path,
            settings=settings,
            spec=spec,
            checkpoint_ref=ckpt_ref,
            send_checkpoint=lambda: client.scatter(
                reread_checkpoint(model_path, model.output_fingerprint), broadcast=True, hash=False
            ),
            config_hash=config_hash,
            options=options,
            limit=max_in_flight or max(4, 2 * threads(client)),
            gpu=gpu,
            progress=progress,
            stop=stop,
            outcomes=outcomes,
            on_outcome=on_outcome,
            stac=stac,
        )
        # GDAL's block cache (process-wide, 5 % of RAM by default) would otherwise fill with the
        # probability blocks streamed to disk and the quicklook read, so the client's memory
        # grew with the scene: 1.5 GB at 16384^2 px on a 24 GB machine. An explicit
        # GDAL_CACHEMAX environment variable wins.
        cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": CLIENT_GDAL_CACHE_BYTES}
        try:
            with rasterio.Env(**cache):
                scheduler.run(todo)
        except OutputError as exc:
            full = no_room_error(exc, out)
            if full is None:
                raise
            raise full from exc
        finally:
            # no task runs now: close every worker thread's dataset handles and give the
            # workers' freed heap back, so a run leaves no open files and no held memory
            # behind on long-lived (external) workers
            with contextlib.suppress(Exception):
                client.run(release_worker)
            if catalog is not None:  # the scenes finished before an error stay listed
                with contextlib.suppress(Exception):
                    catalog.flush()
    del warming  # held until here: Dask cancels a task whose futures are all released
    if catalog is not None:
        catalog.flush()
    return [outcomes[i] for i in sorted(outcomes)]


def no_room_error(exc: OutputError, out: Path) -> OutputError | None:
    """``exc``, which stopped the run, in the same words whichever writer met the full disk (or
    quota, or file-size limit) and with the fix for ``run`` and ``predict``; None when the disk is
    not what failed (see :func:`~geounet.atomic.no_room`)."""
    cause = no_room(exc, out)
    if cause is None:
        return None
    what, fix = os_error_cause(cause, elsewhere="another --out")
    where = exc.path or str(out)
    err = OutputError(f"cannot write {where}: {what}; {fix} (finished scenes are kept: run again to continue)")
    err.path = where
    return err


def scene_bands(settings: InferenceSettings, model: CheckpointMetadata, item: StacScene | None) -> list[int] | None:
    """The bands a scene feeds the model: named in its STAC asset (``stac_bands``), else the
    settings' ``bands``, else the checkpoint's."""
    if item is not None and item.bands:
        return list(item.bands)
    return settings.bands or (list(model.bands) if model.bands else None)


class RunCatalog:
    """OUT/catalog.json of the run's finished scenes, in the run's scene order.

    Rewritten atomically as scenes finish, at most every :data:`CATALOG_EVERY_S` seconds, and
    by :meth:`flush` at the end of the run: a batch of thousands of scenes (or of skipped
    ones, reported all at once) does not rewrite a growing file after every scene. The file
    is valid at every moment; after a run that stopped on an error it may miss the scenes of
    its last seconds.
    """

    def __init__(self, out: Path, stems: Sequence[str], model: CheckpointMetadata) -> None:
        self.out, self.order = out, {s: i for i, s in enumerate(stems)}
        self.done: set[str] = set()
        self.description = f"geounet results of model {model.short_hash} ({', '.join(model.spec.classes)})"
        self.written_at = -math.inf
        self.dirty = False
        if not (out / CATALOG_NAME).exists():  # a run that finishes no scene still has a (valid, empty) catalog
            self.write()

    def add(self, o: SceneOutcome) -> None:
        if o.status in ("success", "skipped"):
            self.done.add(o.stem)
            self.dirty = True
            if time.monotonic() - self.written_at >= CATALOG_EVERY_S:
                self.write()

    def flush(self) -> None:
        if self.dirty:
            self.write()

    def write(self) -> None:
        names = sorted(self.done, key=lambda s: self.order.get(s, len(self.order)))
        write_catalog(self.out, names, description=self.description)
        self.written_at, self.dirty = time.monotonic(), False


def _reporting(
    catalog: RunCatalog, on_outcome: Callable[[SceneOutcome], None] | None
) -> Callable[[SceneOutcome], None]:
    def report(o: SceneOutcome) -> None:
        catalog.add(o)
        if on_outcome is not None:
            on_outcome(o)

    return report


def read_checkpoint_bytes(path: str) -> bytes:
    """The checkpoint file's bytes, read once for the whole run (facts, check and the copy
    sent to the workers all come from them). A file that cannot be read raises the
    checkpoint loader's own :class:`CheckpointError`."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
        if regular:  # a FIFO would block the read forever
            return Path(path).read_bytes()
    except OSError:
        pass
    read_metadata(path)  # says why, in the words of every other checkpoint refusal
    raise CheckpointError(path, "cannot be read")


def reread_checkpoint(path: str, model_key: str) -> bytes:
    """The checkpoint's bytes again, for workers that lost their copy, refused unless they are
    the same model the run started with (same :attr:`output_fingerprint`: a file replaced
    mid-run must not mix models)."""
    data = read_checkpoint_bytes(path)
    if read_metadata(data, name=path).output_fingerprint != model_key:
        raise CheckpointError(
            path,
            "changed while the run was using it (its weights or metadata differ); the workers' copy was "
            "lost and cannot be sent again: run again",
        )
    return data


def check_checkpoint(data: bytes, name: str) -> None:
    """Load the checkpoint in full (shapes, content hash, finite weights) and drop the model:
    the client runs no model, and a kept one would hold its weights for the whole run."""
    load_checkpoint(data, name=name)


def in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> LocalFuture:
    """``fn(*args, **kwargs)`` started in a thread of its own; its result (or error) comes
    from the future."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-check")
    try:
        return pool.submit(fn, *args, **kwargs)
    finally:
        pool.shutdown(wait=False)  # the thread ends with fn


def warm_workers(client: Client, ckpt_ref: Any, model_key: str, device: str) -> list[Any]:
    """Start loading the model on every worker now, one task each, so that the load overlaps
    the client's checkpoint check instead of holding up the first blocks. Returns the tasks'
    futures (the caller keeps them until the run ends)."""
    workers = list(client.scheduler_info().get("workers") or {})
    return [
        client.submit(
            load_model,
            ckpt_ref,
            model_key,
            device,
            workers=[w],
            pure=False,
            key=f"load-model-{model_key[:12]}-{os.urandom(4).hex()}",
        )
        for w in workers
    ]
