"""``geounet evaluate``: score predicted polygons against truth (building F1, pixel IoU, road APLS)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from geounet.errors import ConfigError
from geounet.evaluate import (
    EvaluationSettings,
    TopologyParams,
    evaluate_many,
    format_table,
    pair_scenes,
    write_result_json,
)


@click.command("evaluate")
@click.option(
    "--pred",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Predictions: a geounet output folder (PRED/<scene>/buildings.geojson, roads.geojson), "
    "one scene's folder, or a vector file.",
)
@click.option(
    "--truth",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Truth: a vector file (any GDAL format and CRS) or a folder of <scene>_truth.gpkg "
    "(layers buildings, roads, road_centerlines), <scene>_buildings.geojson, <scene>_roads.geojson, "
    "<scene>_road_centerlines.geojson; scenes are paired with predictions by stem.",
)
@click.option(
    "--raster",
    type=click.Path(exists=True, path_type=Path),
    help="GeoTIFF defining the pixel grid and its nodata (or a folder of <scene>.tif); both sides are "
    "clipped to it. Default: <scene>.tif next to the truth if present, else a grid of --pixel-size-m.",
)
@click.option(
    "--truth-layer",
    help="Layer of the truth file to read. Default: layers named buildings/roads/"
    "road_centerlines, else the only layer.",
)
@click.option(
    "--class-field",
    help="Truth field holding the class, e.g. Niveau_2. Default: none (layer or file "
    "names decide; polygons are buildings, lines road centerlines).",
)
@click.option(
    "--building-value",
    default="Building",
    show_default=True,
    help="Value of --class-field marking buildings (case-insensitive).",
)
@click.option(
    "--road-value", default="Road", show_default=True, help="Value of --class-field marking roads (case-insensitive)."
)
@click.option(
    "--road-width-m",
    type=click.FloatRange(min=0, min_open=True),
    default=6.0,
    show_default=True,
    help="Width of roads given as centerlines, metres (they are buffered by half of it).",
)
@click.option(
    "--iou",
    "iou",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Minimum intersection-over-union of a building match (SpaceNet: 0.5).",
)
@click.option(
    "--min-area-m2",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Ignore buildings smaller than this on both sides, square metres.",
)
@click.option(
    "--pixel-size-m",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    help="Pixel size of the evaluation grid when there is no raster, metres.",
)
@click.option(
    "--topology-pixel-m",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Pixel size on which road polygons (not centerlines) are thinned into graphs for APLS, metres.",
)
@click.option(
    "--topology-spacing-m",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Spacing of APLS control points along the roads, metres (SpaceNet 3 uses 50).",
)
@click.option(
    "--snap-m",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="How far APLS control points may snap onto the other network, and the completeness "
    "buffer, metres. Default: half of --road-width-m.",
)
@click.option("--no-topology", is_flag=True, help="Skip the road topology scores (APLS, completeness).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every number (counts, ratios, per scene and total) to this JSON file.",
)
@click.option("--overwrite", is_flag=True, help="Replace the --json file if it exists.")
def command(
    pred: Path,
    truth: Path,
    raster: Path | None,
    truth_layer: str | None,
    class_field: str | None,
    building_value: str,
    road_value: str,
    road_width_m: float,
    iou: float,
    min_area_m2: float,
    pixel_size_m: float,
    topology_pixel_m: float,
    topology_spacing_m: float,
    snap_m: float | None,
    no_topology: bool,
    json_path: Path | None,
    overwrite: bool,
) -> None:
    """Score predicted building and road polygons against truth and print a table.

    Buildings: SpaceNet F1 (one-to-one matches at IoU >= --iou), mean IoU of matches.
    Pixels: IoU of buildings and road surfaces on the raster's grid (nodata excluded).
    Roads: APLS-like path-length similarity and centerline completeness/correctness.
    Everything is computed in metres (the raster's CRS, or the local UTM zone).
    Totals sum the counts over scenes (micro-average). Undefined values print as '-'.

    Exit codes: 0 done, 1 some scenes could not be read, 2 configuration error,
    4 the JSON file cannot be written.
    """
    if json_path is not None and json_path.exists() and not overwrite:
        raise ConfigError(f"{json_path} exists; pass --overwrite to replace it")
    settings = EvaluationSettings(
        iou_threshold=iou,
        min_area_m2=min_area_m2,
        road_width_m=road_width_m,
        pixel_size_m=pixel_size_m,
        topology=None
        if no_topology
        else TopologyParams(pixel_m=topology_pixel_m, spacing_m=topology_spacing_m, snap_m=snap_m),
        truth_layer=truth_layer,
        class_field=class_field,
        classes={"building": building_value, "road": road_value},
    )
    pairs, unmatched = pair_scenes(pred, truth, raster)
    result = evaluate_many(pairs, settings, unmatched_predictions=unmatched)
    if json_path is not None:
        write_result_json(result, json_path, overwrite=overwrite)
    click.echo(format_table(result))
    if json_path is not None:
        click.echo(f"wrote {json_path}")
    if result.failed:
        click.echo(f"{len(result.failed)} scene(s) could not be evaluated: {', '.join(result.failed)}", err=True)
        sys.exit(1)
