"""Held-out areas: a checkpoint measured on real imagery that no training run reads.

  python benchmarks/bench_heldout.py --model out/heldout/dev-model.safetensors --label dev-real
      every area below; one `geounet run` per area (the CLI, as a user runs it), scored with
      geounet.evaluate; writes benchmarks/results/heldout/<label>.json and prints a Markdown
      table: one row per area, an "average over areas at 0.3-1 m" row
  python benchmarks/bench_heldout.py --model geounet/weights/default.safetensors --label default
  python benchmarks/bench_heldout.py --model geounet/weights/synthetic.safetensors --label synthetic
  python benchmarks/bench_heldout.py --model M --label L --areas dsg-brazil las-vegas --threads 1
      some areas only; --threads / --workers shape geounet's embedded cluster, --nice lowers
      the priority of the inference processes (e.g. beside a training run)
  python benchmarks/bench_heldout.py --model M --label L --tta
      test-time augmentation (8 flips and quarter turns per tile)
  python benchmarks/bench_heldout.py --model M --label L --copy-quicklooks benchmarks/results/heldout
      also copy the quicklooks of three named scenes (a building area, dubai-tile8, las-vegas;
      --quicklook-scenes AREA=SCENE overrides) to DIR as <label>_<area>.png
  python benchmarks/bench_heldout.py --model M --label L --gsd-check
      each scene of dsg-brazil and massachusetts (--gsd-areas; fair-nairobi adds its z19
      mosaic) resampled to 0.5x, 1x and 2x its pixel size (bilinear, nodata kept), the model
      run on each, building F1 per factor: the model resamples every scene to its own pixel
      size, so F1 should stay within ~0.1 across factors. Writes <label>_gsd.json.

Areas (data in ../shared/data/real, see its PROVENANCE.md; prepared copies, predictions and
workflows go under --work, default out/heldout, which git ignores):

  fair-nairobi   fAIr/OpenAerialMap 256 px XYZ chips of Nairobi (data/5), mosaicked per zoom
                 with rasterio.merge: z19 (0.30 m) and z20 (0.15 m), EPSG:3857, chip coverage
                 as the GeoTIFF's internal mask; truth: OSM buildings clipped to the chips.
                 Buildings only.
  dsg-brazil     Brazilian Army orthoimage, 12 GeoTIFF tiles of ~571 px, 0.35 m, EPSG:31982;
                 buildings.geojson. Buildings only.
  massachusetts  Massachusetts Buildings 23429155_15 (uint16 holding 0-255, 1 m, nodata 255);
                 its GeoPackage (one misnamed layer). Buildings only.
  dubai-tile8    Humans in the Loop Dubai, Tile 8 (9 JPEGs): no georeferencing, so each image
                 is written as a GeoTIFF in EPSG:32640 at an ASSUMED 0.5 m (the set documents
                 no pixel size); colour-coded masks -> building and road-surface polygons.
                 Unlabeled (155,155,155) and undocumented colours (black) are excluded: a
                 valid-pixel raster for the pixel metrics, and predicted buildings lying mostly
                 there are dropped / predicted roads cut out before scoring.
  new-brunswick  New Brunswick aerial, 0.5 m, EPSG:2953; BakerLake land cover, Niveau_2 =
                 Building / Road (road polygons).
  las-vegas      SpaceNet 3 Las Vegas img0 (bands 1,2,3 of 4; EPSG:4326, ~0.3 m); road
                 centerlines buffered to 7 m for pixel IoU and APLS. Buildings not labelled.

Metrics (geounet.evaluate.score.evaluate_scene per scene, counts summed per area as
evaluate_many does): building F1 at IoU >= 0.5 (SpaceNet), building and road pixel IoU on the
scene's own grid (nodata / mask excluded), APLS (mean over the scenes that define it; for
areas with road polygons it is computed on their skeletons). Seconds: wall time of the
area's `geounet run` (process start and the embedded Dask cluster included) and of scoring.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import RESULTS, ROOT, machine

DATA = ROOT.parent / "shared" / "data" / "real"
OUT_RESULTS = RESULTS / "heldout"
FAIR_NAIROBI = DATA / "hotosm-fair-oam/ramp-data/TRAIN/HOTOSM/2/data/5"
DSG = DATA / "dsg-brazil/tests/testing_data/data/build_masks_data"
GDL = DATA / "geo-deep-learning"
DUBAI_TILE8 = DATA / "dubai-hitl/dataset/Tile 8"
APLS = DATA / "apls"

DUBAI_CRS = "EPSG:32640"  # UTM 40N, where Dubai lies
DUBAI_GSD_M = 0.5  # assumed: the set documents no pixel size (~0.5 m by eye)
DUBAI_COLOURS = {  # Humans in the Loop classes.json
    "building": (60, 16, 152),
    "land": (132, 41, 246),
    "road": (110, 193, 228),
    "vegetation": (254, 221, 58),
    "water": (226, 169, 41),
    "unlabeled": (155, 155, 155),
}
VEGAS_ROAD_WIDTH_M = 7.0
# The "average over areas at 0.3-1 m" takes the areas (or, for fair-nairobi, the zoom groups)
# whose pixel size, as geounet measures it on the ground, is in this range: 0.3-1 m nominal,
# with room for the measured 0.2975 m of the z19 chips and 0.27 m of Las Vegas (0.24 x 0.30 m
# pixels in degrees at 36 N); it leaves out fair-nairobi z20 (0.15 m).
AVERAGE_GSD_M = (0.25, 1.05)
QUICKLOOK_SCENES = {
    "dsg-brazil": "Ortoimagem_MI_2970-1-SO_996",
    "dubai-tile8": "tile8_image_part_008",
    "las-vegas": "RGB-PanSharpen_AOI_2_Vegas_img0",
}
GSD_FACTORS = (0.5, 1.0, 2.0)
OFFSET_PIXEL_M = 0.5  # grid of the placement check, metres
OFFSET_MAX_M = 12.0  # largest shift it tries, metres
TIFF_OPTS = {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}


# ---------------------------------------------------------------------------------------
# Scenes and areas
# ---------------------------------------------------------------------------------------


@dataclass
class Scene:
    """One GeoTIFF to predict and what to score it against.

    ``raster`` gives the evaluation grid and its valid pixels (default: the image itself);
    ``exclude`` is a vector file of regions whose predictions are not scored (Dubai's
    unlabeled pixels); ``group`` splits an area's rows by pixel size (fAIr zooms).
    """

    name: str
    image: Path
    truth: Path
    raster: Path | None = None
    exclude: Path | None = None
    group: str | None = None


@dataclass
class Area:
    name: str
    prepare: Callable[[Path], list[Scene]]
    marker: str  # a path fragment of the area's data, looked for in the checkpoint's provenance
    notes: str
    bands: tuple[int, ...] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _write_tif(path: Path, data: np.ndarray, transform: Any, crs: Any, nodata: float | None = None) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    profile = dict(TIFF_OPTS, count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype)
    with rasterio.open(tmp, "w", crs=crs, transform=transform, nodata=nodata, **profile) as dst:
        dst.write(data)
    tmp.replace(path)


def _prepare_fair_nairobi(work: Path) -> list[Scene]:
    """One mosaic per zoom, the chips' footprint as its internal mask; truth clipped to it."""
    import geopandas as gpd
    import rasterio
    import rasterio.features
    import rasterio.merge
    import shapely

    scenes = []
    truth_all = gpd.read_file(FAIR_NAIROBI / "labels.geojson")
    for zoom in (19, 20):
        name = f"fair-nairobi_z{zoom}"
        image, truth = work / f"{name}.tif", work / f"{name}_truth.gpkg"
        scenes.append(Scene(name, image, truth, group=f"z{zoom}"))
        if image.exists() and truth.exists():
            continue
        chips = sorted(FAIR_NAIROBI.glob(f"OAM-*-{zoom}.png"))
        # EMPTY_DIR would hide the .aux.xml sidecars that hold the chips' georeferencing
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="TRUE", GDAL_TIFF_INTERNAL_MASK="YES"):
            sources = [rasterio.open(p) for p in chips]
            try:
                if any(s.crs is None for s in sources):
                    raise RuntimeError(
                        f"{FAIR_NAIROBI}: chips opened without a CRS; the .aux.xml sidecars were not read"
                    )
                crs = sources[0].crs
                boxes = [shapely.box(*s.bounds) for s in sources]
                mosaic, transform = rasterio.merge.merge(sources, nodata=0)
            finally:
                for s in sources:
                    s.close()
            covered = rasterio.features.rasterize(
                ((b, 255) for b in boxes), out_shape=mosaic.shape[1:], transform=transform, fill=0, dtype="uint8"
            )
            tmp = image.with_name(image.name + ".partial")
            image.parent.mkdir(parents=True, exist_ok=True)
            profile = dict(TIFF_OPTS, count=3, height=mosaic.shape[1], width=mosaic.shape[2], dtype="uint8")
            with rasterio.open(tmp, "w", crs=crs, transform=transform, **profile) as dst:
                dst.write(mosaic)
                dst.write_mask(covered)
            tmp.replace(image)
        coverage = shapely.union_all(boxes)
        labels = truth_all.to_crs(crs)
        clipped = labels.clip(coverage)
        clipped = clipped[~clipped.is_empty & clipped.geom_type.isin(["Polygon", "MultiPolygon"])]
        clipped[["geometry"]].to_file(truth, layer="buildings", driver="GPKG")
        print(
            f"  {name}: {len(chips)} chips -> {mosaic.shape[2]}x{mosaic.shape[1]} px; "
            f"{len(clipped)} of {len(labels)} labels on the chips"
        )
    return scenes


