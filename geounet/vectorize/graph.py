"""Road centerline graphs: the :class:`CenterlineGraph` type, its cleaning and its export.

A graph lives on the scene's model grid in **global pixel coordinates**: a node is a pixel
``(row, col)``; an edge carries the pixel path it was traced along and its geometry ``xy``
in pixel coordinates with the pixel-centre convention ``x = col + 0.5, y = row + 0.5`` (the
same convention as the polygons' integer pixel corners, so ``postprocess``'s transform
places both right). :mod:`geounet.vectorize.centerlines` builds graphs from masks;
:func:`clean_graph` cleans them; :func:`to_networkx` hands them to networkx (and APLS).

Every graph this module returns is in one canonical form, so that two graphs built from
the same pixels compare equal field by field:

* node ids number the node pixels in lexicographic ``(row, col)`` order;
* an edge's path runs in the direction whose pixel sequence is lexicographically smaller
  (so ``u <= v``; a loop starts at its node either way round, the smaller way wins);
* a node of degree 2 joins two edges into one unless it is the only node of a loop; such
  a loop's node is its lexicographically smallest pixel;
* edges are sorted by ``(u, v, pixel count, pixel bytes)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import shapely
from affine import Affine
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.draw import line as draw_line

from geounet.errors import ConfigError

__all__ = ["CenterlineGraph", "Edge", "clean_graph", "to_networkx"]

# How far back along a dead end its direction is measured for gap bridging, pixels.
BRIDGE_LOOKBACK_PX = 8


def pixel_centres(path: np.ndarray) -> np.ndarray:
    """``(n, 2)`` pixels ``(row, col)`` -> ``(n, 2)`` float points ``(col + 0.5, row + 0.5)``."""
    return np.asarray(path, dtype=np.float64)[:, ::-1] + 0.5


def polyline_length(xy: np.ndarray) -> float:
    """Length of a polyline given as ``(n, 2)`` points, in their unit."""
    if len(xy) < 2:
        return 0.0
    d = np.diff(xy, axis=0)
    return float(np.hypot(d[:, 0], d[:, 1]).sum())


def _lex_less(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether pixel sequence ``a`` is lexicographically smaller than ``b`` (same length)."""
    fa, fb = a.ravel(), b.ravel()
    diff = np.flatnonzero(fa != fb)
    return bool(diff.size) and bool(fa[diff[0]] < fb[diff[0]])


def smallest_pixel(path: np.ndarray) -> int:
    """Index of the lexicographically smallest ``(row, col)`` of a path."""
    return int(np.lexsort((path[:, 1], path[:, 0]))[0])


@dataclass(frozen=True, eq=False)
class Edge:
    """One centerline between two nodes, or a loop at one node.

    Attributes:
        u, v: ids of the nodes at the first and the last pixel of ``path`` (equal for a loop).
        path: ``(n, 2)`` int64 global pixels ``(row, col)`` from u's pixel to v's pixel.
            Consecutive pixels are 8-neighbours, except the last step into a contracted
            junction's pixel and the pixels of a bridged gap (straight steps).
        width_px: ``(n,)`` float32 road width at each pixel, in pixels (``2·edt - 1``, see
            :mod:`geounet.vectorize.centerlines`); NaN where unknown (bridged gaps).
        prob: ``(n,)`` float32 road probability 0..1 at each pixel; NaN where none was given.
        xy: ``(m, 2)`` float64 geometry in pixel coordinates (``x = col + 0.5``,
            ``y = row + 0.5``): the pixel centres of ``path``, or fewer points once simplified.
    """

    u: int
    v: int
    path: np.ndarray
    width_px: np.ndarray
    prob: np.ndarray
    xy: np.ndarray

    @property
    def length_px(self) -> float:
        """Length of the geometry, pixels."""
        return polyline_length(self.xy)

    @property
    def median_width_px(self) -> float:
        """Median road width along the edge, pixels; NaN when unknown everywhere."""
        w = self.width_px[np.isfinite(self.width_px)]
        return float(np.median(w)) if w.size else math.nan

    @property
    def mean_prob(self) -> float:
        """Mean road probability along the edge (0..1); NaN when none was given."""
        p = self.prob[np.isfinite(self.prob)]
        return float(p.mean()) if p.size else math.nan


