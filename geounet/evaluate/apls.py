"""APLS, the Average Path Length Similarity of SpaceNet 3 (Van Etten et al. 2018), on two road
graphs in metres (networkx graphs whose edges carry a LineString ``geometry``; see
:func:`geounet.evaluate.roads.line_network` and :func:`~geounet.evaluate.roads.surface_network`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import shapely
from scipy import sparse
from scipy.sparse.csgraph import dijkstra

from geounet.errors import ConfigError

__all__ = ["APLSResult", "Net", "apls"]

# A path difference below this share of the path is float rounding (projecting a point
# back onto the line it was interpolated on), not a difference between the networks.
ROUNDING = 1e-9


# ---------------------------------------------------------------------------------------
# APLS
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class APLSResult:
    """APLS of a proposal against the truth (:func:`apls`).

    Attributes:
        apls: harmonic mean of the two directions; 0 when either is 0 or has no path to
            score; NaN when neither direction has a path (nothing to score).
        truth_to_proposal: 1 - mean path difference of truth paths found in the proposal
            (punishes missing roads and cuts); NaN without truth paths.
        proposal_to_truth: the same with the roles swapped (spurious roads, false shortcuts).
        pairs_truth, pairs_proposal: control-point pairs scored in each direction.
    """

    apls: float
    truth_to_proposal: float
    proposal_to_truth: float
    pairs_truth: int
    pairs_proposal: int


@dataclass(frozen=True)
class Net:
    """A graph's geometry: node points, and per edge its ends, LineString and length."""

    xy: np.ndarray  # (N, 2)
    u: np.ndarray  # (E,)
    v: np.ndarray  # (E,)
    lines: np.ndarray  # (E,) LineStrings from u to v
    length: np.ndarray  # (E,)

    @classmethod
    def of(cls, g: nx.Graph) -> Net:
        """Nodes need ``x``, ``y``; an edge's ``geometry`` (else the straight line between its
        nodes) is turned to run from u to v; lengths are the geometries' (CRS units)."""
        ids = list(g.nodes)
        index = {n: i for i, n in enumerate(ids)}
        try:
            xy = np.array([[g.nodes[n]["x"], g.nodes[n]["y"]] for n in ids], dtype=np.float64).reshape(-1, 2)
        except KeyError:
            raise ConfigError("APLS needs graphs whose nodes have 'x' and 'y' (osmnx style)") from None
        uv = np.array([[index[a], index[b]] for a, b in g.edges()], dtype=np.int64).reshape(-1, 2)
        lines = np.empty(len(uv), dtype=object)
        for k, ((i, j), (_, _, line)) in enumerate(zip(uv.tolist(), g.edges(data="geometry"))):
            if line is None:
                line = shapely.LineString([xy[i], xy[j]])
            elif np.hypot(*(line.coords[0] - xy[i])) > np.hypot(*(line.coords[0] - xy[j])):
                line = line.reverse()
            lines[k] = line
        return cls(xy, uv[:, 0], uv[:, 1], lines, shapely.length(lines))