def _prepare_dsg_brazil(work: Path) -> list[Scene]:
    tiles = sorted((DSG / "images").rglob("*.tif"))
    if not tiles:
        raise FileNotFoundError(f"no GeoTIFF tiles under {DSG / 'images'}")
    return [Scene(t.stem, t, DSG / "buildings.geojson") for t in tiles]


def _prepare_massachusetts(work: Path) -> list[Scene]:
    return [Scene("23429155_15", GDL / "23429155_15.tif", GDL / "23429155_15.gpkg")]


def _read_mask_rgb(path: Path) -> np.ndarray:
    """A colour-coded mask as (3, H, W) uint8; a 1-band paletted PNG is expanded through its palette."""
    import rasterio
    import rasterio.errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        src = rasterio.open(path)
    with src:
        data = src.read()
        if src.count == 1:
            lut = np.zeros((256, 3), dtype=np.uint8)
            for k, rgba in src.colormap(1).items():
                lut[k] = rgba[:3]
            return np.moveaxis(lut[data[0]], -1, 0)
    return data[:3]


def _is_colour(mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Pixels of a (3, H, W) colour-coded mask that have ``colour``."""
    return np.all(mask == np.array(colour, dtype=np.uint8)[:, None, None], axis=0)


def _polygons(m: np.ndarray, transform: Any, crs: str) -> Any:
    """The connected regions of a boolean mask as polygons (rasterio.features.shapes)."""
    import geopandas as gpd
    import rasterio.features
    import shapely

    shapes = rasterio.features.shapes(m.astype(np.uint8), mask=m, transform=transform)
    return gpd.GeoSeries([shapely.geometry.shape(g) for g, v in shapes if v == 1], crs=crs)


def _prepare_dubai_tile8(work: Path) -> list[Scene]:
    """GeoTIFFs at an assumed 0.5 m in UTM 40N, truth polygons and a valid-pixel raster per image."""
    import geopandas as gpd
    import rasterio
    import rasterio.errors
    import rasterio.features
    from affine import Affine

    scenes = []
    images = sorted((DUBAI_TILE8 / "images").glob("*.jpg"))
    for i, jpg in enumerate(images):
        name = f"tile8_{jpg.stem}"
        image, truth = work / f"{name}.tif", work / f"{name}_truth.gpkg"
        valid_tif, unlabeled = work / f"{name}_valid.tif", work / f"{name}_unlabeled.gpkg"
        scenes.append(Scene(name, image, truth, raster=valid_tif, exclude=unlabeled))
        if all(p.exists() for p in (image, truth, valid_tif, unlabeled)):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # the JPEGs have none
            with rasterio.open(jpg) as src:
                rgb = src.read()
        mask = _read_mask_rgb(DUBAI_TILE8 / "masks" / f"{jpg.stem}.png")
        if mask.shape[1:] != rgb.shape[1:]:
            raise RuntimeError(f"{jpg}: mask is {mask.shape[1:]} px, image {rgb.shape[1:]}")
        # images side by side 1.5 km apart (each is at most 2149 px x 0.5 m = 1.07 km wide)
        transform = Affine(DUBAI_GSD_M, 0, 320_000 + 1_500 * i, 0, -DUBAI_GSD_M, 2_790_000)
        _write_tif(image, rgb, transform, DUBAI_CRS)

        documented = np.zeros(mask.shape[1:], dtype=bool)
        for cls, colour in DUBAI_COLOURS.items():
            if cls != "unlabeled":
                documented |= _is_colour(mask, colour)
        _write_tif(valid_tif, documented[None].astype(np.uint8), transform, DUBAI_CRS, nodata=0)

        tmp = truth.with_name(truth.name + ".partial.gpkg")
        tmp.unlink(missing_ok=True)
        buildings = _polygons(_is_colour(mask, DUBAI_COLOURS["building"]), transform, DUBAI_CRS)
        roads = _polygons(_is_colour(mask, DUBAI_COLOURS["road"]), transform, DUBAI_CRS)
        gpd.GeoDataFrame(geometry=buildings).to_file(tmp, layer="buildings", driver="GPKG")
        gpd.GeoDataFrame(geometry=roads).to_file(tmp, layer="roads", driver="GPKG")
        tmp.replace(truth)
        gpd.GeoDataFrame(geometry=_polygons(~documented, transform, DUBAI_CRS)).to_file(unlabeled, driver="GPKG")
        print(
            f"  {name}: {rgb.shape[2]}x{rgb.shape[1]} px, {len(buildings)} buildings, {len(roads)} road polygons, "
            f"{100 * (1 - documented.mean()):.1f} % unlabeled"
        )
    return scenes


def _prepare_new_brunswick(work: Path) -> list[Scene]:
    return [
        Scene(
            "23322E759967N_clipped_1m_2of2",
            GDL / "23322E759967N_clipped_1m_2of2.tif",
            GDL / "BakerLake_2017_clipped.gpkg",
        )
    ]


def _prepare_las_vegas(work: Path) -> list[Scene]:
    return [
        Scene(
            "RGB-PanSharpen_AOI_2_Vegas_img0",
            APLS / "RGB-PanSharpen_AOI_2_Vegas_img0.tif",
            APLS / "AOI_2_Vegas_img0.geojson",
        )
    ]


AREAS: dict[str, Area] = {
    a.name: a
    for a in (
        Area(
            "fair-nairobi",
            _prepare_fair_nairobi,
            "HOTOSM/2/data/5/",
            "OAM chips mosaicked per zoom (z19 ~0.30 m, z20 ~0.15 m); OSM buildings (completeness varies); "
            "roads not labelled",
        ),
        Area("dsg-brazil", _prepare_dsg_brazil, "dsg-brazil/", "12 tiles, 0.35 m; roads not labelled"),
        Area(
            "massachusetts",
            _prepare_massachusetts,
            "23429155_15",
            "uint16 holding 0-255, 1 m, nodata 255; roads not labelled",
        ),
        Area(
            "dubai-tile8",
            _prepare_dubai_tile8,
            "Tile 8/",
            f"pixel size ASSUMED {DUBAI_GSD_M} m (not documented), CRS {DUBAI_CRS} invented; unlabeled and "
            "undocumented mask colours excluded; APLS on skeletons of road polygons",
        ),
        Area(
            "new-brunswick",
            _prepare_new_brunswick,
            "23322E759967N",
            "Niveau_2 = Building / Road polygons; 5 buildings and 2 road polygons: tiny sample; "
            "APLS on skeletons of road polygons",
            settings={"class_field": "Niveau_2"},
        ),
        Area(
            "las-vegas",
            _prepare_las_vegas,
            "AOI_2_Vegas",
            f"bands 1,2,3 of 4; centerlines buffered to {VEGAS_ROAD_WIDTH_M:g} m; watermark in the bottom rows; "
            "buildings not labelled",
            bands=(1, 2, 3),
            settings={"road_width_m": VEGAS_ROAD_WIDTH_M},
        ),
    )
}


# ---------------------------------------------------------------------------------------
# Inference through the CLI
# ---------------------------------------------------------------------------------------


def _geounet(args: list[str], nice: int) -> tuple[float, str]:
    """Run ``geounet ARGS`` in a child process; returns (wall seconds, output)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "geounet.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"geounet {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}")
    return time.perf_counter() - t0, proc.stdout


def _workflow(path: Path, images: Sequence[Path], out: Path, model: Path, opts: argparse.Namespace, bands: Any) -> None:
    """A workflow YAML as a user would write it (JSON is YAML)."""
    wf = {
        "scenes": [str(p.resolve()) for p in images],
        "model": str(model.resolve()),
        "out": str(out.resolve()),
        "inference": {"bands": list(bands) if bands else None, "tta": bool(opts.tta)},
        "cluster": {"workers": opts.workers, "threads_per_worker": opts.threads},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wf, indent=2) + "\n")