@dataclass(frozen=True, eq=False)
class CenterlineGraph:
    """A road centerline graph in global pixel coordinates, in canonical form (module docstring).

    Attributes:
        nodes: ``(N, 2)`` int64 node pixels ``(row, col)``, sorted; node id = row index.
        edges: the edges, sorted by ``(u, v, pixel count, pixels)``.
    """

    nodes: np.ndarray
    edges: tuple[Edge, ...]

    @property
    def degree(self) -> np.ndarray:
        """``(N,)`` edge ends at each node (a loop counts twice)."""
        ends = np.array([[e.u, e.v] for e in self.edges], dtype=np.int64).ravel()
        return np.bincount(ends, minlength=len(self.nodes))

    @property
    def length_px(self) -> float:
        """Total length of the edges' geometries, pixels."""
        return float(sum(e.length_px for e in self.edges))

    def lines(self, transform: Affine | None = None) -> np.ndarray:
        """The edges' geometries as an object array of LineStrings, in pixel coordinates or,
        with ``transform`` (the grid's affine transform), in its CRS."""
        out = np.empty(len(self.edges), dtype=object)
        for i, e in enumerate(self.edges):
            out[i] = shapely.LineString(_apply(transform, e.xy) if len(e.xy) > 1 else np.repeat(e.xy, 2, axis=0))
        return out


def _apply(transform: Affine | None, xy: np.ndarray) -> np.ndarray:
    """Points ``(n, 2)`` through an affine transform (identity when ``None``)."""
    if transform is None:
        return xy
    a, b, c, d, e, f = transform[:6]
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([a * x + b * y + c, d * x + e * y + f])


# ---------------------------------------------------------------------------------------
# A mutable working form shared by the join (centerlines.py) and the cleaning below
# ---------------------------------------------------------------------------------------


@dataclass
class WorkEdge:
    """An edge while a graph is being built or cleaned: node ids, pixels and their values."""

    u: int
    v: int
    path: np.ndarray
    width_px: np.ndarray
    prob: np.ndarray

    def oriented(self, start: int) -> WorkEdge:
        """The same edge running from node ``start`` (which must be one of its ends)."""
        if self.u == start:
            return self
        return WorkEdge(self.v, self.u, self.path[::-1], self.width_px[::-1], self.prob[::-1])

    @property
    def length_px(self) -> float:
        return polyline_length(self.path.astype(np.float64))


