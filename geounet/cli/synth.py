"""``geounet synth``: write synthetic georeferenced scenes with exact ground truth."""

from __future__ import annotations

from pathlib import Path

import click

from geounet.synth.scene import describe, synthesize_set

DEFAULT_SIZE = 1024


@click.command("synth", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-n",
    "--count",
    "n",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Number of scenes. Scene i is named PREFIX_i (4 digits) and uses seed SEED + i.",
)
@click.option(
    "--size",
    type=click.IntRange(16, 1_000_000),
    metavar="PX",
    help=f"Width and height of a square scene, pixels. Default: {DEFAULT_SIZE}.",
)
@click.option(
    "--width",
    type=click.IntRange(16, 1_000_000),
    metavar="PX",
    help="Scene width, pixels (columns); wins over --size. Default: --size.",
)
@click.option(
    "--height",
    type=click.IntRange(16, 1_000_000),
    metavar="PX",
    help="Scene height, pixels (rows); wins over --size. Default: --size.",
)
@click.option(
    "--crs",
    default="EPSG:32633",
    show_default=True,
    help="Coordinate reference system, e.g. EPSG:32633 (UTM 33N, metres), EPSG:32733 (UTM 33S), EPSG:4326 (degrees).",
)
@click.option(
    "--resolution",
    type=float,
    metavar="UNITS",
    help="Pixel size in CRS units: metres (feet for a foot-based CRS), degrees for a geographic CRS. "
    "Default: 0.5 m; 0.5/111320 deg (about 4.49e-6, i.e. 0.5 m) for a geographic CRS.",
)
@click.option(
    "--origin",
    type=float,
    nargs=2,
    metavar="X Y",
    help="Upper-left corner in CRS units. Default: the scene is centred in the CRS's area of use "
    "(15 E, 48 N for world-wide CRSs).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed of the first scene; same seed and options give identical pixels and truth.",
)
@click.option(
    "--bands",
    type=click.Choice(["1", "3", "4"]),
    default="3",
    show_default=True,
    help="1 = gray, 3 = red, green, blue, 4 = red, green, blue, NIR-like.",
)
@click.option(
    "--dtype",
    type=click.Choice(["uint8", "uint16", "float32"]),
    default="uint8",
    show_default=True,
    help="Pixel type: uint8 (0-255), uint16 (12-bit imagery, 0-4095) or float32 (reflectance 0-1).",
)
@click.option(
    "--building-density",
    type=click.FloatRange(0.0, 1.0),
    default=0.7,
    show_default=True,
    help="Chance, 0-1, that a plot along a road carries a building (varied by district).",
)
@click.option(
    "--road-spacing",
    "road_spacing_m",
    type=click.FloatRange(40.0, 5000.0),
    default=110.0,
    show_default=True,
    metavar="METRES",
    help="Mean distance between parallel roads, metres.",
)
@click.option(
    "--tree-density",
    type=click.FloatRange(0.0, 10.0),
    default=1.0,
    show_default=True,
    help="Multiplier of the number of trees; 0 for none.",
)
@click.option(
    "--nodata",
    type=float,
    metavar="VALUE",
    help="Nodata value to declare in the GeoTIFF; real pixels never take it. Default: none.",
)
@click.option(
    "--nodata-border",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="PX",
    help="Width of a nodata frame around the scene, pixels (needs --nodata); truth is clipped to the inner area.",
)
@click.option(
    "--block-size",
    type=click.IntRange(16, 16384),
    default=512,
    show_default=True,
    metavar="PX",
    help="Side of the windows painted and written one at a time, pixels. Changes speed and memory "
    "(about 40 bytes per window pixel), never the pixels.",
)
@click.option("--prefix", default="synth", show_default=True, help="File name prefix of the scenes.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (otherwise they are an error).")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar over windows. Default: shown when stderr is a terminal.",
)
def command(
    out_dir: Path,
    n: int,
    size: int | None,
    width: int | None,
    height: int | None,
    crs: str,
    resolution: float | None,
    origin: tuple[float, float] | None,
    seed: int,
    bands: str,
    dtype: str,
    building_density: float,
    road_spacing_m: float,
    tree_density: float,
    nodata: float | None,
    nodata_border: int,
    block_size: int,
    prefix: str,
    overwrite: bool,
    progress: bool | None,
) -> None:
    """Write N synthetic aerial scenes into OUT_DIR, each with exact ground truth.

    Per scene: PREFIX_i.tif (tiled GeoTIFF, DEFLATE), PREFIX_i_truth.gpkg (layers buildings,
    roads, road_centerlines), PREFIX_i_buildings.geojson and PREFIX_i_roads.geojson, all in
    the scene CRS. Prints the written paths.
    """
    scenes = synthesize_set(
        out_dir,
        n,
        seed=seed,
        prefix=prefix,
        width=width or size or DEFAULT_SIZE,
        height=height or size or DEFAULT_SIZE,
        crs=crs,
        resolution=resolution,
        origin=origin or None,
        bands=int(bands),
        dtype=dtype,
        building_density=building_density,
        road_spacing_m=road_spacing_m,
        tree_density=tree_density,
        nodata=nodata,
        nodata_border=nodata_border,
        block_size=block_size,
        progress=progress,
        overwrite=overwrite,
    )
    for scene in scenes:
        click.echo(describe(scene))