def predict(images: Sequence[Path], out: Path, model: Path, opts: argparse.Namespace, bands: Any) -> dict[str, Any]:
    """``geounet run`` over ``images`` into a fresh ``out`` (earlier outputs of the label removed)."""
    if out.exists():
        shutil.rmtree(out)
    wf = out.parent / f"{out.name}.workflow.yaml"
    _workflow(wf, images, out, model, opts, bands)
    seconds, text = _geounet(["run", str(wf), "--no-progress"], opts.nice)
    return {"workflow": str(wf), "seconds": seconds, "cli_output": text.strip().splitlines()[-3:]}


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def _excluded_pred(scene_dir: Path, exclude: Path) -> tuple[Any, dict[str, int]]:
    """Predictions with the excluded regions taken out: buildings lying mostly (> 50 %) there
    are dropped, road polygons and the road graph's centerlines are cut there. The truth has
    nothing there by construction."""
    import geopandas as gpd
    import shapely

    from geounet.evaluate.vectors import read_vectors

    pv = read_vectors(scene_dir)
    ex = gpd.read_file(exclude)
    region = shapely.union_all(ex.geometry.values) if len(ex) else shapely.Polygon()
    crs = ex.crs
    b = pv.buildings.to_crs(crs) if pv.buildings is not None and len(pv.buildings) else gpd.GeoSeries([], crs=crs)
    r = pv.roads.to_crs(crs) if pv.roads is not None and len(pv.roads) else gpd.GeoSeries([], crs=crs)
    if len(b):
        inside = shapely.area(shapely.intersection(b.values, region)) / np.maximum(shapely.area(b.values), 1e-12)
        keep = inside <= 0.5
    else:
        keep = np.zeros(0, dtype=bool)
    cut = shapely.difference(r.values, region) if len(r) else r.values
    cut = cut[~shapely.is_empty(cut)] if len(r) else cut
    pv.buildings = gpd.GeoSeries(b.values[keep], crs=crs)
    pv.roads = gpd.GeoSeries(cut, crs=crs)
    lines = pv.road_centerlines
    if lines is not None and len(lines):
        cl = shapely.difference(lines.to_crs(crs).values, region)
        pv.road_centerlines = gpd.GeoSeries(cl[~shapely.is_empty(cl)], crs=crs)
    return pv, {"buildings_dropped": int((~keep).sum()), "buildings_kept": int(keep.sum())}