class WorkGraph:
    """Nodes (id -> pixel) and edges (id -> :class:`WorkEdge`) with their incidences.

    The steps here are the rules of the canonical form (module docstring) and of
    :func:`clean_graph`; :meth:`freeze` returns the canonical :class:`CenterlineGraph`.
    """

    def __init__(self) -> None:
        self.pixel: dict[int, tuple[int, int]] = {}
        self.edges: dict[int, WorkEdge] = {}
        self.incident: dict[int, set[int]] = {}
        self._next_node = 0
        self._next_edge = 0

    @classmethod
    def of(cls, graph: CenterlineGraph) -> WorkGraph:
        work = cls()
        for r, c in graph.nodes.tolist():
            work.add_node((r, c))
        for e in graph.edges:
            work.add_edge(WorkEdge(e.u, e.v, e.path, e.width_px, e.prob))
        return work

    def add_node(self, pixel: tuple[int, int]) -> int:
        n = self._next_node
        self._next_node += 1
        self.pixel[n] = pixel
        self.incident[n] = set()
        return n

    def remove_node(self, n: int) -> None:
        for k in list(self.incident[n]):
            self.remove_edge(k)
        del self.pixel[n], self.incident[n]

    def add_edge(self, e: WorkEdge) -> int:
        k = self._next_edge
        self._next_edge += 1
        self.edges[k] = e
        self.incident[e.u].add(k)
        self.incident[e.v].add(k)
        return k

    def remove_edge(self, k: int) -> None:
        e = self.edges.pop(k)
        self.incident[e.u].discard(k)
        self.incident[e.v].discard(k)

    def degree(self, n: int) -> int:
        return sum(2 if self.edges[k].u == self.edges[k].v else 1 for k in self.incident[n])

    def sorted_nodes(self) -> list[int]:
        return sorted(self.pixel, key=self.pixel.__getitem__)

    def merge_degree_two(self) -> None:
        """Join the two edges at every node of degree 2 into one edge; the node goes.

        A loop left with a single node of degree 2 keeps one node, moved to the loop's
        lexicographically smallest pixel (so the result does not depend on the order of
        the merges). Cost: linear in the merged pixels.
        """
        for n in self.sorted_nodes():
            ks = sorted(self.incident[n])
            if len(ks) != 2 or any(self.edges[k].u == self.edges[k].v for k in ks):
                continue
            a = self.edges[ks[0]]
            b = self.edges[ks[1]]
            a = a.oriented(a.v if a.u == n else a.u)  # runs into n
            b = b.oriented(n)  # runs out of n
            self.remove_edge(ks[0])
            self.remove_edge(ks[1])
            self.add_edge(
                WorkEdge(
                    a.u,
                    b.v,
                    np.concatenate([a.path, b.path[1:]]),
                    np.concatenate([a.width_px, b.width_px[1:]]),
                    np.concatenate([a.prob, b.prob[1:]]),
                )
            )
            del self.pixel[n], self.incident[n]
        for n in self.sorted_nodes():
            ks = list(self.incident[n])
            if len(ks) == 1 and self.edges[ks[0]].u == self.edges[ks[0]].v == n:
                self.reroot_loop(n)

    def reroot_loop(self, n: int) -> None:
        """Move the only node of a pure loop to the loop's smallest pixel."""
        (k,) = self.incident[n]
        e = self.edges[k]
        ring = slice(0, len(e.path) - 1)  # the path is closed: its last pixel is its first
        i = smallest_pixel(e.path[ring])
        path = np.roll(e.path[ring], -i, axis=0)
        width = np.roll(e.width_px[ring], -i)
        prob = np.roll(e.prob[ring], -i)
        self.remove_node(n)
        m = self.add_node((int(path[0, 0]), int(path[0, 1])))
        self.add_edge(WorkEdge(m, m, np.vstack([path, path[:1]]), np.append(width, width[0]), np.append(prob, prob[0])))

    def components(self) -> tuple[list[int], np.ndarray]:
        """Node ids and the connected-component label of each."""
        ids = list(self.pixel)
        index = {n: i for i, n in enumerate(ids)}
        uv = np.array([[index[e.u], index[e.v]] for e in self.edges.values()], dtype=np.int64).reshape(-1, 2)
        adj = coo_matrix((np.ones(len(uv)), (uv[:, 0], uv[:, 1])), shape=(len(ids), len(ids)))
        return ids, connected_components(adj, directed=False)[1]

    def freeze(self, simplify_px: float = 0.0) -> CenterlineGraph:
        """The canonical :class:`CenterlineGraph` (module docstring); geometries simplified by
        Douglas–Peucker with ``simplify_px`` (0: the pixel centres)."""
        order = self.sorted_nodes()
        new_id = {n: i for i, n in enumerate(order)}
        nodes = np.array([self.pixel[n] for n in order], dtype=np.int64).reshape(-1, 2)
        edges = []
        for e in self.edges.values():
            path, width, prob = e.path, e.width_px, e.prob
            if _lex_less(path[::-1], path):
                path, width, prob = path[::-1], width[::-1], prob[::-1]
            u = new_id[e.u] if tuple(path[0]) == self.pixel[e.u] else new_id[e.v]
            v = new_id[e.v] if u == new_id[e.u] else new_id[e.u]
            path = np.ascontiguousarray(path, dtype=np.int64)
            xy = _simplified(pixel_centres(path), simplify_px, closed=u == v)
            edges.append(Edge(u, v, path, np.ascontiguousarray(width), np.ascontiguousarray(prob), xy))
        edges.sort(key=lambda e: (e.u, e.v, len(e.path), e.path.tobytes()))
        return CenterlineGraph(nodes, tuple(edges))


