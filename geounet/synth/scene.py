"""Write synthetic scenes: a tiled GeoTIFF, window by window, and its exact ground truth.

Steps of :func:`synthesize_scene`: check options -> pixel grid (CRS, transform) -> vector
layout -> raster, one window at a time -> truth files. Each output is written under a
temporary name and renamed when complete, so an interrupted run leaves no half scene
under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.windows import Window as RasterWindow
from tqdm import tqdm

from geounet.atomic import atomic_output
from geounet.errors import ConfigError, OutputError
from geounet.synth.georef import SceneGrid, make_grid, pixel_to_crs
from geounet.synth.layout import BUILDING_KINDS, ROAD_KINDS, Layout, build_layout
from geounet.synth.paint import NoiseKeys, Window, paint_window

Dtype = Literal["uint8", "uint16", "float32"]
TILE = 512  # GeoTIFF tile side, pixels
FULL_SCALE = {"uint8": 255.0, "uint16": 4095.0, "float32": 1.0}  # value of reflectance 1.0
BAND_NAMES = {1: ("gray",), 3: ("red", "green", "blue"), 4: ("red", "green", "blue", "nir")}
COLOR_INTERP = {
    1: (ColorInterp.gray,),
    3: (ColorInterp.red, ColorInterp.green, ColorInterp.blue),
    4: (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined),
}
GDAL_CACHE_BYTES = 32 * 1024 * 1024  # block cache while writing: bounds memory for scenes of any size
# Bump whenever the pixels or truth a given seed and options produce change, so that caches
# of generated scenes (e.g. a training set keyed on its options) can tell stale scenes apart.
CONTENT_VERSION = 1


@dataclass(frozen=True)
class SynthScene:
    """What :func:`synthesize_scene` wrote. Paths are absolute; counts are truth features."""

    name: str
    image: Path  # <name>.tif
    truth: Path  # <name>_truth.gpkg: layers buildings, roads, road_centerlines
    buildings_geojson: Path  # <name>_buildings.geojson
    roads_geojson: Path  # <name>_roads.geojson (road polygons)
    width: int
    height: int
    crs: str
    transform: Affine
    gsd: float  # ground metres per pixel (north-south for a geographic CRS)
    bands: int
    dtype: str
    nodata: float | None
    seed: int
    n_buildings: int
    n_roads: int  # road polygons
    n_centerlines: int

    @property
    def paths(self) -> tuple[Path, Path, Path, Path]:
        return self.image, self.truth, self.buildings_geojson, self.roads_geojson


def _paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {
        "image": out_dir / f"{name}.tif",
        "truth": out_dir / f"{name}_truth.gpkg",
        "buildings_geojson": out_dir / f"{name}_buildings.geojson",
        "roads_geojson": out_dir / f"{name}_roads.geojson",
    }


def _check_options(
    *,
    name: str,
    seed: int,
    width: int,
    height: int,
    bands: int,
    dtype: str,
    building_density: float,
    road_spacing_m: float,
    tree_density: float,
    nodata: float | None,
    nodata_border: int,
    block_size: int,
) -> float | None:
    """Validate options; returns the nodata value as the scene's dtype will store it."""
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ConfigError(f"name {name!r} must be a plain file name without folders")
    for label, v, lo, hi in (
        ("seed", seed, 0, 2**63 - 1),
        ("width", width, 16, 1_000_000),
        ("height", height, 16, 1_000_000),
        ("block_size", block_size, 16, 16384),
    ):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= hi:
            unit = "" if label == "seed" else " of pixels"
            raise ConfigError(f"{label} {v!r} must be a whole number{unit} from {lo} to {hi}")
    if bands not in BAND_NAMES:
        raise ConfigError(f"bands {bands!r} must be 1 (gray), 3 (red, green, blue) or 4 (red, green, blue, nir)")
    if dtype not in FULL_SCALE:
        raise ConfigError(
            f"dtype {dtype!r} must be one of uint8 (0-255), uint16 (12-bit, 0-4095) or float32 (reflectance 0-1)"
        )
    if not 0.0 <= building_density <= 1.0:
        raise ConfigError(f"building_density {building_density} must be from 0 (no buildings) to 1 (every plot built)")
    if not 40.0 <= road_spacing_m <= 5000.0:
        raise ConfigError(f"road_spacing_m {road_spacing_m} must be from 40 to 5000 metres")
    if not 0.0 <= tree_density <= 10.0:
        raise ConfigError(f"tree_density {tree_density} must be from 0 (no trees) to 10 (1 is typical)")
    if not isinstance(nodata_border, (int, np.integer)) or nodata_border < 0 or 2 * nodata_border >= min(width, height):
        raise ConfigError(
            f"nodata_border {nodata_border!r} must be a whole number of pixels from 0 to "
            f"{(min(width, height) - 1) // 2} for a {width}x{height} scene"
        )
    if nodata is None:
        if nodata_border:
            raise ConfigError(f"nodata_border {nodata_border} needs a nodata value to fill it; give nodata (e.g. 0)")
        return None
    value = float(nodata)
    if dtype == "float32":
        return value
    info = np.iinfo(dtype)
    if not (value.is_integer() and info.min <= value <= info.max):
        raise ConfigError(f"nodata {nodata!r} cannot be stored as {dtype} (whole numbers {info.min}-{info.max})")
    return value


