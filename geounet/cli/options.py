"""Option decorators shared by ``predict`` and ``run``; flags given explicitly win over files."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from geounet.errors import ConfigError


def output_folder(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--out`` callback: an existing file is refused before anything starts (a usage error,
    exit 2), naming it and the fix; a folder, new or existing, is taken."""
    if value is not None and os.path.exists(value) and not os.path.isdir(value):
        raise click.BadParameter(
            f"{value} is a file, not a folder; choose a folder for --out (new or existing)", ctx=ctx, param=param
        )
    return value


def _parse_thresholds(values: tuple[str, ...]) -> dict[str, float] | None:
    if not values:
        return None
    out: dict[str, float] = {}
    for v in values:
        name, sep, num = v.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(num)
        except ValueError:
            raise ConfigError(f"--threshold {v!r} must look like CLASS=VALUE, e.g. building=0.5") from None
    return out


def _parse_ints(value: str | None, flag: str) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {value!r} must be comma-separated integers, e.g. 1,2,3") from None


def _parse_names(value: str | None) -> list[str] | None:
    names = [x.strip() for x in (value or "").split(",") if x.strip()]
    return names or None


INFERENCE_OPTIONS: list[Callable[..., Any]] = [
    click.option(
        "--tile-size",
        type=int,
        help="Largest model input window, pixels per side (multiple of 2**depth); a scene gets the fewest "
        "tiles of at most this size. Default: checkpoint's suggestion.",
    ),
    click.option(
        "--halo",
        type=int,
        help="Context pixels kept around each tile core. Default: the model's receptive-field radius, rounded up.",
    ),
    click.option("--tiles-per-block", type=int, help="Tiles per side of one Dask task. Default: 1 on CPU, 3 on CUDA."),
    click.option("--batch-size", type=int, help="Tiles per forward pass. Default: 1 on CPU, 8 on CUDA."),
    click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device. Default: auto (CUDA if visible)."
    ),
    click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
        help="Autocast precision. Default: auto (bf16 where native).",
    ),
    click.option(
        "--bands",
        help="1-based scene bands fed to the model, comma-separated, e.g. 1,2,3. Default: checkpoint's bands.",
    ),
    click.option(
        "--threshold",
        "thresholds",
        multiple=True,
        metavar="CLASS=P",
        help="Probability threshold in [0, 1] for a class; repeatable. Default: checkpoint's (0.5).",
    ),
    click.option("--simplify-m", type=float, help="Simplification tolerance, metres. Default: 0 (pixel outlines)."),
    click.option("--min-area-m2", type=float, help="Drop polygons smaller than this, square metres. Default: 0."),
    click.option("--fill-holes-m2", type=float, help="Fill holes smaller than this, square metres. Default: 0."),
    click.option(
        "--formats",
        help="Outputs to write, comma-separated from geojson,gpkg,probability,quicklook,stac (item.json per scene, "
        "catalog.json per run). Default: all.",
    ),
    click.option("--max-pixels", type=int, help="Refuse scenes larger than this many pixels. Default: 4e9."),
    click.option(
        "--gsd",
        "gsd_m",
        type=float,
        metavar="METRES",
        help="The scenes' ground pixel size in metres, for scenes whose georeferencing is wrong; scenes are "
        "resampled to the model's pixel size. Default: each scene's own (measured at its centre).",
    ),
    click.option(
        "--stac-asset",
        metavar="KEY|role:NAME",
        help="Scenes given as STAC items or catalogs: the asset to segment, by key or role:NAME. "
        "Default: auto (the first GeoTIFF asset with role data, else visual).",
    ),
    click.option(
        "--stac-bands",
        metavar="NAMES",
        help="Scenes given as STAC: bands by name or common name from the asset's bands/eo:bands, "
        "comma-separated, e.g. red,green,blue. Default: --bands, else the checkpoint's.",
    ),
    click.option(
        "--centerlines/--no-centerlines",
        default=None,
        help="Trace road classes as centerline graphs (road_centerlines.geojson, GeoPackage layers "
        "road_centerlines and road_nodes). Default: on.",
    ),
    click.option(
        "--regularize/--no-regularize",
        default=None,
        help="Regular building outlines (walls along each building's directions, right angles); the pixel "
        "outlines stay in polygons.gpkg as <class>_raw. Default: on.",
    ),
    click.option(
        "--separate/--no-separate",
        default=None,
        help="Split touching buildings into one polygon each along the model's separation lines. Default: on.",
    ),
    click.option(
        "--tta/--no-tta",
        default=None,
        help="Test-time augmentation: average each tile over its 8 flips and quarter turns (8x compute). Default: off.",
    ),
]


def inference_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(INFERENCE_OPTIONS):
        f = opt(f)
    return f


def inference_overrides(kw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turn parsed flags into settings overrides (None = not given, so the file wins)."""
    formats = kw.pop("formats", None)
    over = {
        "tile_size": kw.pop("tile_size", None),
        "halo": kw.pop("halo", None),
        "tiles_per_block": kw.pop("tiles_per_block", None),
        "batch_size": kw.pop("batch_size", None),
        "device": kw.pop("device", None),
        "precision": kw.pop("precision", None),
        "bands": _parse_ints(kw.pop("bands", None), "--bands"),
        "thresholds": _parse_thresholds(kw.pop("thresholds", ()) or ()),
        "simplify_m": kw.pop("simplify_m", None),
        "min_area_m2": kw.pop("min_area_m2", None),
        "fill_holes_m2": kw.pop("fill_holes_m2", None),
        "formats": [f.strip() for f in formats.split(",") if f.strip()] if formats else None,
        "max_pixels": kw.pop("max_pixels", None),
        "gsd_m": kw.pop("gsd_m", None),
        "tta": kw.pop("tta", None),
        "centerlines.enabled": kw.pop("centerlines", None),
        "regularize.enabled": kw.pop("regularize", None),
        "separate.enabled": kw.pop("separate", None),
        "stac_asset": kw.pop("stac_asset", None),
        "stac_bands": _parse_names(kw.pop("stac_bands", None)),
    }
    return {f"{prefix}{k}": v for k, v in over.items()}
