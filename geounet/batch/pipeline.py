"""Scenes -> blocks -> Dask tasks -> stitched, merged, written outputs.

The client keeps a bounded number of block tasks in flight across *several* scenes, so
workers never wait for one scene's tail; each finished block's probabilities stream into
the scene's probability raster and its polygons are kept until the scene's last block
arrives. A scene is then finalized (seam merge, metric post-processing, writers) on a
client-side thread while workers go on with the next scenes.

No step holds a full-scene array: peak memory depends on block size, tasks in flight and
polygon count, not on the scene's width and height.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future as LocalFuture
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import rasterio
from distributed import Client, as_completed
from distributed.client import FutureCancelledError
from tqdm.auto import tqdm

from geounet.compute import cuda_available, resolve_halo, resolve_tile_size, resolve_tiles_per_block
from geounet.scene.plan import TilingPlan, plan_tiles
from geounet.errors import ConfigError, GeounetError, OutputError, SceneError
from geounet.heap import trim_heap
from geounet.export.writers import (
    VECTOR_WRITERS,
    ProbabilityWriter,
    plural,
    write_quicklook,
)
from geounet.atomic import remove_partials, write_json
from geounet.infer.block import BlockResult, BlockTaskSpec, process_block
from geounet.scene.source import SceneInfo, open_scene, unique_stems
from geounet.settings import InferenceSettings
from geounet.export.quicklook import ThumbnailCanvas, thumbnail_factor

log = logging.getLogger(__name__)

Status = Literal["success", "skipped", "failed"]
SCENE_JSON = "scene.json"
CLIENT_GDAL_CACHE_BYTES = 64 * 2**20  # GDAL block cache of the client process (bytes)


@dataclass
class SceneOutcome:
    """What happened to one scene (recorded in run.json)."""

    scene: str
    stem: str
    status: Status
    out_dir: str
    error: str | None = None
    polygons: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    pixels: int = 0
    blocks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ModelInfo:
    """What the client needs from the checkpoint (header only; no weights)."""

    path: str
    content_hash: str
    short_hash: str
    class_names: list[str]
    in_channels: int
    mode: str
    multiple: int
    receptive_field_radius: int
    tile_size: int | None
    halo: int | None
    thresholds: dict[str, float]
    normalization: Any
    bands: list[int] | None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str]) -> ModelInfo:
        from geounet.checkpoint import read_metadata

        meta = read_metadata(path)
        spec = meta.spec
        return cls(
            path=os.fspath(path), content_hash=meta.content_hash, short_hash=meta.short_hash,
            class_names=list(spec.classes), in_channels=spec.in_channels, mode=spec.mode,
            multiple=spec.multiple, receptive_field_radius=meta.receptive_field_radius,
            tile_size=meta.tile_size, halo=meta.halo, thresholds=dict(meta.thresholds),
            normalization=meta.normalization, bands=list(meta.bands) if meta.bands else None,
        )


def resolve_thresholds(model: ModelInfo, settings: InferenceSettings) -> list[float]:
    """Per-class thresholds: settings, else checkpoint, else 0.5. Unknown names are errors."""
    unknown = set(settings.thresholds) - set(model.class_names)
    if unknown:
        raise ConfigError(
            f"thresholds given for unknown class(es) {sorted(unknown)}; the model's classes are "
            f"{model.class_names}"
        )
    return [float(settings.thresholds.get(c, model.thresholds.get(c, 0.5))) for c in model.class_names]


def make_plan(info: SceneInfo, model: ModelInfo, settings: InferenceSettings) -> TilingPlan:
    """The scene's tiling, from settings, else checkpoint suggestions, else defaults."""
    halo = resolve_halo(settings.halo, model.halo, model.receptive_field_radius, model.multiple)
    tile = resolve_tile_size(settings.tile_size, model.tile_size)
    return plan_tiles(info.width, info.height, tile_size=tile, halo=halo, multiple=model.multiple,
                      tiles_per_block=resolve_tiles_per_block(settings.tiles_per_block, settings.device))


