"""Road networks through the whole pipeline: a road mask (the probe model outlines band 1)
becomes road_centerlines.geojson and the GeoPackage layers road_centerlines / road_nodes; the
graph does not depend on the windows it is traced in, matches what the mask says (junctions,
ends, lengths and widths in metres) and rebuilds as a networkx graph."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from skimage.draw import line as draw_line

import geounet.vectorize.network as network
from geounet.batch.run import run_scenes
from geounet.settings import CenterlineSettings, InferenceSettings
from tests.conftest import make_checkpoint, write_tif

UTM = Affine(0.5, 0, 500000.0, 0, -0.5, 4650000.0)  # 0.5 m pixels, EPSG:32633


def _scene(path: Path, mask: np.ndarray) -> Path:
    img = np.zeros((3, *mask.shape), np.uint8)
    img[0][mask] = 255  # the probe model's road (and building) probability is ~1 exactly here
    img[1:] = 90
    return write_tif(path, img, crs="EPSG:32633", transform=UTM)


def _thick_line(mask: np.ndarray, r0: int, c0: int, r1: int, c1: int, width: int) -> None:
    rr, cc = draw_line(r0, c0, r1, c1)
    h = width // 2
    for dr in range(-h, width - h):
        for dc in range(-h, width - h):
            mask[np.clip(rr + dr, 0, mask.shape[0] - 1), np.clip(cc + dc, 0, mask.shape[1] - 1)] = True


def _run(scene: Path, out: Path, client, window: int, monkeypatch: pytest.MonkeyPatch, **centerlines) -> Path:
    monkeypatch.setattr(network, "WINDOW", window)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(out.parent / "probe.safetensors", arch="probe", width=1, depth=4)
    settings = InferenceSettings(
        tile_size=64,
        halo=0,
        formats=["geojson", "gpkg", "quicklook"],
        centerlines=CenterlineSettings(**centerlines),
    )
    [res] = run_scenes([str(scene)], ckpt, out, settings, client=client, progress=False)
    assert res.status == "success", res.error
    return out / scene.stem


def _hub(nodes) -> int:
    return int(nodes[nodes["degree"] == 4]["id"].iloc[0])


def test_plus_shaped_road_is_one_junction_and_four_ends(tmp_path: Path, dask_local, monkeypatch) -> None:
    mask = np.zeros((200, 240), bool)
    mask[96:104, 20:220] = True  # 8 px = 4 m wide, 100 m long
    mask[10:190, 116:124] = True  # 4 m wide, 90 m long
    folder = _run(_scene(tmp_path / "plus.tif", mask), tmp_path / "out", dask_local, 100, monkeypatch)
    edges = pyogrio.read_dataframe(folder / "polygons.gpkg", layer="road_centerlines")
    nodes = pyogrio.read_dataframe(folder / "polygons.gpkg", layer="road_nodes")
    assert edges.crs.to_epsg() == 32633 and nodes.crs.to_epsg() == 32633
    assert sorted(nodes["degree"]) == [1, 1, 1, 1, 4]
    assert len(edges) == 4
    assert edges["width_m"].to_numpy() == pytest.approx(4.0, abs=0.6)
    # arms from the junction (col 119.5, row 99.5) to the ends: about 50, 50, 45, 45 m
    assert sorted(edges["length_m"]) == pytest.approx([44.5, 44.5, 50.0, 50.0], abs=2.5)
    assert (edges["score"] > 0.99).all()
    # the junction sits at the crossing's centre, in the scene's CRS
    junction = nodes[nodes["degree"] == 4].geometry.iloc[0]
    x, y = UTM @ (120, 100)
    assert junction.distance(shapely.Point(x, y)) < 1.0
    # RFC 7946 GeoJSON: lon/lat LineStrings with the same attributes
    doc = json.loads((folder / "road_centerlines.geojson").read_text())
    assert {f["geometry"]["type"] for f in doc["features"]} == {"LineString"}
    lon, lat = doc["features"][0]["geometry"]["coordinates"][0]
    assert 14.9 < lon < 15.1 and 41.9 < lat < 42.1  # 500000 E, 4650000 N in UTM 33N
    info = pyogrio.read_info(folder / "road_centerlines.geojson")
    assert info["geometry_type"] == "LineString" and info["features"] == 4
    # networkx, osmnx-style: nodes by id, edges (u, v) with their length
    g = nx.MultiGraph()
    for row in nodes.itertuples():
        g.add_node(row.id, x=row.geometry.x, y=row.geometry.y)
    for row in edges.itertuples():
        g.add_edge(row.u, row.v, length=row.length_m, geometry=row.geometry)
    assert dict(g.degree()) == dict(zip(nodes["id"], nodes["degree"]))
    assert nx.is_connected(g)
    # the quicklook draws the graph (magenta) along the roads' middle rows and columns
    from PIL import Image

    from geounet.export.quicklook import CENTERLINE_COLOUR

    ql = np.asarray(Image.open(folder / "quicklook.png"))
    drawn = np.all(ql == CENTERLINE_COLOUR, axis=-1)
    rows, cols = np.nonzero(drawn)
    assert drawn[99:101, 30:210].any(axis=0).all() and drawn[20:180, 119:121].any(axis=1).all()
    assert set(rows[(cols < 110) | (cols > 130)]) <= {99, 100} and set(cols[(rows < 90) | (rows > 110)]) <= {119, 120}
    arm = {int(r.u if r.u != hub else r.v): r.length_m for r in edges.itertuples() for hub in [_hub(nodes)]}
    for a in arm:
        for b in arm:
            if a != b:  # from one end to another through the junction: the two arms
                assert nx.shortest_path_length(g, a, b, weight="length") == pytest.approx(arm[a] + arm[b])


def test_the_graph_does_not_depend_on_the_windows(tmp_path: Path, dask_local, monkeypatch) -> None:
    rng = np.random.default_rng(7)
    mask = np.zeros((260, 300), bool)
    for _ in range(6):
        r0, r1 = rng.integers(0, 260, 2)
        c0, c1 = rng.integers(0, 300, 2)
        _thick_line(mask, int(r0), int(c0), int(r1), int(c1), int(rng.integers(4, 12)))
    _thick_line(mask, 40, 0, 40, 299, 8)  # a road running along a window seam (rows 32-48)
    mask[150:160, 200:212] = False  # a hole in a road junction area (filled or not, alike)
    scene = _scene(tmp_path / "net.tif", mask)
    params = {"max_width_m": 8.0, "max_hole_side_m": 4.0}
    whole = _run(scene, tmp_path / "whole" / "out", dask_local, 10_000, monkeypatch, **params)
    tiled = _run(scene, tmp_path / "tiled" / "out", dask_local, 40, monkeypatch, **params)
    a = json.loads((whole / "road_centerlines.geojson").read_text())
    b = json.loads((tiled / "road_centerlines.geojson").read_text())
    assert len(a["features"]) > 5
    assert a == b
    na = pyogrio.read_dataframe(whole / "polygons.gpkg", layer="road_nodes")
    nb = pyogrio.read_dataframe(tiled / "polygons.gpkg", layer="road_nodes")
    assert list(na.geometry.to_wkb()) == list(nb.geometry.to_wkb()) and list(na["degree"]) == list(nb["degree"])


def test_short_pieces_are_dropped_and_no_graph_without_linear_classes(tmp_path: Path, dask_local, monkeypatch):
    mask = np.zeros((120, 200), bool)
    mask[20:26, 10:190] = True  # 90 m: kept
    mask[80:86, 10:40] = True  # 15 m: shorter than min_length_m = 20 m
    scene = _scene(tmp_path / "short.tif", mask)
    folder = _run(scene, tmp_path / "out", dask_local, 10_000, monkeypatch)
    edges = pyogrio.read_dataframe(folder / "polygons.gpkg", layer="road_centerlines")
    # 90 m of mask; the centerline ends about half the road's width (1.5 m) inside each end
    assert len(edges) == 1 and edges["length_m"].iloc[0] == pytest.approx(87.0, abs=1)
    off = _run(scene, tmp_path / "off" / "out", dask_local, 10_000, monkeypatch, enabled=False)
    assert not (off / "road_centerlines.geojson").exists()
    assert "road_centerlines" not in [n for n, _ in pyogrio.list_layers(off / "polygons.gpkg")]
    assert json.loads((off / "scene.json").read_text())["centerlines"] == {}