def offset_check(pred: Any, scene: Scene, settings: Any, crs: Any) -> dict[str, Any] | None:
    """Where predictions sit against the truth: the shift of the predicted mask (buildings, else
    road surfaces) that maximises its IoU with the truth, within +-OFFSET_MAX_M.

    A misplaced scene (a CRS, geotransform or pixel-size bug) shows a best shift of metres
    and an IoU there well above the IoU in place; a right one peaks at (0, 0) +- a pixel.
    Cost: both masks burned once at OFFSET_PIXEL_M over the scene's footprint, and one FFT
    correlation.
    """
    import geopandas as gpd
    import shapely
    from scipy.signal import fftconvolve

    from geounet.evaluate.pixels import RasterGrid, burn
    from geounet.evaluate.roads import road_surfaces
    from geounet.evaluate.vectors import read_sources

    pv = read_sources(
        pred, "predictions", class_field=settings.class_field, classes=settings.classes, require_field=False
    )
    tv = read_sources(scene.truth, "truth", class_field=settings.class_field, classes=settings.classes)
    pv, tv = pv.to_crs(crs), tv.to_crs(crs)
    if tv.buildings is not None:
        what, p, t = "building", pv.buildings, tv.buildings
    elif tv.has_roads():
        what = "road"
        t = tv.roads if tv.roads is not None and len(tv.roads) else tv.road_centerlines
        p = pv.roads if pv.roads is not None and len(pv.roads) else pv.road_centerlines
    else:
        return None
    if p is None or t is None or not len(p) or not len(t):
        return None
    grid = RasterGrid.from_raster(scene.image, use_mask=False)
    outline = shapely.segmentize(grid.footprint, grid.footprint.length / 256)
    bounds = gpd.GeoSeries([outline], crs=grid.crs).to_crs(crs).total_bounds
    g = RasterGrid.from_bounds(tuple(bounds), OFFSET_PIXEL_M, crs)
    shape = (g.height, g.width)
    pm = burn(road_surfaces(p, settings.road_width_m), shape, g.transform).astype(np.float32)
    tm = burn(road_surfaces(t, settings.road_width_m), shape, g.transform).astype(np.float32)
    if not pm.any() or not tm.any():
        return None
    overlap = fftconvolve(tm, pm[::-1, ::-1], mode="full")  # overlap[dy + H-1, dx + W-1]: pred shifted by (dy, dx)
    r = int(round(OFFSET_MAX_M / OFFSET_PIXEL_M))
    cy, cx = shape[0] - 1, shape[1] - 1
    win = np.maximum(np.rint(overlap[cy - r : cy + r + 1, cx - r : cx + r + 1]), 0.0)
    iou = win / (pm.sum() + tm.sum() - win)
    dy, dx = np.unravel_index(int(np.argmax(iou)), iou.shape)
    return {
        "class": what,
        "pixel_m": OFFSET_PIXEL_M,
        "best_shift_east_m": float((dx - r) * OFFSET_PIXEL_M),
        "best_shift_north_m": float(-(dy - r) * OFFSET_PIXEL_M),
        "iou_in_place": float(iou[r, r]),
        "iou_at_best_shift": float(iou[dy, dx]),
    }