def synthesize_scene(
    out_dir: str | Path,
    *,
    name: str = "scene",
    width: int = 1024,
    height: int = 1024,
    crs: str = "EPSG:32633",
    resolution: float | None = None,
    origin: tuple[float, float] | None = None,
    seed: int = 0,
    bands: int = 3,
    dtype: Dtype = "uint8",
    building_density: float = 0.7,
    road_spacing_m: float = 110.0,
    tree_density: float = 1.0,
    nodata: float | None = None,
    nodata_border: int = 0,
    block_size: int = 512,
    progress: bool | None = False,
    overwrite: bool = False,
) -> SynthScene:
    """Write one synthetic aerial scene and its exact ground truth into ``out_dir``.

    Args:
        out_dir: Folder for the outputs (created if missing).
        name: Base file name: ``<name>.tif``, ``<name>_truth.gpkg``, ``<name>_buildings.geojson``,
            ``<name>_roads.geojson``.
        width, height: Scene size in pixels.
        crs: Any CRS GDAL knows, e.g. ``"EPSG:32633"`` (UTM 33N), ``"EPSG:32733"`` (UTM 33S),
            ``"EPSG:4326"``.
        resolution: Pixel size in CRS units. Default 0.5 m (converted to feet etc. for such
            CRSs); for a geographic CRS, degrees, default ``0.5 / 111320`` deg (about 0.5 m).
        origin: ``(x, y)`` of the upper-left corner in CRS units. Default: the scene is centred
            in the CRS's area of use (see :mod:`geounet.synth.georef`).
        seed: Same seed, same options -> identical pixels and truth.
        bands: 1 (gray), 3 (red, green, blue) or 4 (red, green, blue, NIR-like).
        dtype: ``"uint8"`` (0-255), ``"uint16"`` (12-bit imagery, 0-4095) or ``"float32"``
            (reflectance 0-1).
        building_density: Chance, 0-1, that a plot along a road is built (varied by district).
        road_spacing_m: Mean distance between parallel roads, metres.
        tree_density: Multiplier of the number of trees; 0 for none.
        nodata: Nodata value written in the GeoTIFF header; real pixels never take it.
        nodata_border: Width in pixels of a frame of nodata around the scene (needs ``nodata``);
            roads and buildings are clipped to the inner, valid area.
        block_size: Side in pixels of the windows painted and written one at a time. It changes
            speed and memory, never the pixels.
        progress: Show a progress bar over windows; None shows it when stderr is a terminal.
        overwrite: Replace existing outputs; otherwise existing outputs are an error.

    Returns:
        :class:`SynthScene` with the paths, CRS, transform and truth counts.

    Cost: one pass, window by window; the raster is never held whole. Memory is about
    40 bytes per pixel of one window, a 32 MB GDAL cache and the vector layout (about 1 kB
    per building and road polygon: some 0.6 bytes per scene pixel at the default densities,
    whatever the bands and dtype). Time is proportional to the pixels.

    Raises:
        ConfigError: an option is invalid or outputs exist and ``overwrite`` is False.
        OutputError: the outputs cannot be written (disk full, read-only folder).
    """
    # 1. options
    nodata_value = _check_options(
        name=name,
        seed=seed,
        width=width,
        height=height,
        bands=bands,
        dtype=dtype,
        building_density=building_density,
        road_spacing_m=road_spacing_m,
        tree_density=tree_density,
        nodata=nodata,
        nodata_border=nodata_border,
        block_size=block_size,
    )
    grid = make_grid(width, height, crs, resolution, origin)
    out = Path(out_dir).absolute()
    paths = _paths(out, name)
    if not overwrite:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            raise ConfigError(
                f"scene {name}: output file(s) already exist: {', '.join(existing)}; pass "
                f"overwrite=True (--overwrite) to replace them, or choose another name or folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc.strerror or exc}") from None

    # 2. vector layout, in global pixel coordinates
    b = nodata_border
    layout = build_layout(
        width=width,
        height=height,
        valid=(b, b, width - b, height - b),
        gsd=grid.gsd,
        seed=seed,
        building_density=building_density,
        road_spacing_m=road_spacing_m,
        tree_density=tree_density,
    )

    # 3. raster, window by window; 4. truth
    try:
        _write_image(
            paths["image"],
            grid,
            layout,
            seed=seed,
            bands=bands,
            dtype=dtype,
            nodata=nodata_value,
            block_size=block_size,
            progress=progress,
            name=name,
        )
        counts = _write_truth(paths, grid, layout)
    except OSError as exc:
        raise OutputError(f"scene {name}: cannot write outputs in {out}: {exc.strerror or exc}") from None
    return SynthScene(
        name=name,
        image=paths["image"],
        truth=paths["truth"],
        buildings_geojson=paths["buildings_geojson"],
        roads_geojson=paths["roads_geojson"],
        width=width,
        height=height,
        crs=grid.crs.to_string(),
        transform=grid.transform,
        gsd=grid.gsd,
        bands=bands,
        dtype=dtype,
        nodata=nodata_value,
        seed=seed,
        n_buildings=counts["n_buildings"],
        n_roads=counts["n_roads"],
        n_centerlines=counts["n_centerlines"],
    )


