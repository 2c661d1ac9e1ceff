"""Open and validate scenes before any work is scheduled.

Everything a worker needs to read a scene is captured in a small, picklable
:class:`SceneInfo`. Validation refuses, with the scene and the cause in the message:
files that are not GeoTIFFs (a VRT named ``.tif`` can make GDAL read arbitrary files, so
only an allowlist of drivers may open a scene), scenes beyond the pixel budget, scenes
without a CRS or a geotransform (or georeferenced by ground control points only), with a
non-finite geotransform, a local CRS with no link to the Earth, or corners that do not map
to longitude/latitude, and band layouts the model cannot take.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError

from geounet.errors import SceneError

# The only GDAL driver allowed to open a scene (COGs are GeoTIFFs and open with it). Not
# VRT (it can make GDAL read any file), not the long tail of formats with rarer parsers.
SCENE_DRIVER = "GTiff"
NUMERIC_KINDS = ("u", "i", "f")
# How far past +-180 a corner's longitude may lie: scenes across the antimeridian (and grids
# in 0..360 degrees) go beyond 180; anything further is impossible georeferencing.
MAX_ABS_LON = 540.0


@dataclass(frozen=True)
class SceneInfo:
    """What the client learned about a scene; cheap to send to workers."""

    path: str  # as opened: a local path or a GDAL URL (/vsis3/..., /vsicurl/...)
    stem: str  # output folder name, unique within a run
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: str
    epsg: int | None
    transform: tuple[float, ...]  # GDAL-order-free affine coefficients (a, b, c, d, e, f)
    bands: tuple[int, ...]  # 1-based bands fed to the model
    nodata: float | None
    has_mask: bool  # an alpha band, internal mask or nodata defines invalid pixels
    fingerprint: str
    drivers: tuple[str, ...] = (SCENE_DRIVER,)  # GDAL drivers allowed to open it (training also reads PNG/JPEG)

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def pixels(self) -> int:
        return self.width * self.height


def ground_pixel_size_m(crs_wkt: str | None, transform: Sequence[float], width: int, height: int) -> float | None:
    """Side of one pixel on the ground at the scene's centre, metres (None without a CRS).

    Measured as geodesic distances on the CRS's ellipsoid between the centre pixel and its
    right and lower neighbours (their geometric mean), so it is true for projected CRSs in
    feet, for degrees (EPSG:4326) and for Web Mercator, whose map metres are 1/cos(latitude)
    ground metres.

    Example: a 0.3 m Web Mercator (EPSG:3857) chip at latitude 60 degrees -> 0.15 m.
    """
    if not crs_wkt:
        return None
    try:
        return _ground_pixel_size(CRS.from_wkt(crs_wkt), Affine(*transform[:6]), width, height)
    except (CRSError, ProjError):
        return None  # a CRS pyproj cannot transform: the pixel size is unknown


def _ground_pixel_size(crs: CRS, t: Affine, width: int, height: int) -> float | None:
    cx, cy = width / 2.0, height / 2.0
    pts = [t @ (cx, cy), t @ (cx + 1, cy), t @ (cx, cy + 1)]
    geo = crs.geodetic_crs
    if geo is None:
        return None
    to_geo = Transformer.from_crs(crs, geo, always_xy=True)
    lon, lat = to_geo.transform([p[0] for p in pts], [p[1] for p in pts])
    geod = geo.get_geod()
    if geod is None:
        return None
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    if not (np.isfinite(dx) and np.isfinite(dy)) or dx <= 0 or dy <= 0:
        return None
    return float(np.sqrt(dx * dy))


def is_remote(path: str) -> bool:
    """True for GDAL virtual-filesystem paths and URLs that are not local files."""
    return path.startswith(("/vsi", "http://", "https://", "s3://", "gs://"))


def fingerprint(path: str) -> str:
    """Identity of the input for resume: size, mtime and a hash of the first MiB.

    Remote scenes use GDAL's reported size and the header instead of mtime.
    Costs one small read.
    """
    h = hashlib.sha256()
    if not is_remote(path):
        st = os.stat(path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
    else:
        with rasterio.open(path) as ds:
            h.update(repr((ds.profile, ds.tags())).encode())
    return h.hexdigest()[:16]


def _safe(text: str) -> str:
    """``text`` as a file name: runs of anything but letters, digits, '.', '_', '-' become '_';
    no leading dot (so never '.', '..' or a hidden name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".")


