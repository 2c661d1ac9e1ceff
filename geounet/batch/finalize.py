"""Finish a scene on the client once its last block arrived: merge seams, post-process in
metres, run every writer, then write scene.json (the proof that the scene is complete).

Runs on a client-side thread while the workers go on with the next scenes. The
:class:`SceneJob` holds what the scene's blocks delivered until then: per-class block
polygons, the streaming probability writer and the quicklook canvas.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from geounet import __version__
from geounet.atomic import write_json
from geounet.batch.outcomes import SceneOutcome
from geounet.checkpoint import CheckpointMetadata
from geounet.checkpoint.metadata import is_building_name
from geounet.errors import ConfigError
from geounet.export.layout import (
    PROBABILITY_NAME,
    QUICKLOOK_NAME,
    SCENE_JSON,
    centerline_layer,
    clear_scene_folder,
    node_layer,
    output_sizes,
    raw_layer,
)
from geounet.export.probability import ProbabilityWriter
from geounet.export.quicklook import ThumbnailCanvas, thumbnail_factor, write_quicklook
from geounet.export.stac import scene_item, write_item
from geounet.export.vectors import VECTOR_WRITERS, VectorWriter
from geounet.heap import trim_heap
from geounet.infer.block import BlockResult, BlockTaskSpec
from geounet.scene.normalize import InputMoments, input_warning
from geounet.scene.plan import TilingPlan
from geounet.scene.source import SceneInfo, ground_pixel_size_m
from geounet.scene.stac import StacScene
from geounet.settings import InferenceSettings
from geounet.vectorize.network import GraphParams, LinearStage, graph_tables
from geounet.vectorize.postprocess import areas_m2, postprocess, single_parts, to_pixels
from geounet.vectorize.regularize import regularize_in_crs
from geounet.vectorize.seams import merge_seams
from geounet.vectorize.separate import EdgeCrop, SeparationParams, seam_lines, separate_merged

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the outputs (recorded in scene.json and run.json)."""
    import dask
    import rasterio
    import shapely
    import torch

    return {
        "geounet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "shapely": shapely.__version__,
        "dask": dask.__version__,
        "numpy": np.__version__,
    }


def _building_classes(
    key: str, enabled: bool, named: list[str] | None, class_names: Sequence[str], settings: InferenceSettings
) -> list[str]:
    """The classes a building step (``key``: regularize, separate) applies to: those it names,
    else those named like buildings; none when it is off or no vector format is written."""
    if not enabled or not {"geojson", "gpkg"} & set(settings.formats):
        return []
    if named is None:
        return [c for c in class_names if is_building_name(c)]
    unknown = sorted(set(named) - set(class_names))
    if unknown:
        raise ConfigError(
            f"{key}.classes names {unknown}, which the model does not predict; its classes are {list(class_names)}"
        )
    return [c for c in class_names if c in named]


def regularized_classes(class_names: Sequence[str], settings: InferenceSettings) -> list[str]:
    """Classes whose outlines are regularized: ``regularize.classes``, else those named like
    buildings; none when ``regularize.enabled`` is off or no vector format (geojson, gpkg) is
    written.

    Raises:
        ConfigError: ``regularize.classes`` names a class the model does not predict.
    """
    r = settings.regularize
    return _building_classes("regularize", r.enabled, r.classes, class_names, settings)


def separated_classes(class_names: Sequence[str], settings: InferenceSettings) -> list[str]:
    """Classes whose touching buildings are split (``separate``), chosen like
    :func:`regularized_classes`.

    Raises:
        ConfigError: ``separate.classes`` names a class the model does not predict.
    """
    r = settings.separate
    return _building_classes("separate", r.enabled, r.classes, class_names, settings)


