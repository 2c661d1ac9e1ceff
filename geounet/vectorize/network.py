"""Road networks of a scene, on the client: the linear classes' masks staged as blocks arrive,
then traced window by window into centerline graphs joined exactly across the windows' seams.

Why here and not on the workers: a block's probabilities are exact only in its core (its
halo had less context), so a worker cannot thin its core with a halo of true mask around it
without computing an overlap of ``g`` more pixels per side (about 20 % more model work). The
client already receives every core; it writes the linear classes' cores into a small scratch
GeoTIFF beside the scene's outputs (:class:`LinearStage`; uint8, 0 background, else the
probability x 255, at least 1) and, once the scene's last block is in, reads it back in
windows of :data:`WINDOW` px plus a halo, each traced by
:func:`geounet.vectorize.centerlines.trace_window` (hole fill, thinning, node classification,
widths), joined by :func:`~geounet.vectorize.centerlines.join_windows` and cleaned by
:func:`~geounet.vectorize.graph.clean_graph` with lengths converted from metres. Only one
window is in memory at a time; the scene's mask is never held. The windows form their own
grid, independent of the blocks: the graph is the same for any block grid and equals the
whole mask's when the halo covers the widest road (``max_width_m``) and the largest fillable
hole (tests/test_centerlines.py, tests/test_road_network.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer
from rasterio.windows import Window

from geounet.atomic import partial_name
from geounet.errors import OutputError
from geounet.settings import CenterlineSettings
from geounet.vectorize.centerlines import exact_halo_px, join_windows, trace_window
from geounet.vectorize.graph import CenterlineGraph, clean_graph

# Core side of the windows the graph is traced in, px: large enough that the halo (~60-100 px
# at 0.5 m) costs little, small enough that a window's arrays stay tens of MB.
WINDOW = 2048
RASTER_ERRORS = (rasterio.errors.RasterioError, OSError)


def encode_linear(probs: np.ndarray, masks: Sequence[np.ndarray], classes: Sequence[int]) -> np.ndarray:
    """``(L, h, w)`` uint8 for the linear ``classes``: 0 where the class mask is off, else its
    probability x 255 (at least 1, so a foreground pixel is never read back as background)."""
    out = np.zeros((len(classes), *probs.shape[1:]), np.uint8)
    for i, k in enumerate(classes):
        q = np.clip(np.rint(probs[k] * 255.0), 1, 255).astype(np.uint8)
        out[i][masks[k]] = q[masks[k]]
    return out


@dataclass(frozen=True)
class GraphParams:
    """:class:`~geounet.settings.CenterlineSettings` in pixels of the model grid."""

    max_hole_area_px: int
    max_hole_extent_px: int
    min_spur_px: float
    min_component_px: float
    bridge_px: float
    simplify_px: float
    halo_px: int

    @classmethod
    def from_settings(cls, s: CenterlineSettings, pixel_m: float) -> GraphParams:
        """Convert metres with the grid's ground pixel size ``pixel_m``."""
        extent = math.ceil(s.max_hole_side_m / pixel_m)
        return cls(
            max_hole_area_px=int(s.fill_holes_m2 / pixel_m**2),
            max_hole_extent_px=extent,
            min_spur_px=s.min_spur_m / pixel_m,
            min_component_px=s.min_length_m / pixel_m,
            bridge_px=s.bridge_m / pixel_m,
            simplify_px=s.simplify_m / pixel_m,
            halo_px=exact_halo_px(s.max_width_m / pixel_m, extent),
        )


def windows(width: int, height: int, size: int = WINDOW) -> Iterator[Window]:
    """The cores the graph is traced in: a grid of ``size`` px squares over the model grid."""
    for r in range(0, height, size):
        for c in range(0, width, size):
            yield Window(c, r, min(size, width - c), min(size, height - r))


