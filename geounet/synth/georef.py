"""Where a synthetic scene lies on Earth: CRS, pixel size and north-up geotransform.

Pure functions, no I/O. Defaults:

* resolution: 0.5 m per pixel. For a projected CRS it is converted to the CRS's linear
  unit (0.5 m = 1.64 ft in a foot-based CRS). For a geographic CRS it is given in degrees;
  when left out it is ``0.5 / 111320`` degrees (about 4.49e-6 deg), i.e. 0.5 m north-south
  and ``0.5 * cos(latitude)`` m east-west -- pixels stay square in degrees.
* origin (upper-left corner): the scene is centred on the centre of the CRS's area of use
  (latitude clamped to +-60 deg); a CRS valid world-wide (EPSG:4326, EPSG:3857) is centred on
  15 deg E, 48 deg N. A projected origin is snapped to whole pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.errors import CRSError

from geounet.errors import ConfigError

DEFAULT_GSD_M = 0.5
METRES_PER_DEGREE = 111_320.0  # one degree of latitude, roughly
WORLD_DEFAULT_LONLAT = (15.0, 48.0)
MAX_ABS_LATITUDE = 60.0


@dataclass(frozen=True)
class SceneGrid:
    """The pixel grid of a scene: ``transform`` maps (col, row) to CRS coordinates."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    gsd: float  # ground metres per pixel (north-south for a geographic CRS)

    @property
    def resolution(self) -> float:
        return self.transform.a


def parse_crs(crs: str | CRS) -> CRS:
    try:
        parsed = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    except (CRSError, ValueError) as exc:
        raise ConfigError(
            f"crs {crs!r} is not a coordinate reference system GDAL knows ({exc}); "
            f"give e.g. EPSG:32633 (UTM 33N), EPSG:32733 (UTM 33S) or EPSG:4326"
        ) from None
    if not (parsed.is_projected or parsed.is_geographic):
        raise ConfigError(f"crs {crs!r} is neither projected nor geographic; give e.g. EPSG:32633 or EPSG:4326")
    return parsed


def _metres_per_unit(crs: CRS) -> float:
    factor = crs.linear_units_factor[1] if crs.is_projected else None
    return float(factor) if factor else 1.0


def _proj(crs: CRS) -> ProjCRS:
    # An EPSG code keeps the area of use, which GDAL's WKT1 export drops.
    epsg = crs.to_epsg()
    return ProjCRS.from_epsg(epsg) if epsg else ProjCRS.from_wkt(crs.to_wkt())


def _default_lonlat(crs: CRS) -> tuple[float, float]:
    area = _proj(crs).area_of_use
    if area is None or area.east - area.west >= 359.0:  # world-wide: EPSG:4326, EPSG:3857
        return WORLD_DEFAULT_LONLAT
    west, east = area.west, area.east
    if east < west:  # crosses the antimeridian
        east += 360.0
    lon = (west + east) / 2
    lon = lon - 360.0 if lon > 180.0 else lon
    lat = max(-MAX_ABS_LATITUDE, min(MAX_ABS_LATITUDE, (area.south + area.north) / 2))
    return lon, lat


def make_grid(
    width: int, height: int, crs: str | CRS, resolution: float | None, origin: tuple[float, float] | None
) -> SceneGrid:
    """Normalise CRS, resolution and origin into one north-up pixel grid."""
    parsed = parse_crs(crs)
    geographic = parsed.is_geographic
    if resolution is None:
        resolution = DEFAULT_GSD_M / METRES_PER_DEGREE if geographic else DEFAULT_GSD_M / _metres_per_unit(parsed)
    resolution = float(resolution)
    if not (math.isfinite(resolution) and resolution > 0):
        raise ConfigError(f"resolution {resolution} must be a positive number of CRS units per pixel")
    if geographic and resolution > 0.01:
        raise ConfigError(
            f"resolution {resolution} is in degrees for the geographic CRS {parsed.to_string()} "
            f"(about {resolution * METRES_PER_DEGREE / 1000:.0f} km per pixel); give degrees "
            f"such as 4.5e-06 (0.5 m) or leave it out"
        )
    gsd = resolution * (METRES_PER_DEGREE if geographic else _metres_per_unit(parsed))

    if origin is None:
        lon, lat = _default_lonlat(parsed)
        if geographic:
            cx, cy = lon, lat
        else:
            to_crs = Transformer.from_crs("EPSG:4326", _proj(parsed), always_xy=True)
            cx, cy = to_crs.transform(lon, lat)
        x0 = cx - width * resolution / 2
        y0 = cy + height * resolution / 2
        if not geographic:
            x0 = round(x0 / resolution) * resolution
            y0 = round(y0 / resolution) * resolution
    else:
        try:
            x0, y0 = (float(v) for v in origin)
        except (TypeError, ValueError):
            raise ConfigError(f"origin {origin!r} must be two numbers: the x and y of the upper-left corner") from None
        if not (math.isfinite(x0) and math.isfinite(y0)):
            raise ConfigError(f"origin {origin!r} must be finite")
    if geographic and (y0 > 90.0 or y0 - height * resolution < -90.0):
        raise ConfigError(
            f"scene from latitude {y0} down {height} rows of {resolution} deg leaves -90..90; move the origin"
        )
    return SceneGrid(
        crs=parsed, transform=Affine(resolution, 0.0, x0, 0.0, -resolution, y0), width=width, height=height, gsd=gsd
    )


def pixel_to_crs(grid: SceneGrid) -> Callable[[np.ndarray], np.ndarray]:
    """A coordinate function for :func:`shapely.transform`: global pixels -> CRS."""
    t = grid.transform

    def apply(coords: np.ndarray) -> np.ndarray:
        out = coords.copy()
        out[:, 0] = t.c + coords[:, 0] * t.a
        out[:, 1] = t.f + coords[:, 1] * t.e
        return out

    return apply