def library_versions() -> dict[str, str]:
    import dask
    import rasterio
    import shapely
    import torch

    import geounet

    return {
        "geounet": geounet.__version__, "python": platform.python_version(),
        "torch": torch.__version__, "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__, "shapely": shapely.__version__,
        "dask": dask.__version__, "numpy": np.__version__,
    }


def read_scene_record(folder: Path) -> dict[str, Any] | None:
    """The scene's ``scene.json`` if present and parseable, else None."""
    try:
        return json.loads((folder / SCENE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, info: SceneInfo, model: ModelInfo, config_hash: str) -> bool:
    """True when ``scene.json`` records success for the same input, model and settings."""
    rec = read_scene_record(folder)
    return bool(
        rec and rec.get("status") == "success" and rec.get("input_fingerprint") == info.fingerprint
        and rec.get("model_hash") == model.content_hash and rec.get("config_hash") == config_hash
    )


def output_names(class_names: Sequence[str], formats: Sequence[str]) -> list[str]:
    """File names a finished scene folder holds besides scene.json."""
    names = []
    if "geojson" in formats:
        names += [f"{plural(c)}.geojson" for c in class_names]
    if "gpkg" in formats:
        names.append("polygons.gpkg")
    if "probability" in formats:
        names.append("probability.tif")
    if "quicklook" in formats:
        names.append("quicklook.png")
    return names


def clear_scene_folder(folder: Path, class_names: Sequence[str]) -> None:
    """Remove scene.json first (the folder stops claiming completeness), then outputs."""
    for name in [SCENE_JSON, *output_names(class_names, ("geojson", "gpkg", "probability", "quicklook"))]:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    remove_partials(folder)


def check_writable(out: Path) -> None:
    """Fail before computing when the output folder cannot take files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".partial-{os.getpid()}-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output folder {out} is not writable: {exc.strerror or exc}") from None


class _SceneJob:
    """Client-side state of one scene while its blocks are computed."""

    def __init__(self, info: SceneInfo, plan: TilingPlan, folder: Path, model: ModelInfo,
                 settings: InferenceSettings) -> None:
        self.info, self.plan, self.folder, self.model, self.settings = info, plan, folder, model, settings
        self.pending: set[int] = {b.index for b in plan.blocks}
        self.next_block = 0
        self.polygons: list[list[Any]] = [[] for _ in model.class_names]
        # Blocks not collected yet. A future held by the client pins its result in worker
        # memory, so collected ones are dropped (else the whole probability raster stays there).
        self.futures: set[Any] = set()
        self.timings: dict[str, float] = {"read": 0.0, "infer": 0.0, "vectorize": 0.0}
        self.skipped_blocks = 0  # blocks without any valid pixel: no model run
        self.started = time.perf_counter()
        self.failed: str | None = None
        self.prob_writer: ProbabilityWriter | None = None
        self.thumbnail: ThumbnailCanvas | None = None
        if "quicklook" in settings.formats:
            self.thumbnail = ThumbnailCanvas(info.width, info.height,
                                             thumbnail_factor(info.width, info.height, settings.quicklook_size))
        folder.mkdir(parents=True, exist_ok=True)
        clear_scene_folder(folder, model.class_names)
        if "probability" in settings.formats:
            self.prob_writer = ProbabilityWriter(
                folder / "probability.tif", width=info.width, height=info.height,
                crs_wkt=info.crs_wkt, transform=info.affine, class_names=model.class_names,
            )

    def add(self, result: BlockResult) -> None:
        for k, p in enumerate(result.polygons):
            self.polygons[k].append(p)
        if self.prob_writer is not None and result.probability is not None:
            self.prob_writer.write(result.core, result.probability)
        if self.thumbnail is not None and result.thumbnail is not None:
            self.thumbnail.add(result.thumbnail)
        for k, v in result.timings.items():
            if k == "skipped_blocks":
                self.skipped_blocks += int(v)
            else:
                self.timings[k] = self.timings.get(k, 0.0) + v
        self.pending.discard(result.index)

    def abort(self) -> None:
        if self.prob_writer is not None:
            self.prob_writer.abort()
        clear_scene_folder(self.folder, self.model.class_names)


def finalize_scene(job: _SceneJob, config_hash: str, options: dict[str, Any]) -> SceneOutcome:
    """Merge seams, post-process in metres, write every output, then scene.json."""
    from geounet.vectorize.postprocess import areas_m2, postprocess
    from geounet.vectorize.seams import merge_seams

    info, model, s = job.info, job.model, job.settings
    t0 = time.perf_counter()
    layers: dict[str, gpd.GeoDataFrame] = {}
    counts: dict[str, int] = {}
    for k, name in enumerate(model.class_names):
        # blocks arrive in any order; merging them in grid order makes the output files
        # byte-for-byte reproducible (ring and hole order of merged polygons)
        merged = merge_seams(sorted(job.polygons[k], key=lambda b: (b.row_off, b.col_off)))
        geoms, area, score, _ = postprocess(
            merged.geoms, merged.pixel_count, merged.prob_sum, affine=info.affine, crs=info.crs_wkt,
            simplify_m=s.simplify_m, min_area_m2=s.min_area_m2, fill_holes_m2=s.fill_holes_m2,
            scene_shape=(info.height, info.width),
        )
        geoms, area, score = _single_parts(geoms, area, score, info.crs_wkt, areas_m2)
        layers[name] = gpd.GeoDataFrame(
            {
                "class": np.full(len(geoms), name, dtype=object),
                "score": np.round(np.asarray(score, dtype=np.float64), 4),
                "area_m2": np.round(np.asarray(area, dtype=np.float64), 2),
                "scene": np.full(len(geoms), info.stem, dtype=object),
                "model": np.full(len(geoms), model.short_hash, dtype=object),
            },
            geometry=gpd.GeoSeries(list(geoms), crs=info.crs_wkt),
            crs=info.crs_wkt,
        )
        counts[name] = len(geoms)
        job.polygons[k] = []  # free memory early
        del merged, geoms
        trim_heap()
    t1 = time.perf_counter()
    stage: dict[str, float] = {}

    def timed(name: str, write: Callable[[], list[Path]]) -> Callable[[], list[str]]:
        def run() -> list[str]:
            ts = time.perf_counter()
            paths = write()
            stage[f"write_{name}"] = time.perf_counter() - ts
            trim_heap()  # this writer's temporaries are garbage now: give the pages back
            return [p.name for p in paths]
        return run

    def quicklook(canvas: ThumbnailCanvas) -> list[Path]:
        # the polygons as written, mapped back onto the scene's pixel grid
        geoms = [np.asarray(layer.geometry.array, dtype=object) for layer in layers.values()]
        return [write_quicklook(canvas, geoms, job.folder / "quicklook.png", to_pixel=~info.affine)]

    vectors = [timed("quicklook", lambda c=job.thumbnail: quicklook(c))] if job.thumbnail is not None else []
    vectors += [timed(fmt, lambda w=writer: w(layers, job.folder))
                for fmt, writer in VECTOR_WRITERS.items() if fmt in s.formats]
    raster = []
    if job.prob_writer is not None:
        raster.append(timed("probability", lambda pw=job.prob_writer: [pw.finish()]))
        job.prob_writer = None
    written = _run_writers(vectors, raster)
    t2 = time.perf_counter()
    timings = {**{k: round(v, 3) for k, v in job.timings.items()},
               "merge_postprocess": round(t1 - t0, 3), "write": round(t2 - t1, 3),
               **{k: round(v, 3) for k, v in stage.items()},
               "wall": round(t2 - job.started, 3)}
    record = {
        "status": "success",
        "scene": info.path,
        "stem": info.stem,
        "input_fingerprint": info.fingerprint,
        "model_hash": model.content_hash,
        "model": model.path,
        "config_hash": config_hash,
        "options": options,
        "size": {"width": info.width, "height": info.height, "bands": list(info.bands)},
        "crs": f"EPSG:{info.epsg}" if info.epsg else info.crs_wkt,
        "tiling": {"tile_size": job.plan.tile_size, "tile_shape": list(job.plan.tile_shape),
                   "halo": job.plan.halo, "blocks": len(job.plan.blocks),
                   "tiles": job.plan.n_tiles, "overhead": round(job.plan.overhead, 3),
                   "blocks_without_valid_pixels": job.skipped_blocks},
        "timings_s": timings,
        "polygons": counts,
        "outputs": written,
        "versions": library_versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(record, job.folder / SCENE_JSON)
    return SceneOutcome(scene=info.path, stem=info.stem, status="success", out_dir=str(job.folder),
                        polygons=counts, timings=timings, pixels=info.pixels, blocks=len(job.plan.blocks))


def _run_writers(main: Sequence[Callable[[], list[str]]], beside: Sequence[Callable[[], list[str]]]) -> list[str]:
    """Run a scene's writers: ``main`` in order on this thread, ``beside`` in order on a
    helper thread at the same time. Returns the names written (``main``'s first).

    ``beside`` is the COG conversion (GDAL compresses with the GIL released); the vector
    and quicklook writers mostly hold the GIL, so splitting them further saved nothing
    measurable, and running them on other threads than the one that merged the polygons
    held more memory (glibc gives each thread its own arena): client peak 1.39 GB serial,
    1.58 GB with both groups on helper threads, 1.89 GB with four threads (12000^2 px
    scene). Every writer moves its file into place only when complete; the first failure
    is raised after both groups stopped.
    """
    if not beside:
        return [name for w in main for name in w()]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-write") as ex:
        other = ex.submit(lambda: [name for w in beside for name in w()])
        try:
            names = [name for w in main for name in w()]
        finally:
            wait([other])
    return names + other.result()


def _single_parts(geoms: Any, area: Any, score: Any, crs: str, areas: Any) -> tuple[Any, Any, Any]:
    """Split any MultiPolygon (simplification can produce one) so layers hold Polygons only;
    parts keep their polygon's score and get their own area."""
    import shapely

    geoms = np.asarray(geoms, dtype=object)
    multi = shapely.get_type_id(geoms) != 3 if len(geoms) else np.zeros(0, bool)
    if not multi.any():
        return geoms, np.asarray(area), np.asarray(score)
    parts, idx = shapely.get_parts(geoms, return_index=True)
    parts_area = np.asarray(area)[idx].astype(np.float64)
    from_multi = multi[idx]
    if from_multi.any():
        parts_area[from_multi] = areas(parts[from_multi], crs)
    return parts, parts_area, np.asarray(score)[idx]


def _describe_task_error(exc: BaseException, info: SceneInfo, block_index: int) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return (f"scene {info.path}: a worker died while processing block {block_index} on every "
                "allowed attempt (out of memory, or a crash in native code)")
    if isinstance(exc, GeounetError):
        return str(exc)
    return f"scene {info.path}: block {block_index} failed: {name}: {exc}"


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
) -> list[SceneOutcome]:
    """Segment ``scenes`` into ``out/<stem>/``; returns one outcome per scene, in order.

    Bad scenes are recorded as failed and the others go on. Environment errors (the output
    folder cannot take files) stop the run with :class:`OutputError` after cleaning up.
    """
    out = Path(out)
    check_writable(out)
    model = ModelInfo.from_checkpoint(checkpoint)
    # The header alone does not prove the weights load: check tensor shapes, content hash and
    # finite values once here, so a bad model is a CheckpointError (exit 2) before any scene
    # is reported or any block submitted. The check (0.44 s for a width-64 UNet's 124 MB on
    # this project's machine) runs in a thread beside the scene checks, the cluster's start
    # and the workers' own model load (:func:`_warm_workers`), and is waited for below.
    checked = _in_background(_check_checkpoint, checkpoint)
    thresholds = resolve_thresholds(model, settings)
    config_hash = settings.fingerprint()
    options = settings.model_dump(mode="json")
    stems = unique_stems([os.fspath(s) for s in scenes])
    outcomes: dict[int, SceneOutcome] = {}

    # 1. validate every scene before any work is scheduled
    infos: list[tuple[int, SceneInfo, TilingPlan]] = []
    for i, (path, stem) in enumerate(zip(scenes, stems)):
        path = os.fspath(path)
        folder = out / stem
        try:
            info = open_scene(path, in_channels=model.in_channels,
                              bands=settings.bands or model.bands, max_pixels=settings.max_pixels,
                              use_nodata=settings.use_nodata, stem=stem)
            plan = make_plan(info, model, settings)
        except SceneError as exc:
            outcomes[i] = SceneOutcome(scene=path, stem=stem, status="failed", out_dir=str(folder), error=str(exc))
            log.error("%s", exc)
            if (folder / SCENE_JSON).exists():
                clear_scene_folder(folder, model.class_names)
            continue
        if not force and is_complete(folder, info, model, config_hash):
            outcomes[i] = SceneOutcome(scene=path, stem=stem, status="skipped", out_dir=str(folder),
                                       polygons=(read_scene_record(folder) or {}).get("polygons", {}),
                                       pixels=info.pixels)
            continue
        infos.append((i, info, plan))
    warming: list[Any] = []
    if infos:
        ckpt_ref = _scatter_checkpoint(client, checkpoint)
        warming = _warm_workers(client, ckpt_ref, model.content_hash, settings.device)
    checked.result()  # a bad checkpoint raises here: nothing reported, no block submitted
    for i in sorted(outcomes):
        if on_outcome:
            on_outcome(outcomes[i])

    if infos:
        gpu = settings.device != "cpu" and any(client.run(cuda_available).values())
        spec = BlockTaskSpec(content_hash=model.content_hash, normalization=model.normalization,
                             thresholds=thresholds, batch_size=settings.batch_size, device=settings.device,
                             precision=settings.precision, keep_probability="probability" in settings.formats,
                             quicklook_size=settings.quicklook_size if "quicklook" in settings.formats else None)
        limit = max_in_flight or max(4, 2 * _threads(client))
        # GDAL's block cache (process-wide, 5 % of RAM by default) would otherwise fill with the
        # probability blocks streamed to disk and the quicklook read, so the client's memory
        # grew with the scene: 1.5 GB at 16384^2 px on a 24 GB machine. An explicit
        # GDAL_CACHEMAX environment variable wins.
        cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": CLIENT_GDAL_CACHE_BYTES}
        try:
            with rasterio.Env(**cache):
                _drive(client, infos, out, model, settings, spec, ckpt_ref, config_hash, options, limit,
                       gpu, progress, stop, outcomes, on_outcome)
        finally:
            # no task runs now: close every worker thread's dataset handles and give the
            # workers' freed heap back, so a run leaves no open files and no held memory
            # behind on long-lived (external) workers
            with contextlib.suppress(Exception):
                client.run(_close_worker_datasets)
    del warming  # held until here: Dask cancels a task whose futures are all released
    return [outcomes[i] for i in sorted(outcomes)]


def _in_background(fn: Callable[..., Any], *args: Any) -> LocalFuture:
    """``fn(*args)`` started in a thread of its own; its result (or error) comes from the future."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-check")
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)  # the thread ends with fn


def _scatter_checkpoint(client: Client, checkpoint: str | os.PathLike[str]) -> Any:
    """The checkpoint's bytes sent to every worker once; the client keeps only the reference
    (not the bytes: 124 MB for a width-64 UNet)."""
    return client.scatter(Path(checkpoint).read_bytes(), broadcast=True, hash=False)


def _check_checkpoint(checkpoint: str | os.PathLike[str]) -> None:
    from geounet.checkpoint import load_checkpoint

    load_checkpoint(checkpoint)


def _warm_workers(client: Client, ckpt_ref: Any, content_hash: str, device: str) -> list[Any]:
    """Start loading the model on every worker now, one task each, so that the load overlaps
    the client's checkpoint check instead of holding up the first blocks. Returns the tasks'
    futures (the caller keeps them until the run ends)."""
    workers = list((client.scheduler_info().get("workers") or {}))
    return [client.submit(_load_model, ckpt_ref, content_hash, device, workers=[w], pure=False,
                          key=f"load-model-{content_hash[:12]}-{os.urandom(4).hex()}")
            for w in workers]


def _load_model(checkpoint: bytes, content_hash: str, device: str) -> str | None:
    """On a worker: load the model into its cache. A failure is returned, not raised: the
    client's own check reports a bad checkpoint, and the blocks' tasks report a worker that
    cannot load a good one."""
    from geounet.compute import resolve_device
    from geounet.infer.model_cache import get_model

    try:
        get_model(checkpoint, content_hash, resolve_device(device))
    except Exception as exc:  # noqa: BLE001 - reported by the client's check or the first block
        return f"{type(exc).__name__}: {exc}"
    return None


def _close_worker_datasets() -> int:
    """On a worker after a run: close every dataset handle, return freed heap to the OS.

    During a run a worker keeps freed activations for reuse (``heap.tune_malloc``); after a
    4096^2 px scene that is ~400 MB (worker RSS 871 MB, 477 MB after the trim, measured on
    this project's machine). Returns how many handles were closed.
    """
    from geounet.scene.read import close_datasets

    n = close_datasets(all_threads=True)
    trim_heap()
    return n


def _threads(client: Client) -> int:
    info = client.scheduler_info()
    return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))


def _next_batch(ac: as_completed, stop: threading.Event | None) -> list[Any]:
    """Finished futures; returns [] as soon as ``stop`` is set instead of waiting for a
    long block to finish (SIGTERM must not wait for the slowest task in flight)."""
    while not ac.has_ready():
        if stop is not None and stop.wait(0.05):
            return []
        if stop is None:
            return ac.next_batch(block=True)
    return ac.next_batch(block=False)


def _drive(client, infos, out, model, settings, spec, ckpt_ref, config_hash, options, limit, gpu,
           progress, stop, outcomes, on_outcome) -> None:  # noqa: PLR0912, PLR0915
    """The event loop: submit blocks across scenes, collect results, finalize scenes."""
    todo = list(infos)
    jobs: dict[int, _SceneJob] = {}  # scene index -> job, in submission order
    where: dict[str, tuple[int, int]] = {}  # future key -> (scene index, block index)
    finals: dict[int, LocalFuture] = {}
    ac = as_completed()
    in_flight = 0
    scene_bar = tqdm(total=len(infos), desc="scenes", unit="scene", disable=not progress, position=0)
    block_bar = tqdm(total=0, desc="blocks", unit="block", disable=not progress, position=1, leave=False)
    shown: int | None = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-finalize")
    fatal: BaseException | None = None

    def record(i: int, outcome: SceneOutcome) -> None:
        outcomes[i] = outcome
        scene_bar.update(1)
        if outcome.status == "failed":
            log.error("%s", outcome.error)
        if on_outcome:
            on_outcome(outcome)

    def fail(i: int, message: str) -> None:
        job = jobs.pop(i)
        job.failed = message
        client.cancel([f for f in job.futures if not f.done()])
        job.abort()
        record(i, SceneOutcome(scene=job.info.path, stem=job.info.stem, status="failed",
                               out_dir=str(job.folder), error=message, pixels=job.info.pixels,
                               blocks=len(job.plan.blocks)))

    def show(i: int | None) -> None:
        nonlocal shown
        if i is None or i == shown or not progress:
            return
        shown = i
        job = jobs[i]
        block_bar.reset(total=len(job.plan.blocks))
        block_bar.set_description(f"blocks {job.info.stem}")
        block_bar.update(len(job.plan.blocks) - len(job.pending))

    ckpt = [ckpt_ref]
    resubmitted: dict[tuple[int, int], int] = {}

    def checkpoint_ref() -> Any:
        # Scattered data lives only in worker memory: when every worker holding it dies
        # (a task that crashes its worker, retried on the others), the scheduler cancels it
        # and every task that depends on it. Send it again to the workers alive now.
        if ckpt[0].status != "finished":
            log.warning("the model's copy on the workers was lost (every worker holding it died); "
                        "sending it again")
            ckpt[0] = _scatter_checkpoint(client, model.path)
        return ckpt[0]

    def submit(job_i: int, block: Any) -> None:
        nonlocal in_flight
        job = jobs[job_i]
        fut = client.submit(process_block, job.info, block, checkpoint_ref(), spec, pure=False,
                            key=f"block-{job.info.stem}-{block.index}-{os.urandom(4).hex()}",
                            resources={"GPU": 1} if gpu else None)
        job.futures.add(fut)
        where[fut.key] = (job_i, block.index)
        ac.add(fut)
        in_flight += 1

    def submit_more() -> None:
        while in_flight < limit and not (stop and stop.is_set()):
            job_i = next((i for i, j in jobs.items() if j.next_block < len(j.plan.blocks)), None)
            if job_i is None:
                if not todo:
                    return
                i, info, plan = todo.pop(0)
                jobs[i] = _SceneJob(info, plan, out / info.stem, model, settings)
                job_i = i
            job = jobs[job_i]
            block = job.plan.blocks[job.next_block]
            job.next_block += 1
            submit(job_i, block)

    try:
        submit_more()
        show(next(iter(jobs), None))
        while in_flight or finals:
            # finished finalizations
            for i, lf in list(finals.items()):
                if lf.done():
                    del finals[i]
                    job = jobs.pop(i)
                    try:
                        record(i, lf.result())
                    except OutputError:
                        job.abort()
                        raise
                    except Exception as exc:  # noqa: BLE001 - any failure fails this scene only
                        job.abort()
                        msg = str(exc) if isinstance(exc, GeounetError) else (
                            f"scene {job.info.path}: writing outputs failed: {type(exc).__name__}: {exc}")
                        log.debug("%s", traceback.format_exc())
                        record(i, SceneOutcome(scene=job.info.path, stem=job.info.stem, status="failed",
                                               out_dir=str(job.folder), error=msg))
            if not in_flight:
                if finals:
                    time.sleep(0.05)
                    continue
                break
            batch = _next_batch(ac, stop)
            for fut in batch:
                in_flight -= 1
                i, bidx = where.pop(fut.key)
                job = jobs.get(i)
                if job is not None:
                    job.futures.discard(fut)
                if job is None or job.failed or i in finals:
                    continue
                if fut.status == "error":
                    exc = fut.exception()
                    if isinstance(exc, OutputError):
                        raise exc
                    fail(i, _describe_task_error(exc, job.info, bidx))
                    continue
                try:
                    result = fut.result()
                except FutureCancelledError:
                    # not cancelled by us (those scenes were skipped above): the scheduler
                    # lost the block's inputs because the workers holding them died. Submit
                    # it once more (checkpoint_ref sends the model again), then fail the
                    # scene rather than wait forever or drop it.
                    if resubmitted.get((i, bidx), 0) < 1:
                        resubmitted[(i, bidx)] = 1
                        submit(i, job.plan.blocks[bidx])
                    else:
                        fail(i, f"scene {job.info.path}: a worker died while processing block {bidx}, and "
                                "the workers holding its inputs died with it, twice (out of memory, or a "
                                "crash in native code)")
                    continue
                job.add(result)
                if shown == i:
                    block_bar.update(1)
                if not job.pending:
                    finals[i] = pool.submit(finalize_scene, job, config_hash, options)
                    nxt = next((k for k in jobs if k not in finals), None)
                    show(nxt)
            if stop and stop.is_set():
                for i in [k for k in jobs if k not in finals]:
                    fail(i, f"scene {jobs[i].info.path}: interrupted before it finished")
                in_flight = 0
            else:
                submit_more()
    except BaseException as exc:
        fatal = exc
        raise
    finally:
        for lf in finals.values():
            with contextlib.suppress(Exception):
                lf.result()
        pool.shutdown(wait=True)
        for i, job in list(jobs.items()):
            client.cancel([f for f in job.futures if not f.done()])
            job.abort()
            reason = f"run stopped: {fatal}" if fatal is not None else f"scene {job.info.path}: did not finish"
            outcomes[i] = SceneOutcome(scene=job.info.path, stem=job.info.stem, status="failed",
                                       out_dir=str(job.folder), error=reason)
        block_bar.close()
        scene_bar.close()
    for i, info, _plan in todo:
        outcomes.setdefault(i, SceneOutcome(scene=info.path, stem=info.stem, status="failed",
                                            out_dir=str(out / info.stem),
                                            error=f"scene {info.path}: not started (run interrupted)"))