class SceneJob:
    """Client-side state of one scene while its blocks are computed."""

    def __init__(
        self,
        info: SceneInfo,
        plan: TilingPlan,
        folder: Path,
        model: CheckpointMetadata,
        settings: InferenceSettings,
        spec: BlockTaskSpec,
        source: StacScene | None = None,
    ) -> None:
        self.info, self.plan, self.folder, self.model, self.settings = info, plan, folder, model, settings
        self.source = source  # the STAC item the scene came from, if any
        # Everything downstream of the blocks is on the plan's model grid (the scene's own
        # pixels unless resampled): polygons in its pixels, its affine, its probability raster.
        self.grid = plan.model_grid
        self.affine = self.grid.transform(info.affine)
        # this scene's block task spec: the run's, with the scene's grid
        self.class_names = list(model.spec.classes)
        self.pixel_m = (
            ground_pixel_size_m(info.crs_wkt, tuple(self.affine)[:6], self.grid.width, self.grid.height) or 1.0
        )
        separate = {
            self.class_names.index(c): SeparationParams.from_settings(
                settings.separate, self.pixel_m, spec.thresholds[self.class_names.index(c)]
            )
            for c in separated_classes(self.class_names, settings)
        }
        self.spec = dataclasses.replace(spec, grid=self.grid, separate=separate)
        self.edge_crops: dict[int, list[EdgeCrop]] = {k: [] for k in separate}
        self.split_blocks: dict[int, int] = dict.fromkeys(separate, 0)  # regions split on the workers
        self.pending: set[int] = {b.index for b in plan.blocks}
        self.next_block = 0
        self.polygons: list[list[Any]] = [[] for _ in self.class_names]
        # Blocks not collected yet. A future held by the client pins its result in worker
        # memory, so collected ones are dropped (else the whole probability raster stays there).
        self.futures: set[Any] = set()
        self.timings: dict[str, float] = {"read": 0.0, "infer": 0.0, "vectorize": 0.0}
        self.skipped_blocks = 0  # blocks without any valid pixel: no model run
        self.moments: InputMoments | None = None  # the blocks' valid normalized pixels, summed (input range check)
        self.started = time.perf_counter()
        self.failed: str | None = None
        self.prob_writer: ProbabilityWriter | None = None
        self.linear_stage: LinearStage | None = None
        self.thumbnail: ThumbnailCanvas | None = None
        if "quicklook" in settings.formats:
            gw, gh = self.grid.width, self.grid.height
            self.thumbnail = ThumbnailCanvas(gw, gh, thumbnail_factor(gw, gh, settings.quicklook_size))
        folder.mkdir(parents=True, exist_ok=True)
        clear_scene_folder(folder, self.class_names)
        if self.spec.linear:
            self.linear_stage = LinearStage(
                folder,
                width=self.grid.width,
                height=self.grid.height,
                classes=[self.class_names[k] for k in self.spec.linear],
                crs_wkt=info.crs_wkt,
                transform=self.affine,
            )
        if "probability" in settings.formats:
            self.prob_writer = ProbabilityWriter(
                folder / PROBABILITY_NAME,
                width=self.grid.width,
                height=self.grid.height,
                crs_wkt=info.crs_wkt,
                transform=self.affine,
                class_names=self.class_names,
            )

    def add(self, result: BlockResult) -> None:
        """Take one block's result: polygons kept, probabilities streamed to disk."""
        for k, p in enumerate(result.polygons):
            self.polygons[k].append(p)
        for k, crops in result.edge_crops.items():
            self.edge_crops[k].extend(crops)
        for k, n in result.split.items():
            self.split_blocks[k] += n
        if self.prob_writer is not None and result.probability is not None:
            self.prob_writer.write(result.core, result.probability)
        if self.linear_stage is not None and result.linear is not None:
            self.linear_stage.write(result.core, result.linear)
        if self.thumbnail is not None and result.thumbnail is not None:
            self.thumbnail.add(result.thumbnail)
        if result.moments is not None:
            self.moments = result.moments if self.moments is None else self.moments + result.moments
        for stage, seconds in result.timings.items():
            if stage == "skipped_blocks":
                self.skipped_blocks += int(seconds)
            else:
                self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self.pending.discard(result.index)

    def abort(self) -> None:
        """Drop everything this scene wrote so far."""
        if self.prob_writer is not None:
            self.prob_writer.abort()
        if self.linear_stage is not None:
            self.linear_stage.remove()
        clear_scene_folder(self.folder, self.class_names)

    def seams(self) -> np.ndarray:
        """The internal sides of the plan's block cores, as lines in model-grid pixels."""
        cores = [
            (int(b.core.col_off), int(b.core.row_off), int(b.core.width), int(b.core.height)) for b in self.plan.blocks
        ]
        return seam_lines(cores, self.grid.width, self.grid.height)

    def outcome(self, status: str, error: str | None = None) -> SceneOutcome:
        """A failed (or other) outcome for this scene, without polygons."""
        return SceneOutcome(
            scene=self.info.path,
            stem=self.info.stem,
            status=status,  # type: ignore[arg-type]
            out_dir=str(self.folder),
            error=error,
            pixels=self.info.pixels,
            blocks=len(self.plan.blocks),
            stac_item=self.source.item_id if self.source is not None else None,
        )