def _control_points(net: Net, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """SpaceNet's control points: every node, plus points along each edge at least
    ``0.75 · spacing`` long -- its midpoint up to ``spacing``, else evenly spaced points no
    further apart than ``spacing`` (``create_graph_midpoints`` with curvature ignored).

    Returns ``(edge, t)`` per point: edge -1 and t the node index for a node, else the
    distance along the edge.
    """
    edges, ts = [np.full(len(net.xy), -1)], [np.arange(len(net.xy), dtype=np.float64)]
    for k, length in enumerate(net.length.tolist()):
        if length < 0.75 * spacing:
            continue
        if length <= spacing:
            t = np.array([length / 2])
        else:
            t = np.linspace(0, length, len(np.arange(0, length, spacing)) + 1)[1:-1]
        edges.append(np.full(len(t), k))
        ts.append(t)
    return np.concatenate(edges), np.concatenate(ts)


def _points(net: Net, edge: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Coordinates of positions ``(edge, t)`` (edge -1: node ``t``)."""
    out = np.empty((len(edge), 2))
    node = edge < 0
    out[node] = net.xy[t[node].astype(np.int64)]
    if (~node).any():
        out[~node] = shapely.get_coordinates(shapely.line_interpolate_point(net.lines[edge[~node]], t[~node]))
    return out


def _path_lengths(net: Net, edge: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Shortest-path lengths between positions ``(edge, t)`` on ``net`` (inf: no path).

    The edges are split at the positions (exact lengths along them, no geometry), the
    result is a sparse graph of nodes and positions, one Dijkstra per position.
    """
    n = len(net.xy)
    vertex = np.where(edge < 0, t, -1).astype(np.int64)
    on_edge = np.flatnonzero(edge >= 0)
    vertex[on_edge] = n + np.arange(len(on_edge))
    src: list[int] = []
    dst: list[int] = []
    w: list[float] = []
    cuts: dict[int, list[tuple[float, int]]] = {}
    for i in on_edge.tolist():
        cuts.setdefault(int(edge[i]), []).append((float(t[i]), int(vertex[i])))
    for k in range(len(net.length)):
        stops = [(0.0, int(net.u[k])), *sorted(cuts.get(k, [])), (float(net.length[k]), int(net.v[k]))]
        for (t0, a), (t1, b) in zip(stops[:-1], stops[1:]):
            if a != b:
                src.append(a)
                dst.append(b)
                w.append(max(t1 - t0, 0.0))
    size = n + len(on_edge)
    # Parallel edges: the shortest counts (a sparse matrix would add them up); a zero-length
    # step stays an edge as the smallest float (scipy reads a stored 0 as "no edge").
    sa, da = np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)
    wa = np.maximum(np.array(w, dtype=np.float64), np.finfo(np.float64).tiny)
    lo, hi = np.minimum(sa, da), np.maximum(sa, da)
    order = np.lexsort((wa, hi, lo))
    keep = order[np.r_[True, (lo[order][1:] != lo[order][:-1]) | (hi[order][1:] != hi[order][:-1])]]
    graph = sparse.coo_matrix((wa[keep], (sa[keep], da[keep])), shape=(size, size)).tocsr()
    unique, inv = np.unique(vertex, return_inverse=True)
    d = dijkstra(graph, directed=False, indices=unique)[:, unique]
    return d[np.ix_(inv, inv)]


def _snap(points: np.ndarray, net: Net, snap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each point projected onto the nearest edge of ``net`` within ``snap``: ``(found, edge, t)``."""
    found = np.zeros(len(points), dtype=bool)
    edge = np.zeros(len(points), dtype=np.int64)
    t = np.zeros(len(points))
    if len(points) == 0 or len(net.lines) == 0:
        return found, edge, t
    pts = shapely.points(points)
    (pi, ei), _ = shapely.STRtree(net.lines).query_nearest(pts, max_distance=snap, return_distance=True)
    # Equidistant edges: the first one (query_nearest returns them all, sorted by point).
    first = np.ones(len(pi), dtype=bool)
    first[1:] = pi[1:] != pi[:-1]
    pi, ei = pi[first], ei[first]
    found[pi] = True
    edge[pi] = ei
    t[pi] = shapely.line_locate_point(net.lines[ei], pts[pi])
    return found, edge, t


def _direction(src: Net, dst: Net, spacing: float, snap: float, min_path: float, max_points: int) -> tuple[float, int]:
    """One half of APLS: control points of ``src``, their paths in ``src`` and, snapped onto
    ``dst``, in ``dst``; ``(1 - mean min(1, |L - L'| / L), pairs)``, NaN without pairs."""
    edge, t = _control_points(src, spacing)
    if len(edge) > max_points:
        pick = np.unique(np.linspace(0, len(edge) - 1, max_points).round().astype(np.int64))
        edge, t = edge[pick], t[pick]
    if len(edge) < 2:
        return math.nan, 0
    l_src = _path_lengths(src, edge, t)
    iu = np.triu_indices(len(edge), k=1)
    pairs = np.isfinite(l_src[iu]) & (l_src[iu] >= min_path) & (l_src[iu] > 0)
    if not pairs.any():
        return math.nan, 0
    found, d_edge, d_t = _snap(_points(src, edge, t), dst, snap)
    l_dst = np.full_like(l_src, np.inf)
    if found.any():
        fi = np.flatnonzero(found)
        l_dst[np.ix_(fi, fi)] = _path_lengths(dst, d_edge[fi], d_t[fi])
    ls, ld = l_src[iu][pairs], l_dst[iu][pairs]
    with np.errstate(invalid="ignore"):
        diff = np.where(np.isfinite(ld), np.minimum(1.0, np.abs(ls - ld) / ls), 1.0)
    diff[diff < ROUNDING] = 0.0
    return float(1.0 - diff.mean()), int(pairs.sum())


def apls(
    truth: nx.Graph,
    proposal: nx.Graph,
    *,
    spacing_m: float = 50.0,
    snap_m: float = 4.0,
    min_path_m: float = 10.0,
    max_points: int = 500,
) -> APLSResult:
    """Average Path Length Similarity (Van Etten et al. 2018, SpaceNet 3) of two road graphs,
    undirected networkx graphs in one metric CRS (nodes with ``x``, ``y``, edges with an
    optional LineString ``geometry``: osmnx graphs, or :func:`~geounet.vectorize.graph.to_networkx`
    with a transform). As SpaceNet's ``apls.py``:

    1. control points: every node, plus points along every edge at least ``0.75 ·
       spacing_m`` long, no further apart than ``spacing_m`` (:func:`_control_points`);
    2. truth → proposal: each truth control point is snapped onto the nearest proposal edge
       within ``snap_m``; for every pair of truth control points joined by a truth path of
       length ``L >= min_path_m``, with ``L'`` the proposal's shortest path between the
       snapped points, the pair costs ``min(1, |L - L'| / L)``, and 1 when a point did not
       snap or ``L'`` does not exist; the direction scores 1 - the mean cost;
    3. proposal → truth: the same with the roles swapped;
    4. APLS is the harmonic mean of the two (``scipy.stats.hmean`` in SpaceNet), 0 when
       either is 0 or has no pair.

    Departures: curvature does not decide which edges get control points (SpaceNet's
    ``is_curved_eps < 0``); short paths are skipped whether or not their start point
    snapped; beyond ``max_points`` control points an evenly spread subset is used, not a
    random one; edges are measured along their geometry. Cost: one Dijkstra per control
    point (≤ ``max_points``) on each graph, split at the points.
    """
    for name, value in (("spacing_m", spacing_m), ("snap_m", snap_m)):
        if not value > 0:
            raise ConfigError(f"APLS {name} must be > 0 m, got {value}")
    if max_points < 2:
        raise ConfigError(f"APLS max_points must be >= 2, got {max_points}")
    t_net, p_net = Net.of(truth), Net.of(proposal)
    a_tp, n_tp = _direction(t_net, p_net, spacing_m, snap_m, min_path_m, max_points)
    a_pt, n_pt = _direction(p_net, t_net, spacing_m, snap_m, min_path_m, max_points)
    if n_tp == 0 and n_pt == 0:
        total = math.nan
    elif n_tp == 0 or n_pt == 0 or a_tp <= 0 or a_pt <= 0:
        total = 0.0
    else:
        total = 2 * a_tp * a_pt / (a_tp + a_pt)
    return APLSResult(total, a_tp, a_pt, n_tp, n_pt)