def synthesize_set(out_dir: str | Path, n: int, *, seed: int = 0, prefix: str = "synth", **kw: Any) -> list[SynthScene]:
    """``n`` scenes named ``<prefix>_0000`` ...; scene ``i`` uses seed ``seed + i``.

    Other keywords go to :func:`synthesize_scene`.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"n {n!r} must be a whole number of scenes, at least 1")
    if "name" in kw:
        raise ConfigError("synthesize_set names scenes itself (<prefix>_0000, ...); pass prefix instead of name")
    if not kw.get("overwrite", False):  # refuse before writing anything, not after scene i
        existing = [
            str(p)
            for i in range(n)
            for p in _paths(Path(out_dir).absolute(), f"{prefix}_{i:04d}").values()
            if p.exists()
        ]
        if existing:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise ConfigError(
                f"{len(existing)} output file(s) already exist: {', '.join(existing[:3])}{more}; "
                f"pass overwrite=True (--overwrite) to replace them, or choose another prefix or folder"
            )
    return [synthesize_scene(out_dir, name=f"{prefix}_{i:04d}", seed=seed + i, **kw) for i in range(n)]


# --------------------------------------------------------------------------------------
# raster
# --------------------------------------------------------------------------------------
def windows(width: int, height: int, block_size: int) -> Iterator[Window]:
    """Row-major windows of ``block_size`` covering the scene (the last ones may be smaller)."""
    for row in range(0, height, block_size):
        for col in range(0, width, block_size):
            yield Window(col, row, min(block_size, width - col), min(block_size, height - row))


def to_dtype(img: np.ndarray, bands: int, dtype: str, nodata: float | None) -> np.ndarray:
    """Float reflectance (3 or 4 channels) -> the stored bands and dtype; avoids the nodata value."""
    if bands == 1:
        data = img[0] * np.float32(0.299)
        data += img[1] * np.float32(0.587)
        data += img[2] * np.float32(0.114)
        data = data[None]
    else:
        data = img[:bands]
    data = np.clip(data, 0.0, 1.0)
    if dtype == "float32":
        if nodata is not None and 0.0 <= nodata <= 1.0:  # NaN and values outside 0-1 never occur
            data[data == np.float32(nodata)] = np.nextafter(np.float32(nodata), np.float32(2))
        return data
    data *= np.float32(FULL_SCALE[dtype])
    np.rint(data, out=data)
    stored = data.astype(dtype)
    if nodata is not None:
        top = np.iinfo(dtype).max
        stored[stored == nodata] = nodata + 1 if nodata < top else nodata - 1
    return stored


def _write_image(
    path: Path,
    grid: SceneGrid,
    layout: Layout,
    *,
    seed: int,
    bands: int,
    dtype: str,
    nodata: float | None,
    block_size: int,
    progress: bool | None,
    name: str,
) -> None:
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=grid.width,
        height=grid.height,
        count=bands,
        dtype=dtype,
        crs=grid.crs,
        transform=grid.transform,
        nodata=nodata,
        tiled=True,
        blockxsize=TILE,
        blockysize=TILE,
        compress="deflate",
        zlevel=1,
        predictor=3 if dtype == "float32" else 2,
        bigtiff="IF_SAFER",
        interleave="pixel",
    )
    keys = NoiseKeys.from_seed(seed)
    x0, y0, x1, y1 = layout.valid
    wins = list(windows(grid.width, grid.height, block_size))
    with (
        atomic_output(path) as tmp,
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        rasterio.open(tmp, "w", **profile) as dst,
    ):
        dst.colorinterp = COLOR_INTERP[bands]
        for i, band in enumerate(BAND_NAMES[bands], start=1):
            dst.set_band_description(i, band)
        dst.update_tags(
            GEOUNET_SYNTH_SEED=str(seed),
            GEOUNET_SYNTH_GSD_M=f"{grid.gsd:.6g}",
            GEOUNET_SYNTH_FULL_SCALE=f"{FULL_SCALE[dtype]:g}",
            GEOUNET_SYNTH_VERSION=str(CONTENT_VERSION),
        )
        for win in tqdm(
            wins, desc=f"synth {name}", unit="window", disable=None if progress is None else not progress, leave=False
        ):
            img = paint_window(layout, keys, win, nir=bands == 4)
            data = to_dtype(img, bands, dtype, nodata)
            if nodata is not None and (
                win.col < x0 or win.row < y0 or win.col + win.width > x1 or win.row + win.height > y1
            ):
                cols = win.col + np.arange(win.width)
                rows = win.row + np.arange(win.height)
                outside = ((rows < y0) | (rows >= y1))[:, None] | ((cols < x0) | (cols >= x1))[None, :]
                data[:, outside] = nodata
            dst.write(data, window=RasterWindow(win.col, win.row, win.width, win.height))


# --------------------------------------------------------------------------------------
# truth
# --------------------------------------------------------------------------------------
def _frame(geoms: np.ndarray, columns: dict[str, Any], grid: SceneGrid) -> gpd.GeoDataFrame:

    crs_geoms = shapely.transform(geoms, pixel_to_crs(grid)) if len(geoms) else geoms
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(crs_geoms, crs=grid.crs.to_wkt()))


def truth_frames(grid: SceneGrid, layout: Layout) -> dict[str, Any]:
    """The truth layers as GeoDataFrames in the scene CRS: buildings, roads, road_centerlines."""
    b, r = layout.buildings, layout.roads
    k = b.truth_building
    buildings = _frame(
        b.truth,
        {
            "id": k.astype(np.int64),
            "kind": np.array(BUILDING_KINDS, dtype=object)[b.kind[k]] if len(k) else np.array([], dtype=object),
            "roof": np.where(b.flat[k], "flat", "pitched").astype(object),
            "height_m": np.round(b.height_px[k] * grid.gsd, 2),
            "terrace_row": np.where(b.group[k] >= 0, b.group[k], -1).astype(np.int64),
        },
        grid,
    )
    kinds = np.array(ROAD_KINDS, dtype=object)

    def road_columns(idx: np.ndarray) -> dict[str, Any]:
        return {
            "id": idx.astype(np.int64),
            "kind": kinds[r.kind[idx]] if len(idx) else np.array([], dtype=object),
            "width_m": np.round(r.width_px[idx] * grid.gsd, 3),
        }

    roads = _frame(r.pieces, road_columns(r.piece_road), grid)
    lines = _frame(r.lines, road_columns(r.line_road), grid)
    return {"buildings": buildings, "roads": roads, "road_centerlines": lines}


def _write_truth(paths: dict[str, Path], grid: SceneGrid, layout: Layout) -> dict[str, int]:
    import pyogrio

    frames = truth_frames(grid, layout)
    types = {"buildings": "Polygon", "roads": "Polygon", "road_centerlines": "LineString"}
    # the GeoPackage (the truth's main file) is moved into place last
    with atomic_output(paths["truth"]) as gpkg:
        for layer, frame in frames.items():
            pyogrio.write_dataframe(frame, gpkg, layer=layer, driver="GPKG", geometry_type=types[layer])
        for key, layer in (("buildings_geojson", "buildings"), ("roads_geojson", "roads")):
            with atomic_output(paths[key]) as tmp:
                pyogrio.write_dataframe(  # layer= names the collection (else the temporary file's name)
                    frames[layer], tmp, layer=paths[key].stem, driver="GeoJSON", geometry_type=types[layer]
                )
    return {
        "n_buildings": len(frames["buildings"]),
        "n_roads": len(frames["roads"]),
        "n_centerlines": len(frames["road_centerlines"]),
    }


def describe(scene: SynthScene) -> str:
    """One line per written file, for the command line."""
    size = f"{scene.width}x{scene.height} px, {scene.bands} band(s) {scene.dtype}, {scene.crs}, {scene.gsd:g} m/px"
    return "\n".join(
        [
            f"{scene.image}  ({size})",
            f"{scene.truth}  ({scene.n_buildings} buildings, {scene.n_roads} road polygons, "
            f"{scene.n_centerlines} centrelines)",
            f"{scene.buildings_geojson}",
            f"{scene.roads_geojson}",
        ]
    )