def _simplified(xy: np.ndarray, tolerance: float, closed: bool) -> np.ndarray:
    """Douglas–Peucker (GEOS) of a polyline, end points kept; a loop keeps at least a triangle."""
    if tolerance <= 0 or len(xy) < 3:
        return xy
    out = shapely.get_coordinates(shapely.simplify(shapely.LineString(xy), tolerance, preserve_topology=closed))
    return xy if closed and len(out) < 4 else out


# ---------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------


def _prune_spurs(work: WorkGraph, min_spur_px: float) -> None:
    """Remove, in one pass, every dead-end edge shorter than ``min_spur_px`` that hangs on a
    junction (one end of degree 1, the other of degree >= 3), with its dead-end node."""
    deg = {n: work.degree(n) for n in work.pixel}
    spurs = []
    for k, e in work.edges.items():
        if e.u == e.v or e.length_px >= min_spur_px:
            continue
        if deg[e.u] == 1 and deg[e.v] >= 3:
            spurs.append((k, e.u))
        elif deg[e.v] == 1 and deg[e.u] >= 3:
            spurs.append((k, e.v))
    for k, end in spurs:
        work.remove_edge(k)
        work.remove_node(end)


def _drop_small_components(work: WorkGraph, min_component_px: float) -> None:
    """Remove connected components whose edges are shorter than ``min_component_px`` in total."""
    ids, label = work.components()
    index = {n: i for i, n in enumerate(ids)}
    total = np.zeros(len(ids))
    for e in work.edges.values():
        total[label[index[e.u]]] += e.length_px
    for n, lab in zip(ids, label):
        if total[lab] < min_component_px:
            work.remove_node(n)


def _bridge_gaps(work: WorkGraph, bridge_px: float, max_angle_deg: float) -> None:
    """Join dead ends that face each other across a gap of at most ``bridge_px``.

    A dead end's direction is the step from the pixel ``BRIDGE_LOOKBACK_PX`` back along
    its edge to the dead end; two dead ends a, b qualify when b lies within
    ``max_angle_deg`` of a's direction and a within ``max_angle_deg`` of b's. Pairs are
    taken greedily, shortest gap first (ties by pixel), each dead end at most once; the
    bridge is the straight pixel line between them (``skimage.draw.line``), its widths
    and probabilities unknown (NaN).
    """
    ends = sorted((n for n in work.pixel if work.degree(n) == 1), key=work.pixel.__getitem__)
    if len(ends) < 2:
        return
    pos = np.array([work.pixel[n] for n in ends], dtype=np.float64)
    direction = np.zeros_like(pos)
    edge_of = {}
    for i, n in enumerate(ends):
        (k,) = work.incident[n]
        edge_of[n] = k
        e = work.edges[k].oriented(work.edges[k].v if work.edges[k].u == n else work.edges[k].u)
        back = e.path[max(0, len(e.path) - 1 - BRIDGE_LOOKBACK_PX)]
        step = pos[i] - back
        direction[i] = step / max(float(np.hypot(*step)), 1e-12)
    cos_max = math.cos(math.radians(max_angle_deg))
    candidates = []
    for i, j in sorted(cKDTree(pos).query_pairs(bridge_px)):
        if edge_of[ends[i]] == edge_of[ends[j]]:
            continue
        gap = pos[j] - pos[i]
        dist = float(np.hypot(*gap))
        if dist == 0 or gap @ direction[i] < cos_max * dist or -gap @ direction[j] < cos_max * dist:
            continue
        candidates.append((dist, work.pixel[ends[i]], work.pixel[ends[j]], ends[i], ends[j]))
    used: set[int] = set()
    for _, _, _, a, b in sorted(candidates):
        if a in used or b in used:
            continue
        used.update((a, b))
        (r0, c0), (r1, c1) = work.pixel[a], work.pixel[b]
        rr, cc = draw_line(r0, c0, r1, c1)
        nan = np.full(len(rr), np.nan, dtype=np.float32)
        work.add_edge(WorkEdge(a, b, np.column_stack([rr, cc]).astype(np.int64), nan, nan.copy()))