class LinearStage:
    """The linear classes' masks and probabilities of one scene, staged on disk as blocks
    arrive (a sparse, uncompressed tiled GeoTIFF named ``.partial-…``, removed when the graph
    is traced or the scene fails)."""

    def __init__(
        self, folder: Path, *, width: int, height: int, classes: Sequence[str], crs_wkt: str, transform: Affine
    ) -> None:
        self.path = partial_name(folder / "linear-stage.tif")
        self.width, self.height, self.classes = width, height, list(classes)
        try:
            self.ds = rasterio.open(
                self.path,
                "w",
                driver="GTiff",
                width=width,
                height=height,
                count=len(self.classes),
                dtype="uint8",
                crs=crs_wkt,
                transform=transform,
                tiled=True,
                blockxsize=256,
                blockysize=256,
                compress="none",
                BIGTIFF="IF_SAFER",
                SPARSE_OK=True,
            )
        except RASTER_ERRORS as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc

    def write(self, core: tuple[int, int, int, int], data: np.ndarray) -> None:
        """Stage one block core (``col, row, width, height``) of :func:`encode_linear` values."""
        col, row, w, h = core
        if not data.any():
            return  # sparse: tiles never written read back as 0
        try:
            self.ds.write(data, window=Window(col, row, w, h))
        except RASTER_ERRORS as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc

    def graphs(self, params: GraphParams, size: int | None = None) -> list[CenterlineGraph]:
        """The cleaned centerline graph of each class, in model-grid pixels (windows of
        ``size`` px, default :data:`WINDOW`)."""
        size = size or WINDOW
        try:
            self.ds.close()
        except RASTER_ERRORS as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        try:
            return self._trace(params, size)
        except RASTER_ERRORS as exc:  # the staged file cannot be read back: a full disk dropped blocks
            raise OutputError(
                f"cannot write {self.path}: the staged road mask reads back incomplete ({exc}); "
                f"check the free space of {self.path.parent}"
            ) from exc

    def _trace(self, params: GraphParams, size: int) -> list[CenterlineGraph]:
        g = params.halo_px
        pieces: list[list] = [[] for _ in self.classes]
        with rasterio.open(self.path) as src:
            for core in windows(self.width, self.height, size):
                c0, r0 = max(0, core.col_off - g), max(0, core.row_off - g)
                c1 = min(self.width, core.col_off + core.width + g)
                r1 = min(self.height, core.row_off + core.height + g)
                data = src.read(window=Window(c0, r0, c1 - c0, r1 - r0))
                rows = slice(core.row_off - r0, core.row_off - r0 + core.height)
                cols = slice(core.col_off - c0, core.col_off - c0 + core.width)
                for k in range(len(self.classes)):
                    band = data[k]
                    if not band[rows, cols].any():
                        continue  # no road pixel in the core: no node or path can lie there
                    pieces[k].append(
                        trace_window(
                            band > 0,
                            (rows, cols),
                            (r0, c0),
                            band,
                            max_hole_area_px=params.max_hole_area_px,
                            max_hole_extent_px=params.max_hole_extent_px,
                        )
                    )
        return [
            clean_graph(
                join_windows(p),
                min_spur_px=params.min_spur_px,
                min_component_px=params.min_component_px,
                bridge_px=params.bridge_px,
                simplify_px=params.simplify_px,
            )
            for p in pieces
        ]

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.ds.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


@dataclass
class GraphTables:
    """A graph's edges and nodes in the scene's CRS, with their attributes."""

    lines: np.ndarray  # object array of LineStrings
    u: np.ndarray
    v: np.ndarray
    length_m: np.ndarray  # geodesic, on the CRS's ellipsoid
    width_m: np.ndarray  # median width along the edge
    score: np.ndarray  # mean probability under the line
    points: np.ndarray  # object array of Points (node pixel centres)
    node_id: np.ndarray
    degree: np.ndarray


def geodesic_lengths(lines: np.ndarray, crs_wkt: str) -> np.ndarray:
    """Length of each LineString on the ground, metres: its vertices taken to the CRS's
    geographic CRS and the segments measured on its ellipsoid (right for degrees, Web
    Mercator and UTM alike)."""
    if len(lines) == 0:
        return np.zeros(0)
    crs = CRS.from_wkt(crs_wkt)
    geo = crs.geodetic_crs or CRS.from_epsg(4326)
    coords, index = shapely.get_coordinates(lines, return_index=True)
    lon, lat = Transformer.from_crs(crs, geo, always_xy=True).transform(coords[:, 0], coords[:, 1])
    geod = geo.get_geod() or Geod(ellps="WGS84")
    same = index[1:] == index[:-1]
    _, _, d = geod.inv(lon[:-1][same], lat[:-1][same], lon[1:][same], lat[1:][same])
    return np.bincount(index[1:][same], weights=d, minlength=len(lines))


def graph_tables(graph: CenterlineGraph, transform: object, crs_wkt: str, pixel_m: float) -> GraphTables:
    """The graph in the scene's CRS (``transform``: the model grid's affine) with lengths,
    widths in metres and scores."""
    lines = graph.lines(transform)  # type: ignore[arg-type]
    a, b, c, d, e, f = list(transform)[:6]  # type: ignore[call-overload]
    x = graph.nodes[:, 1] + 0.5
    y = graph.nodes[:, 0] + 0.5
    points = shapely.points(a * x + b * y + c, d * x + e * y + f) if len(graph.nodes) else np.empty(0, object)
    return GraphTables(
        lines=lines,
        u=np.array([ed.u for ed in graph.edges], np.int64),
        v=np.array([ed.v for ed in graph.edges], np.int64),
        length_m=geodesic_lengths(lines, crs_wkt),
        width_m=np.array([ed.median_width_px * pixel_m for ed in graph.edges], np.float64),
        score=np.array([ed.mean_prob for ed in graph.edges], np.float64),
        points=np.asarray(points, dtype=object),
        node_id=np.arange(len(graph.nodes), dtype=np.int64),
        degree=graph.degree.astype(np.int64) if len(graph.nodes) else np.zeros(0, np.int64),
    )