def _stem_for(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return _safe(stem) or "scene"


def unique_stems(
    paths: Sequence[str], reserved: Sequence[str] = (), names: Sequence[str | None] | None = None
) -> list[str]:
    """Output folder names: safe file stems, disambiguated by parent folders on collision.

    ``a/x.tif`` and ``b/x.tif`` become ``a_x`` and ``b_x``; unique stems stay as they are.
    A name is never '.', '..', hidden, nor holds a separator (``...tif`` -> ``scene``), and
    never equals one of ``reserved`` (the run's own files, e.g. ``geounet.log``: such a
    scene gets ``<name>_scene``). Names that still collide (``x y.tif`` and ``x_y.tif``)
    get the first free ``_2``, ``_3``... suffix.

    ``names``: a preferred name per path (a STAC item's id), used as it is when it is already
    a safe file name; None or an unsafe name falls back to the file's stem.
    """
    taken = {r.lower() for r in reserved}
    given = list(names) if names is not None else [None] * len(paths)
    fixed = {i for i, n in enumerate(given) if n and _safe(n) == n}
    stems = [str(given[i]) if i in fixed else _stem_for(p) for i, p in enumerate(paths)]
    stems = [f"{s}_scene" if s.lower() in taken else s for s in stems]
    for depth in range(1, 8):
        seen: dict[str, int] = {}
        for s in stems:
            seen[s] = seen.get(s, 0) + 1
        dup = {s for s, n in seen.items() if n > 1}
        if not dup:
            return stems
        # prefix parent folders only where they tell the colliding scenes apart
        parents_of = [tuple(q for q in p.rstrip("/").split("/")[:-1] if q)[-depth:] for p in paths]
        distinct = {s for s in dup if len({parents_of[i] for i, t in enumerate(stems) if t == s}) > 1}
        if not distinct:
            continue  # try deeper parents
        stems = [
            "_".join([_safe(q) or "_" for q in parents_of[i]] + [_stem_for(p)])
            if s in distinct and i not in fixed
            else s
            for i, (p, s) in enumerate(zip(paths, stems))
        ]
    # Still colliding (identical paths, or names that became equal): number them, never
    # onto a name another scene already has.
    used = set(stems) | taken
    out: list[str] = []
    first: set[str] = set()
    for s in stems:
        if s not in first:
            first.add(s)
            out.append(s)
            continue
        n = 2
        while f"{s}_{n}" in used or f"{s}_{n}".lower() in taken:
            n += 1
        used.add(f"{s}_{n}")
        out.append(f"{s}_{n}")
    return out


def _check_local_file(path: str) -> None:
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise SceneError(path, f"is a dangling symbolic link (points to {os.readlink(p)!r})")
    if not p.exists():
        raise SceneError(path, "does not exist")
    if not p.is_file():
        if p.is_dir():
            raise SceneError(
                path,
                "is a folder, not a scene file: give its GeoTIFFs (e.g. `geounet predict FOLDER/*.tif`) "
                "or run over the folder with `geounet run WORKFLOW --scenes FOLDER`",
            )
        raise SceneError(path, "is not a regular file (a FIFO, device or socket); give the path of a GeoTIFF")
    if not os.access(p, os.R_OK):
        raise SceneError(path, "is not readable (permission denied); check its mode and owner")
    if p.stat().st_size == 0:
        raise SceneError(path, "is empty (0 bytes)")


def _choose_bands(
    path: str, ds: rasterio.io.DatasetReader, in_channels: int, bands: Sequence[int] | None
) -> tuple[int, ...]:
    # A single colour-map band holds palette indices, not colours: expanding it gives RGB bands.
    paletted = ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette and in_channels > ds.count
    expand = (
        "; it is a paletted (colour-map) image: expand it to RGB first, e.g. gdal_translate -expand rgb in.tif out.tif"
        if paletted
        else ""
    )
    if bands is not None:
        bad = [b for b in bands if b > ds.count]
        if bad:
            if expand:
                fix = expand
            elif ds.count < in_channels:
                fix = (
                    f"; the model takes {in_channels} bands, so this scene cannot feed it (a label mask or "
                    f"single-band image?): give the scene with its {in_channels} image bands"
                )
            else:
                hint = ",".join(str(i) for i in range(1, in_channels + 1))
                fix = f"; choose {in_channels} of its bands (--bands {hint} or inference setting `bands:`)"
            raise SceneError(
                path, f"band(s) {bad} of bands {list(bands)} requested but the scene has only {ds.count} band(s){fix}"
            )
        if len(bands) != in_channels:
            raise SceneError(
                path, f"{len(bands)} band(s) {list(bands)} selected but the model takes {in_channels}{expand}"
            )
        return tuple(int(b) for b in bands)
    if ds.count == in_channels:
        return tuple(range(1, ds.count + 1))
    non_alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha]
    if len(non_alpha) == in_channels:
        return tuple(non_alpha)
    if paletted:
        raise SceneError(path, f"has {ds.count} band(s) but the model takes {in_channels}{expand}")
    hint = ", ".join(str(i) for i in range(1, min(in_channels, ds.count) + 1))
    raise SceneError(
        path,
        f"has {ds.count} band(s) but the model takes {in_channels}; select bands explicitly "
        f"(inference setting `bands: [{hint}]` or --bands {hint.replace(' ', '')})",
    )