@dataclasses.dataclass
class _PolygonLayers:
    """A scene's polygon classes after the seam merge, post-processing and regularization."""

    layers: dict[str, gpd.GeoDataFrame] = dataclasses.field(default_factory=dict)
    pixel_layers: list[np.ndarray] = dataclasses.field(default_factory=list)  # as written, in pixels, for the quicklook
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    regularized: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    separated: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    regularize_s: float = 0.0
    separate_s: float = 0.0


def _polygon_layers(job: SceneJob, regular: Sequence[str]) -> _PolygonLayers:
    """Merge each class's block polygons across seams, split touching buildings, post-process in
    metres and regularize: the layers to write (the pixel outlines of regularized classes too)."""
    info, s = job.info, job.settings
    out = _PolygonLayers()
    layers, pixel_layers, counts = out.layers, out.pixel_layers, out.counts
    regularized, separated = out.regularized, out.separated
    for k, name in enumerate(job.class_names):
        # blocks arrive in any order; merging them in grid order makes the output files
        # byte-for-byte reproducible (ring and hole order of merged polygons)
        merged = merge_seams(sorted(job.polygons[k], key=lambda b: (b.row_off, b.col_off)))
        if k in job.spec.separate:  # touching buildings across seams: split from their pieces' crops
            ts = time.perf_counter()
            merged, n_seam = separate_merged(merged, job.edge_crops[k], job.seams(), job.spec.separate[k])
            separated[name] = {"regions_split": job.split_blocks[k] + n_seam, "at_seams": n_seam}
            job.edge_crops[k] = []
            out.separate_s += time.perf_counter() - ts
        kept = postprocess(
            merged.geoms,
            merged.pixel_count,
            merged.prob_sum,
            affine=job.affine,
            crs=info.crs_wkt,
            simplify_m=s.simplify_m,
            min_area_m2=max(s.min_area_m2, s.min_building_m2) if is_building_name(name) else s.min_area_m2,
            fill_holes_m2=s.fill_holes_m2,
            scene_shape=(job.grid.height, job.grid.width),
        )
        geoms, area, score = single_parts(kept.geoms, kept.area_m2, kept.score, info.crs_wkt)
        pixel_geoms = kept.pixel_geoms
        raw = None
        if name in regular:  # after the seam merge: the outlines do not depend on the block grid
            ts = time.perf_counter()
            raw = _polygon_layer(job, name, geoms, area, score)
            geoms, area, regularized[name] = _regularize(job, geoms, area)
            if job.thumbnail is not None:
                pixel_geoms = to_pixels(geoms, job.affine)
            out.regularize_s += time.perf_counter() - ts
        if job.thumbnail is not None:  # the quicklook draws the polygons as written, in pixels
            pixel_layers.append(pixel_geoms)
        layers[name] = _polygon_layer(job, name, geoms, area, score)
        if raw is not None:
            layers[raw_layer(name)] = raw  # the pixel outlines: GeoPackage only
        counts[name] = len(geoms)
        job.polygons[k] = []  # free memory early
        del merged, kept, geoms, pixel_geoms, raw
        trim_heap()
    return out