def clean_graph(
    graph: CenterlineGraph,
    *,
    min_spur_px: float = 0.0,
    min_component_px: float = 0.0,
    bridge_px: float = 0.0,
    bridge_angle_deg: float = 30.0,
    simplify_px: float = 0.0,
) -> CenterlineGraph:
    """Clean a joined centerline graph; every length is in pixels (the caller converts metres).

    Steps, in this order (each one skipped at its default):

    1. **Spurs**: dead-end edges shorter than ``min_spur_px`` that hang on a junction are
       removed in a *single pass* over the graph as it is (all at once), then the nodes left
       with degree 2 are merged. Repeating until stable would shorten every real dead-end
       road by one spur length per round, so it is not done.
    2. **Gaps** (off by default): dead ends facing each other within ``bridge_px`` (and
       ``bridge_angle_deg``) are joined by a straight edge (:func:`_bridge_gaps`).
    3. **Small components**: connected components shorter than ``min_component_px`` in
       total are removed (isolated pixels count 0).
    4. Nodes left with degree 2 are merged again; loops rerooted (canonical form).
    5. **Simplification**: each edge's geometry by Douglas–Peucker (``shapely.simplify``)
       with tolerance ``simplify_px``; the pixel paths are kept as they are.

    Every step needs whole edges (lengths, dead ends), which is why it runs on the joined
    graph and never per window. Cost: linear in the edges' pixels, plus a k-d tree over
    dead ends when bridging.
    """
    for name, value in (
        ("min_spur_px", min_spur_px),
        ("min_component_px", min_component_px),
        ("bridge_px", bridge_px),
        ("simplify_px", simplify_px),
    ):
        if not value >= 0:
            raise ConfigError(f"centerline cleaning: {name} must be >= 0 px, got {value}; 0 turns the step off")
    if not 0 <= bridge_angle_deg <= 90:
        raise ConfigError(f"centerline cleaning: bridge_angle_deg must be in [0, 90], got {bridge_angle_deg}")
    work = WorkGraph.of(graph)
    if min_spur_px > 0:
        _prune_spurs(work, min_spur_px)
        work.merge_degree_two()
    if bridge_px > 0:
        _bridge_gaps(work, bridge_px, bridge_angle_deg)
    if min_component_px > 0:
        _drop_small_components(work, min_component_px)
    work.merge_degree_two()
    return work.freeze(simplify_px)


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


def to_networkx(graph: CenterlineGraph, transform: Affine | None = None) -> nx.MultiGraph:
    """The graph as an undirected networkx ``MultiGraph`` with osmnx-style attributes.

    Nodes are keyed by id with ``x``, ``y``, ``pos = (x, y)`` (pixel centres, or the CRS
    coordinates of ``transform``), ``row``, ``col``; edges ``(u, v, key)`` carry ``length``
    (of ``geometry``, in pixels or CRS units), ``geometry`` (a LineString), ``width`` (the
    median width in the same unit; the pixel size is ``sqrt(|det transform|)``),
    ``width_px``, ``prob`` (mean probability) and ``pixels`` (pixel count of the path).
    Give the transform of a metric CRS for lengths in metres (APLS).
    """
    scale = 1.0 if transform is None else math.sqrt(abs(transform.determinant))
    g = nx.MultiGraph()
    for i, (r, c) in enumerate(graph.nodes.tolist()):
        (x, y) = _apply(transform, np.array([[c + 0.5, r + 0.5]]))[0].tolist()
        g.add_node(i, x=x, y=y, pos=(x, y), row=r, col=c)
    for e, line in zip(graph.edges, graph.lines(transform)):
        g.add_edge(
            e.u,
            e.v,
            length=float(line.length),
            geometry=line,
            width=e.median_width_px * scale,
            width_px=e.median_width_px,
            prob=e.mean_prob,
            pixels=len(e.path),
        )
    return g