def _georef_error(crs_wkt: str, t: Affine, width: int, height: int) -> str | None:
    """Why a scene with this CRS and finite geotransform cannot be placed on the Earth, or None.

    Refuses a CRS with no geodetic datum (LOCAL_CS / engineering) and corners that do not map
    to finite longitude/latitude (e.g. a UTM origin millions of kilometres away): such a scene
    would be computed and then fail when its outputs are written as lon/lat GeoJSON.
    """
    try:
        crs = CRS.from_wkt(crs_wkt)
    except CRSError as exc:
        return f"has a CRS that PROJ cannot read ({exc}); assign a standard one (e.g. gdal_edit.py -a_srs EPSG:XXXX)"
    if crs.geodetic_crs is None:
        return (
            f"has a local CRS ({crs.name}) with no link to the Earth, so its outputs cannot be placed on a map "
            "or written as lon/lat GeoJSON; assign the real CRS (e.g. gdal_edit.py -a_srs EPSG:XXXX)"
        )
    corners = [t @ (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    detail = f"x {min(xs):.10g}..{max(xs):.10g}, y {min(ys):.10g}..{max(ys):.10g} in {crs.to_string()}"
    try:
        lon, lat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True).transform(xs, ys)
    except (CRSError, ProjError) as exc:
        return f"has corners ({detail}) that do not map to longitude/latitude ({exc}); check the geotransform and CRS"
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()) or (
        np.abs(lat).max() > 90.0 + 1e-9 or np.abs(lon).max() > MAX_ABS_LON
    ):
        got = ", ".join(f"({x:.6g}, {y:.6g})" for x, y in zip(lon, lat))
        return (
            f"has corners ({detail}) that do not map to longitude/latitude (got {got}); check the geotransform and CRS"
        )
    return None


def open_scene(
    path: str | os.PathLike[str],
    *,
    in_channels: int,
    bands: Sequence[int] | None = None,
    max_pixels: int = 4_000_000_000,
    use_nodata: bool = True,
    stem: str | None = None,
) -> SceneInfo:
    """Open ``path`` with the driver allowlist and check everything a model run needs.

    Reads only the header and, for the fingerprint, the first MiB of a local file.

    Raises:
        SceneError: naming the scene and the cause.
    """
    path = os.fspath(path)
    if not is_remote(path):
        _check_local_file(path)
    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            ds = rasterio.open(path, driver=SCENE_DRIVER)
    except RasterioError as exc:
        raise SceneError(
            path,
            f"cannot be opened as a GeoTIFF (only GTiff/COG files are read; VRT and other formats are refused): {exc}",
        ) from None
    with ds:
        if ds.driver != SCENE_DRIVER:
            raise SceneError(path, f"has driver {ds.driver}; only {SCENE_DRIVER} files are read")
        w, h = ds.width, ds.height
        if w * h > max_pixels:
            raise SceneError(
                path,
                f"is {w} x {h} = {w * h:,} pixels, above the pixel budget of {max_pixels:,}; "
                "raise `max_pixels` if this is intended",
            )
        no_transform = ds.transform == Affine.identity()
        if no_transform and ds.gcps[0]:
            raise SceneError(
                path,
                f"is georeferenced by ground control points only ({len(ds.gcps[0])} GCPs, no geotransform); "
                "warp it first, e.g. gdalwarp -t_srs EPSG:XXXX in.tif out.tif (assigning a CRS does not place it)",
            )
        if ds.crs is None:
            raise SceneError(path, "has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:XXXX)")
        if no_transform:
            raise SceneError(path, "has no geotransform; the scene cannot be placed on the map")
        coefficients = tuple(ds.transform)[:6]
        if not all(math.isfinite(v) for v in coefficients):
            raise SceneError(
                path,
                f"has a geotransform with non-finite coefficients {coefficients}; fix its georeferencing "
                "(e.g. gdal_edit.py -a_ullr ulx uly lrx lry)",
            )
        if ds.transform.determinant == 0:
            raise SceneError(path, f"has a degenerate geotransform {coefficients}")
        georef = _georef_error(ds.crs.to_wkt(), ds.transform, w, h)
        if georef:
            raise SceneError(path, georef)
        dtypes = set(ds.dtypes)
        if len(dtypes) != 1:
            raise SceneError(path, f"mixes band data types {sorted(dtypes)}; convert to one type")
        dtype = ds.dtypes[0]
        if np.dtype(dtype).kind not in NUMERIC_KINDS:
            raise SceneError(path, f"has data type {dtype}; the model takes integer or float bands")
        chosen = _choose_bands(path, ds, in_channels, bands)
        flags = [ds.mask_flag_enums[b - 1] for b in chosen]
        has_mask = use_nodata and any(MaskFlags.all_valid not in f for f in flags)
        epsg = ds.crs.to_epsg()
        info = SceneInfo(
            path=path,
            stem=stem or _stem_for(path),
            width=w,
            height=h,
            count=ds.count,
            dtype=dtype,
            crs_wkt=ds.crs.to_wkt(),
            epsg=epsg,
            transform=tuple(ds.transform)[:6],
            bands=chosen,
            nodata=ds.nodata,
            has_mask=has_mask,
            fingerprint="",
        )
    try:
        fp = fingerprint(path)
    except OSError as exc:
        raise SceneError(path, f"cannot be read: {exc}") from None
    return SceneInfo(**{**info.__dict__, "fingerprint": fp})