def finalize_scene(job: SceneJob, config_hash: str, options: dict[str, Any], model_path: str) -> SceneOutcome:
    """Merge seams, post-process in metres, write every output, then scene.json."""
    info, model, s = job.info, job.model, job.settings
    t0 = time.perf_counter()
    regular = regularized_classes(job.class_names, s)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="geounet-roads") as side:
        # the road graphs trace their own staged mask: beside the polygon steps, on a second core
        roads = side.submit(_road_graphs, job) if job.linear_stage is not None else None
        polys = _polygon_layers(job, regular)
        graph_layers, graphs = roads.result() if roads is not None else ({}, {})
    layers, pixel_layers, counts = polys.layers, polys.pixel_layers, polys.counts
    regularized, separated = polys.regularized, polys.separated
    regularize_s, separate_s = polys.regularize_s, polys.separate_s
    layers.update(graph_layers)  # after the polygon layers, as the files always had them
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

    def vector_writer(writer: VectorWriter) -> Callable[[], list[Path]]:
        return lambda: writer(layers, job.folder)

    vectors: list[Callable[[], list[str]]] = []
    if job.thumbnail is not None:
        canvas = job.thumbnail

        # the road graphs as written, in pixels (graph edges are few: a copy costs little)
        graph_lines = [
            to_pixels(layers[centerline_layer(name)].geometry.values, job.affine)
            for name in graphs
            if centerline_layer(name) in layers
        ]
        pixel_lines = np.concatenate(graph_lines) if graph_lines else np.empty(0, dtype=object)

        def quicklook() -> list[Path]:
            try:
                return [write_quicklook(canvas, pixel_layers, job.folder / QUICKLOOK_NAME, pixel_lines)]
            finally:
                pixel_layers.clear()  # the pixel copies are needed by the quicklook only

        vectors.append(timed("quicklook", quicklook))
    vectors += [timed(fmt, vector_writer(writer)) for fmt, writer in VECTOR_WRITERS.items() if fmt in s.formats]
    raster: list[Callable[[], list[str]]] = []
    if job.prob_writer is not None:
        prob_writer = job.prob_writer
        raster.append(timed("probability", lambda: [prob_writer.finish()]))
        job.prob_writer = None
    written = run_writers(vectors, raster)
    if "stac" in s.formats:  # the item lists the outputs above; scene.json (last) lists it
        ts = time.perf_counter()
        item = scene_item(
            info=info,
            grid_transform=job.affine,
            grid_shape=(job.grid.height, job.grid.width),
            class_names=job.class_names,
            counts=counts,
            written=written,
            model=model,
            model_path=model_path,
            config_hash=config_hash,
            source=job.source,
        )
        written.append(write_item(job.folder, item).name)
        stage["write_stac"] = time.perf_counter() - ts
    t2 = time.perf_counter()
    input_warn = None
    if job.moments is not None:
        input_warn = input_warning(
            job.moments, model.normalization, dtype=info.dtype, bands=info.bands, scene=info.path
        )
    if input_warn is not None:
        log.warning("%s", input_warn)
    timings = {
        **{k: round(v, 3) for k, v in job.timings.items()},
        "merge_postprocess": round(t1 - t0, 3),
        **({"regularize": round(regularize_s, 3)} if regular else {}),
        **({"separate_seams": round(separate_s, 3)} if job.spec.separate else {}),
        "write": round(t2 - t1, 3),
        **{k: round(v, 3) for k, v in stage.items()},
        "wall": round(t2 - job.started, 3),
    }
    record = {
        "status": "success",
        "scene": info.path,
        "stem": info.stem,
        "stac": job.source.record() if job.source is not None else None,
        "input_fingerprint": info.fingerprint,
        "model_hash": model.content_hash,
        "model_fingerprint": model.output_fingerprint,  # resume compares this one
        "model": model_path,
        "config_hash": config_hash,
        "options": options,
        "size": {"width": info.width, "height": info.height, "bands": list(info.bands)},
        "crs": f"EPSG:{info.epsg}" if info.epsg else info.crs_wkt,
        "tiling": {
            "tile_size": job.plan.tile_size,
            "tile_shape": list(job.plan.tile_shape),
            "halo": job.plan.halo,
            "blocks": len(job.plan.blocks),
            "tiles": job.plan.n_tiles,
            "overhead": round(job.plan.overhead, 3),
            "blocks_without_valid_pixels": job.skipped_blocks,
            "tta": s.tta,
        },
        # the grid the model ran on (tiling, polygons' pixels and probability.tif are on it)
        "model_grid": {
            "width": job.grid.width,
            "height": job.grid.height,
            "scale": job.grid.scale,
            "resampled": job.grid.resampled,
        },
        "scene_gsd_m": _rounded(job.grid.scene_gsd_m),
        "model_gsd_m": job.grid.model_gsd_m,
        "gsd_warning": job.grid.warning,
        "input_warning": input_warn,  # pixels far from the model's training data (dtype, scaling), else None
        "timings_s": timings,
        "polygons": counts,
        "centerlines": graphs,  # per linear class: edges, nodes, length_km (time: timings_s.centerlines)
        "regularized": regularized,  # per regularized class: outlines regularized, outlines kept raw
        "separated": separated,  # per split class: regions split into buildings, of them across seams
        "outputs": output_sizes(job.folder, written),  # {file name: bytes}: resume checks them
        "versions": library_versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(record, job.folder / SCENE_JSON)
    return SceneOutcome(
        scene=info.path,
        stem=info.stem,
        status="success",
        out_dir=str(job.folder),
        polygons=counts,
        timings=timings,
        pixels=info.pixels,
        blocks=len(job.plan.blocks),
        stac_item=job.source.item_id if job.source is not None else None,
    )


def _polygon_layer(
    job: SceneJob, name: str, geoms: np.ndarray, area: np.ndarray, score: np.ndarray
) -> gpd.GeoDataFrame:
    """A class's polygons with their attributes (class, score, area_m2, scene, model)."""
    crs = job.info.crs_wkt
    return gpd.GeoDataFrame(
        {
            "class": np.full(len(geoms), name, dtype=object),
            "score": np.round(np.asarray(score, dtype=np.float64), 4),
            "area_m2": np.round(np.asarray(area, dtype=np.float64), 2),
            "scene": np.full(len(geoms), job.info.stem, dtype=object),
            "model": np.full(len(geoms), job.model.short_hash, dtype=object),
        },
        geometry=gpd.GeoSeries(list(geoms), crs=crs),
        crs=crs,
    )


def _regularize(job: SceneJob, geoms: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Regularize a class's outlines (scene CRS): the outlines (regularized or as given), their
    areas (m², recomputed where regularized, as postprocess measures them) and the counts for
    scene.json."""
    info, grid = job.info, job.grid
    width, height = grid.width, grid.height
    pixel_m = ground_pixel_size_m(info.crs_wkt, tuple(job.affine)[:6], width, height) or 1.0
    r = regularize_in_crs(
        geoms,
        info.crs_wkt,
        center_xy=job.affine @ (width / 2.0, height / 2.0),
        settings=job.settings.regularize,
        pixel_m=pixel_m,
    )
    area = np.asarray(area, dtype=np.float64).copy()
    area[r.regularized] = areas_m2(r.geoms[r.regularized], info.crs_wkt)
    done = int(r.regularized.sum())
    return r.geoms, area, {"regularized": done, "kept_raw": len(geoms) - done}


def _road_graphs(job: SceneJob) -> tuple[dict[str, gpd.GeoDataFrame], dict[str, dict[str, int | float]]]:
    """Trace the staged linear classes into centerline graphs: their layers
    (``<class>_centerlines``, ``<class>_nodes``) and their summary."""
    stage, info, model = job.linear_stage, job.info, job.model
    assert stage is not None
    t0 = time.perf_counter()
    pixel_m = ground_pixel_size_m(info.crs_wkt, tuple(job.affine)[:6], job.grid.width, job.grid.height) or 1.0
    try:
        graphs = stage.graphs(GraphParams.from_settings(job.settings.centerlines, pixel_m))
    finally:
        stage.remove()
        job.linear_stage = None
    summary: dict[str, dict[str, int | float]] = {}
    layers: dict[str, gpd.GeoDataFrame] = {}
    for name, graph in zip(stage.classes, graphs):
        t = graph_tables(graph, job.affine, info.crs_wkt, pixel_m)
        common = {"class": name, "scene": info.stem, "model": model.short_hash}

        def columns(n: int, common: dict[str, str] = common) -> dict[str, np.ndarray]:
            return {k: np.full(n, v, dtype=object) for k, v in common.items()}

        layers[centerline_layer(name)] = gpd.GeoDataFrame(
            {
                "u": t.u,
                "v": t.v,
                "length_m": np.round(t.length_m, 2),
                "width_m": np.round(t.width_m, 2),
                "score": np.round(t.score, 4),
                **columns(len(t.u)),
            },
            geometry=gpd.GeoSeries(list(t.lines), crs=info.crs_wkt),
            crs=info.crs_wkt,
        )
        layers[node_layer(name)] = gpd.GeoDataFrame(
            {
                "id": t.node_id,
                "degree": t.degree,
                **{k: np.full(len(t.node_id), v, dtype=object) for k, v in common.items()},
            },
            geometry=gpd.GeoSeries(list(t.points), crs=info.crs_wkt),
            crs=info.crs_wkt,
        )
        summary[name] = {
            "edges": len(t.u),
            "nodes": len(t.node_id),
            "length_km": round(float(t.length_m.sum()) / 1000, 3),
        }
    job.timings["centerlines"] = time.perf_counter() - t0
    return layers, summary


def _rounded(metres: float | None) -> float | None:
    """A measured pixel size for scene.json (micrometres are float noise)."""
    return None if metres is None else round(metres, 6)


def run_writers(main: Sequence[Callable[[], list[str]]], beside: Sequence[Callable[[], list[str]]]) -> list[str]:
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