def score_scene(scene: Scene, scene_dir: Path, settings: Any, *, offsets: bool = True) -> tuple[Any, dict[str, Any]]:
    from geounet.evaluate.score import evaluate_scene

    extra: dict[str, Any] = {}
    pred: Any = scene_dir
    if scene.exclude is not None:
        pred, extra["excluded"] = _excluded_pred(scene_dir, scene.exclude)
    raster = scene.raster or scene.image
    result = evaluate_scene(pred, scene.truth, settings, raster=raster, scene=scene.name)
    if offsets:
        extra["offset"] = offset_check(pred, scene, settings, result.crs)
    return result, extra


def _value(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def summarize(results: Sequence[Any]) -> dict[str, Any]:
    """Micro-averaged scores of some scenes (:meth:`Totals.combine`, as evaluate_many)."""
    from geounet.evaluate.score import Totals

    t = Totals.combine(list(results))
    px = t.pixels or {}
    return {
        "building_f1": _value(t.buildings.f1) if t.buildings else None,
        "building_precision": _value(t.buildings.precision) if t.buildings else None,
        "building_recall": _value(t.buildings.recall) if t.buildings else None,
        "building_pixel_iou": _value(px["building"].iou) if "building" in px else None,
        "road_pixel_iou": _value(px["road"].iou) if "road" in px else None,
        "road_apls": _value(t.roads.apls) if t.roads else None,
        "road_completeness": _value(t.roads.completeness) if t.roads else None,
        "road_correctness": _value(t.roads.correctness) if t.roads else None,
        "totals": _clean(t.to_dict()),
    }


def _clean(x: Any) -> Any:
    """NaN -> None, recursively (strict JSON)."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _scene_record(scene_dir: Path) -> dict[str, Any]:
    p = scene_dir / "scene.json"
    return json.loads(p.read_text()) if p.exists() else {}


def run_area(area: Area, model: Path, opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    from geounet.evaluate.score import EvaluationSettings

    print(f"[{area.name}] preparing", flush=True)
    scenes = area.prepare(work / "data" / area.name)
    out = work / "runs" / opts.label / area.name
    print(f"[{area.name}] geounet run over {len(scenes)} scene(s)", flush=True)
    run = predict([s.image for s in scenes], out, model, opts, area.bands)
    settings = EvaluationSettings(**area.settings)
    t0 = time.perf_counter()
    rows, results, groups = [], [], {}
    for s in scenes:
        scene_dir = out / s.name
        record = _scene_record(scene_dir)
        if record.get("status") != "success":
            raise RuntimeError(f"{area.name}/{s.name}: geounet run did not succeed: {record or 'no scene.json'}")
        result, extra = score_scene(s, scene_dir, settings)
        results.append(result)
        groups.setdefault(s.group, []).append((result, record.get("scene_gsd_m")))
        rows.append(
            {
                "scene": s.name,
                "image": str(s.image),
                "truth": str(s.truth),
                "raster": str(s.raster or s.image),
                "group": s.group,
                "scene_gsd_m": record.get("scene_gsd_m"),
                "model_gsd_m": record.get("model_gsd_m"),
                "model_grid": record.get("model_grid"),
                "gsd_warning": record.get("gsd_warning"),
                "polygons": record.get("polygons"),
                "timings_s": record.get("timings_s"),
                "quicklook": str(scene_dir / "quicklook.png"),
                **extra,
                "scores": summarize([result]),
                "evaluation": _clean(result.to_dict()),
            }
        )
    eval_s = time.perf_counter() - t0
    gsds = [r["scene_gsd_m"] for r in rows if r["scene_gsd_m"] is not None]
    rec = {
        "area": area.name,
        "notes": area.notes,
        "bands": list(area.bands) if area.bands else None,
        "evaluation_settings": dict(area.settings),
        "n_scenes": len(scenes),
        "pixel_size_m": [min(gsds), max(gsds)] if gsds else None,
        "seconds_predict": run["seconds"],
        "seconds_model": sum((r["timings_s"] or {}).get("wall", 0.0) for r in rows),
        "seconds_eval": eval_s,
        "run": run,
        "quicklooks": [r["quicklook"] for r in rows],
        "scores": summarize(results),
        "groups": {},
        "scenes": rows,
    }
    if len(groups) > 1:
        for g, items in groups.items():
            gg = [x for _, x in items if x is not None]
            rec["groups"][g] = {
                "n_scenes": len(items),
                "pixel_size_m": [min(gg), max(gg)] if gg else None,
                "scores": summarize([r for r, _ in items]),
            }
    return rec


# ---------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------


def _in_range(px: Sequence[float] | None) -> bool:
    if not px:
        return False
    lo, hi = AVERAGE_GSD_M
    return px[0] >= lo and px[1] <= hi


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _fmt_px(px: Sequence[float] | None) -> str:
    if not px:
        return "-"
    return f"{px[0]:.2f}" if abs(px[1] - px[0]) <= 0.01 * px[1] else f"{px[0]:.2f}-{px[1]:.2f}"


METRICS = ("building_f1", "building_pixel_iou", "road_pixel_iou", "road_apls")


def placement(area: dict[str, Any]) -> str:
    """One line: each scene's best shift and the IoU in place and at that shift."""
    parts = []
    for r in area["scenes"]:
        o = r.get("offset")
        if o is None:
            parts.append(f"{r['scene']}: -")
            continue
        parts.append(
            f"({o['best_shift_east_m']:+.1f}, {o['best_shift_north_m']:+.1f}) "
            f"{o['iou_in_place']:.2f}->{o['iou_at_best_shift']:.2f}"
        )
    return f"[{area['scenes'][0]['offset']['class'] if area['scenes'][0].get('offset') else '-'}] " + "; ".join(parts)


def average(areas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of per-area values over the areas at 0.3-1 m (an area of mixed pixel sizes takes
    its groups that are in range); areas that do not score a metric are skipped for it."""
    members = []
    for a in areas:
        if _in_range(a["pixel_size_m"]):
            members.append((a["area"], a["scores"]))
        else:
            members += [
                (f"{a['area']} {g}", v["scores"]) for g, v in a["groups"].items() if _in_range(v["pixel_size_m"])
            ]
    out: dict[str, Any] = {"members": [m for m, _ in members]}
    for k in METRICS:
        vals = [s[k] for _, s in members if s[k] is not None]
        out[k] = float(np.mean(vals)) if vals else None
        out[f"{k}_n"] = len(vals)
    return out


def table(areas: Sequence[dict[str, Any]], avg: dict[str, Any], title: str) -> str:
    head = (
        "| area | pixel size (m) | scenes | building F1@0.5 | building pixel IoU | road pixel IoU | road APLS "
        "| seconds (run + eval) |"
    )
    lines = [f"**{title}**", "", head, "|" + "---|" * 8]

    def row(name: str, px: Any, n: int, s: dict[str, Any], secs: str) -> str:
        bld = "not scored" if s["building_f1"] is None and s["building_pixel_iou"] is None else None
        road = "not scored" if s["road_pixel_iou"] is None and s["road_apls"] is None else None
        return (
            f"| {name} | {_fmt_px(px)} | {n} | {bld or _fmt(s['building_f1'])} | "
            f"{bld or _fmt(s['building_pixel_iou'])} | {road or _fmt(s['road_pixel_iou'])} | "
            f"{road or _fmt(s['road_apls'])} | {secs} |"
        )

    for a in areas:
        secs = f"{a['seconds_predict']:.1f} + {a['seconds_eval']:.1f}"
        lines.append(row(a["area"], a["pixel_size_m"], a["n_scenes"], a["scores"], secs))
        for g, v in a["groups"].items():
            lines.append(row(f"  {a['area']} {g}", v["pixel_size_m"], v["n_scenes"], v["scores"], ""))
    cells = " | ".join(f"{_fmt(avg[k])} (n={avg[f'{k}_n']})" for k in METRICS)
    lines.append(f"| **average over areas at 0.3-1 m** | | | {cells} | |")
    lines.append("")
    lines.append(f"Average members: {', '.join(avg['members'])}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# GSD check
# ---------------------------------------------------------------------------------------


def resample(src_path: Path, dst_path: Path, factor: float) -> None:
    """``src_path`` at ``factor`` times its pixel size (bilinear; nodata kept), same extent
    (the last partial pixel dropped)."""
    import rasterio
    import rasterio.warp
    from rasterio.enums import Resampling

    if dst_path.exists():
        return
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK="YES"), rasterio.open(src_path) as src:
        w, h = max(1, int(src.width / factor)), max(1, int(src.height / factor))
        transform = src.transform * src.transform.scale(factor)
        data = np.zeros((src.count, h, w), dtype=src.dtypes[0])
        if src.nodata is not None:
            data[:] = src.nodata
        for b in range(src.count):
            rasterio.warp.reproject(
                rasterio.band(src, b + 1),
                data[b],
                dst_transform=transform,
                dst_crs=src.crs,
                src_nodata=src.nodata,
                dst_nodata=src.nodata,
                resampling=Resampling.bilinear,
            )
        per_dataset_mask = src.nodata is None and any(
            "per_dataset" in [f.name for f in flags] for flags in src.mask_flag_enums
        )
        mask = None
        if per_dataset_mask:  # e.g. the fAIr mosaics' internal mask
            mask = np.zeros((h, w), dtype=np.uint8)
            rasterio.warp.reproject(
                src.dataset_mask(),
                mask,
                src_transform=src.transform,
                src_crs=src.crs,
                dst_transform=transform,
                dst_crs=src.crs,
                resampling=Resampling.nearest,
            )
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst_path.with_name(dst_path.name + ".partial")
        profile = dict(TIFF_OPTS, count=src.count, height=h, width=w, dtype=src.dtypes[0])
        with rasterio.open(tmp, "w", crs=src.crs, transform=transform, nodata=src.nodata, **profile) as dst:
            dst.write(data)
            if mask is not None:
                dst.write_mask(mask)
    tmp.replace(dst_path)


def gsd_check(model: Path, opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    from geounet.evaluate.score import EvaluationSettings

    out: dict[str, Any] = {"factors": list(GSD_FACTORS), "areas": []}
    for name in opts.gsd_areas:
        area = AREAS[name]
        scenes = area.prepare(work / "data" / name)
        if name == "fair-nairobi":
            scenes = [s for s in scenes if s.group == "z19"]
        settings = EvaluationSettings(**area.settings)
        rec: dict[str, Any] = {"area": name, "factors": {}}
        for f in GSD_FACTORS:
            imgs = []
            for s in scenes:
                dst = work / "gsd" / name / f"x{f:g}" / f"{s.name}.tif"
                print(f"[gsd {name} x{f:g}] resampling {s.name}", flush=True)
                resample(s.image, dst, f)
                imgs.append(dst)
            run_out = work / "runs" / f"{opts.label}_gsd" / name / f"x{f:g}"
            print(f"[gsd {name} x{f:g}] geounet run over {len(imgs)} scene(s)", flush=True)
            run = predict(imgs, run_out, model, opts, area.bands)
            results, gsds = [], []
            for s, img in zip(scenes, imgs, strict=True):
                sd = run_out / s.name
                record = _scene_record(sd)
                if record.get("status") != "success":
                    raise RuntimeError(f"gsd {name} x{f:g}/{s.name}: geounet run did not succeed: {record}")
                gsds.append(record.get("scene_gsd_m"))
                result, _ = score_scene(dataclasses.replace(s, image=img, raster=None), sd, settings, offsets=False)
                results.append(result)
            sc = summarize(results)
            rec["factors"][f"{f:g}"] = {
                "pixel_size_m": [min(gsds), max(gsds)],
                "seconds_predict": run["seconds"],
                "building_f1": sc["building_f1"],
                "building_precision": sc["building_precision"],
                "building_recall": sc["building_recall"],
                "building_pixel_iou": sc["building_pixel_iou"],
                "n_pred": sc["totals"]["buildings"]["n_pred"],
                "n_truth": sc["totals"]["buildings"]["n_truth"],
            }
        f1s = [v["building_f1"] for v in rec["factors"].values() if v["building_f1"] is not None]
        rec["f1_spread"] = max(f1s) - min(f1s) if f1s else None
        out["areas"].append(rec)
    lines = [
        f"**GSD check, {opts.label}** (building F1@0.5 per resampling factor of the scene's pixel size)",
        "",
        "| area | factor | pixel size (m) | building F1 | precision | recall | pred / truth | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in out["areas"]:
        for f, v in a["factors"].items():
            lines.append(
                f"| {a['area']} | {f}x | {_fmt_px(v['pixel_size_m'])} | {_fmt(v['building_f1'])} | "
                f"{_fmt(v['building_precision'])} | {_fmt(v['building_recall'])} | {v['n_pred']} / {v['n_truth']} | "
                f"{v['seconds_predict']:.1f} |"
            )
        lines.append(f"| {a['area']} | spread | | {_fmt(a['f1_spread'])} | | | | |")
    out["table"] = "\n".join(lines)
    return out


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_info(model: Path) -> dict[str, Any]:
    from geounet.checkpoint import read_metadata

    md = read_metadata(model)
    prov = md.provenance or {}
    return {
        "path": str(model),
        "sha256": _sha256(model),
        "hash": md.hash,
        "arch": f"{md.spec.arch} width {md.spec.width} depth {md.spec.depth}",
        "classes": list(md.spec.classes),
        "gsd_m": md.gsd_m,
        "bands": list(md.bands) if md.bands else None,
        "trained": {k: prov.get(k) for k in ("date", "config_file", "epochs", "training_time_s", "metrics")},
    }


def training_overlap(model: Path, areas: Sequence[str]) -> dict[str, bool]:
    """Whether the checkpoint's provenance names an area's data (it should not: held out)."""
    from geounet.checkpoint import read_metadata

    text = json.dumps(read_metadata(model).provenance or {}, default=str)
    return {a: AREAS[a].marker in text for a in areas}


def copy_quicklooks(dest: Path, label: str, work: Path, scenes: dict[str, str]) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for area, scene in scenes.items():
        src = work / "runs" / label / area / scene / "quicklook.png"
        if not src.exists():
            print(f"  no quicklook for {area}/{scene} ({src}); run that area first", file=sys.stderr)
            continue
        dst = dest / f"{label}_{area}.png"
        shutil.copyfile(src, dst)
        copied.append(str(dst))
    return copied


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(record), indent=2, default=str, allow_nan=False) + "\n")
    print(f"\nsaved {path}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="checkpoint (.safetensors) to measure")
    ap.add_argument("--label", help="name of the results file (default: the model's file stem)")
    ap.add_argument("--areas", nargs="+", choices=list(AREAS), default=list(AREAS))
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "heldout", help="prepared data and predictions")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation (8x compute)")
    ap.add_argument("--workers", type=int, default=1, help="embedded cluster: worker processes")
    ap.add_argument("--threads", type=int, default=None, help="embedded cluster: threads per worker")
    ap.add_argument("--nice", type=int, default=0, help="niceness added to the inference processes")
    ap.add_argument("--copy-quicklooks", type=Path, metavar="DIR", help="copy three scenes' quicklooks here")
    ap.add_argument(
        "--quicklook-scenes",
        nargs="+",
        metavar="AREA=SCENE",
        help="scenes whose quicklooks are copied (default: "
        + " ".join(f"{k}={v}" for k, v in QUICKLOOK_SCENES.items())
        + ")",
    )
    ap.add_argument("--gsd-check", action="store_true", help="building F1 at 0.5x, 1x, 2x pixel size instead")
    ap.add_argument(
        "--gsd-areas",
        nargs="+",
        choices=["dsg-brazil", "massachusetts", "fair-nairobi"],
        default=["dsg-brazil", "massachusetts"],
    )
    opts = ap.parse_args(argv)
    model = opts.model.resolve()
    if not model.exists():
        ap.error(f"--model {model} does not exist")
    opts.label = opts.label or model.stem
    work = opts.work.resolve()
    record: dict[str, Any] = {
        "label": opts.label,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": _model_info(model),
        "tta": opts.tta,
        "cluster": {"workers": opts.workers, "threads_per_worker": opts.threads, "nice": opts.nice},
        "machine": machine(),
        "in_training_provenance": training_overlap(model, opts.gsd_areas if opts.gsd_check else opts.areas),
    }

    if opts.gsd_check:
        res = gsd_check(model, opts, work)
        record.update(res)
        print("\n" + res["table"])
        _write(OUT_RESULTS / f"{opts.label}_gsd.json", record)
        return

    areas = [run_area(AREAS[name], model, opts, work) for name in opts.areas]
    avg = average(areas)
    title = f"Held-out areas, {opts.label} ({model.name}{', TTA' if opts.tta else ''})"
    record["areas"] = areas
    record["average_0.3_1m"] = avg
    record["table"] = table(areas, avg, title)
    if opts.copy_quicklooks:
        chosen = dict(QUICKLOOK_SCENES)
        if opts.quicklook_scenes:
            chosen = dict(s.split("=", 1) for s in opts.quicklook_scenes)
        record["copied_quicklooks"] = copy_quicklooks(opts.copy_quicklooks, opts.label, work, chosen)
    print("\n" + record["table"])
    print()
    for a in areas:
        print(f"- {a['area']}: {a['notes']}")
    print("\nPlacement (shift of the predictions that best fits the truth, east/north m; IoU in place -> there):")
    for a in areas:
        print(f"- {a['area']}: {placement(a)}")
    _write(OUT_RESULTS / f"{opts.label}.json", record)


if __name__ == "__main__":
    main()
