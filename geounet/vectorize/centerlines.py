"""Road masks -> centerline graphs, window by window, joined exactly across the windows' seams.

The road mask of a scene is read back window by window; each window is a block *core*
plus a halo of ``g`` pixels (clipped at the scene's edges). :func:`trace_window` turns one
window into the pieces of the graph that lie in its core (a :class:`WindowPieces`, small
and picklable); :func:`join_windows` joins the pieces of every window into one
:class:`~geounet.vectorize.graph.CenterlineGraph`; :func:`~geounet.vectorize.graph.clean_graph`
cleans it. :func:`centerline_graph` does all three for one whole mask.

**Before the join** (local, per window, over the whole window):

1. holes of the mask are filled when they are small (:func:`~geounet.vectorize.skeleton.fill_small_holes`): area
   ``<= max_hole_area_px`` *and* bounding box ``<= max_hole_extent_px`` on both sides,
   and not touching the window's border (a hole cut by the border has an unknown size);
   holes are 4-connected background components, the dual of the 8-connected skeleton;
2. the filled mask is thinned to one-pixel-wide, 8-connected lines by Guo & Hall's rule
   (1989), as ``skimage.morphology.thin`` does it, on an active set (:func:`~geounet.vectorize.skeleton.thin`; see there
   for why not ``skeletonize``'s Zhang & Suen rule);
3. the width at each skeleton pixel is ``2·edt - 1`` px, where ``edt`` is the Euclidean
   distance from the pixel's centre to the centre of the nearest background pixel of the
   filled mask (as ``scipy.ndimage.distance_transform_edt`` measures it,
   :func:`~geounet.vectorize.skeleton.edt_at`): that centre lies half a pixel
   beyond the road's edge on each side, so a straight road ``k`` pixels across with its
   skeleton on the middle line measures exactly ``k`` (NaN when the window has no
   background at all);
4. skeleton pixels are classified by their count of 8-neighbours on the skeleton: *node
   pixels* have a count other than 2 (1: an end, >= 3: a junction pixel, 0: an isolated
   pixel); an *edge path* is a maximal 8-connected run of count-2 pixels with the node
   pixels at its ends, and two adjacent node pixels are joined by a 2-pixel path;
5. only what lies in the core is kept: its node pixels, and the edge paths clipped to it.
   Where a path leaves the core, the pair of pixels on either side of the core's border
   (inside, outside; global coordinates) is recorded as a *seam crossing*; the
   neighbouring window records the same pair reversed.

**At the join** (client, whole graph): pieces are chained through matching crossings;
junction pixels that touch (8-neighbours) are contracted to one node, at the cluster's
pixel nearest its centroid (ties: the smallest ``(row, col)``), and edges that reached the
cluster at another of its pixels get that node's pixel appended; a loop without node gets
one at its smallest pixel; degree-2 nodes are merged; node ids and edge order follow the
canonical form of :mod:`geounet.vectorize.graph`. **After the join**: everything based on
lengths (spurs, small components, gaps, simplification), which needs whole edges.

**Exactness.** The joined graph of the windows equals the graph of the whole mask traced
as one window (same nodes, degrees, pixel paths, widths, probabilities), and so do their
cleaned graphs, when the halo ``g`` covers the reach of every local step:
``g >= 2·K + e + 2``, where ``K`` is the number of thinning iterations (of the whole mask and
of every window), ``e`` the largest
fillable hole extent (``max_hole_extent_px``). Why: the thinning is a parallel local rule;
each of its two sub-iterations per iteration sets every pixel from the 3×3 neighbourhood of
the previous state, so after ``K`` iterations a pixel depends only on the pixels within
``2·K`` of it, and the window's border (background for the thinning) reaches no further.
Thinning stops when nothing changes, after about half the thickest object's width ``w``
(twice the largest ``edt``, junction blobs included): ``K <= w / 2 + 5`` on random road
masks. Classifying a core pixel and the pixel beyond a crossing needs one pixel more; the
hole fill must see whole every hole that comes within that distance, ``e`` more, and that
hole must not touch the window's border, one more. The nearest background pixel of a road
pixel is within ``w / 2``, so widths agree too. :func:`exact_halo_px` gives
``ceil(w) + e + 12``. Windows at the scene's edges are clipped as the whole mask is, so
both see the same border. ``tests/test_centerlines.py`` checks the equality on random road
masks and block grids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geounet.errors import ConfigError
from geounet.vectorize.graph import CenterlineGraph, WorkEdge, WorkGraph, clean_graph, smallest_pixel
from geounet.vectorize.skeleton import edt_at, fill_small_holes, thin

__all__ = [
    "WindowPieces",
    "centerline_graph",
    "exact_halo_px",
    "join_windows",
    "trace_window",
]

# The 8 neighbour offsets (row, col), in raster order.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_NO_SEAM = (-1, -1, -1, -1)


def exact_halo_px(max_width_px: float, max_hole_extent_px: int = 0) -> int:
    """The halo (pixels) that makes window-by-window tracing exact, ``ceil(w) + e + 12``, for
    roads (junction blobs included) at most ``w = max_width_px`` wide and fillable holes at
    most ``e = max_hole_extent_px`` across (module docstring, "Exactness")."""
    return math.ceil(max_width_px) + max(int(max_hole_extent_px), 0) + 12


@dataclass(frozen=True, eq=False)
class WindowPieces:
    """The centerline pieces that lie in one window's core, in global pixel coordinates.

    Compact for pickling: a few flat arrays, no Python object per pixel.

    Attributes:
        node_rc: ``(k, 2)`` int32 node pixels ``(row, col)`` in the core.
        node_degree: ``(k,)`` int8 count of each node pixel's 8-neighbours on the skeleton.
        node_width_px, node_prob: ``(k,)`` float32 width (px) and probability at each node.
        path_rc: ``(P, 2)`` int32 every piece's pixels, concatenated.
        path_width_px, path_prob: ``(P,)`` float32 width (px) and probability per pixel.
        offsets: ``(n + 1,)`` int64: piece ``i`` is ``path_rc[offsets[i]:offsets[i + 1]]``.
        seams: ``(n, 2, 4)`` int32: per end of each piece (first pixel, last pixel), the seam
            crossing ``(inside row, inside col, outside row, outside col)`` through which its
            path leaves the core there; ``-1`` when that end is a node pixel.
        closed: ``(n,)`` bool: the piece is a loop of count-2 pixels inside the core (its
            last pixel touches its first; both of its ``seams`` rows are ``-1``).
    """

    node_rc: np.ndarray
    node_degree: np.ndarray
    node_width_px: np.ndarray
    node_prob: np.ndarray
    path_rc: np.ndarray
    path_width_px: np.ndarray
    path_prob: np.ndarray
    offsets: np.ndarray
    seams: np.ndarray
    closed: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _coerce_core(core: tuple[slice, slice], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(row slice, col slice)`` -> ``(r0, c0, r1, c1)``, checked to be a non-empty part of the window."""
    try:
        rows, cols = core
        r0, r1, step_r = rows.indices(shape[0])
        c0, c1, step_c = cols.indices(shape[1])
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"core must be (row slice, col slice) within the window, got {core!r}") from None
    if step_r != 1 or step_c != 1 or not (r0 < r1 and c0 < c1):
        raise ValueError(
            f"core {core!r} is empty or strided in a window of {shape[0]}×{shape[1]} px; "
            "give the core as (slice(r0, r1), slice(c0, c1)) with r0 < r1 and c0 < c1"
        )
    return r0, c0, r1, c1


def _probabilities(prob: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Probabilities as float32 0..1 (uint8 0..255 is divided by 255), or ``None``."""
    if prob is None:
        return None
    p = np.asarray(prob)
    if p.shape != shape:
        raise ValueError(f"probability window has shape {p.shape}, the mask {shape}; read both from the same window")
    return (p / 255.0).astype(np.float32) if p.dtype == np.uint8 else p.astype(np.float32)


class _Tracer:
    """The skeleton of one window as pixel tables, and the walks along its edge paths."""

    def __init__(self, skel: np.ndarray, core: tuple[int, int, int, int]) -> None:
        self.rows, self.cols = np.nonzero(skel)  # raster order = lexicographic order
        n = len(self.rows)
        index = np.full((skel.shape[0] + 2, skel.shape[1] + 2), -1, dtype=np.int64)
        index[self.rows + 1, self.cols + 1] = np.arange(n)
        self.neighbours = np.stack([index[self.rows + 1 + dr, self.cols + 1 + dc] for dr, dc in _OFFSETS], axis=1)
        self.degree = (self.neighbours >= 0).sum(axis=1)
        r0, c0, r1, c1 = core
        self.in_core = (self.rows >= r0) & (self.rows < r1) & (self.cols >= c0) & (self.cols < c1)
        # The two neighbours of every count-2 pixel (-1 elsewhere), as lists for fast walking.
        two = np.sort(np.where(self.neighbours >= 0, self.neighbours, np.iinfo(np.int64).max), axis=1)[:, :2]
        two[self.degree != 2] = -1
        self.next_a: list[int] = two[:, 0].tolist()
        self.next_b: list[int] = two[:, 1].tolist()
        self.is_node: list[bool] = (self.degree != 2).tolist()
        self.core_list: list[bool] = self.in_core.tolist()
        self.visited = np.zeros(n, dtype=bool)

    def walk(self, prev: int, cur: int) -> tuple[list[int], int]:
        """Pixels from ``cur`` on, coming from ``prev``, up to and including the next node
        pixel in the core (returns -1), or up to the last core pixel before the path leaves
        the core (returns the first pixel outside)."""
        path: list[int] = []
        a, b, is_node, in_core, visited = self.next_a, self.next_b, self.is_node, self.core_list, self.visited
        while True:
            if not in_core[cur]:
                return path, cur
            path.append(cur)
            if is_node[cur]:
                return path, -1
            visited[cur] = True
            prev, cur = cur, (a[cur] if a[cur] != prev else b[cur])

    def walk_loop(self, start: int) -> list[int]:
        """The pixels of a loop of count-2 pixels, from ``start`` (its smallest pixel)."""
        path = [start]
        self.visited[start] = True
        prev, cur = start, self.next_a[start]
        while cur != start:
            path.append(cur)
            self.visited[cur] = True
            prev, cur = cur, (self.next_a[cur] if self.next_a[cur] != prev else self.next_b[cur])
        return path

    def pieces(self) -> list[tuple[list[int], int, int, bool]]:
        """Every piece as ``(pixels, outside pixel at the start, at the end, closed)``; -1: a node end."""
        out: list[tuple[list[int], int, int, bool]] = []
        nodes = np.flatnonzero(self.in_core & (self.degree != 2))
        for s in nodes.tolist():
            for m in self.neighbours[s][self.neighbours[s] >= 0].tolist():
                if not self.core_list[m]:
                    out.append(([s], -1, m, False))
                elif self.is_node[m]:
                    if s < m:
                        out.append(([s, m], -1, -1, False))
                elif not self.visited[m]:
                    path, outside = self.walk(s, m)
                    out.append(([s, *path], -1, outside, False))
        # Paths that enter the core through its border at a count-2 pixel.
        border = np.flatnonzero(self.in_core & (self.degree == 2))
        for q in border.tolist():
            for o in (self.next_a[q], self.next_b[q]):
                if not self.core_list[o] and not self.visited[q]:
                    path, outside = self.walk(o, q)
                    out.append((path, o, outside, False))
        # What is left are loops of count-2 pixels inside the core.
        for q in np.flatnonzero(self.in_core & (self.degree == 2) & ~self.visited).tolist():
            if not self.visited[q]:
                out.append((self.walk_loop(q), -1, -1, True))
        return out


def trace_window(
    mask: np.ndarray,
    core: tuple[slice, slice],
    origin: tuple[int, int] = (0, 0),
    prob: np.ndarray | None = None,
    *,
    max_hole_area_px: int = 0,
    max_hole_extent_px: int = 0,
) -> WindowPieces:
    """The centerline pieces of one window's core (steps 1-5 of the module docstring).

    Args:
        mask: ``(H, W)`` road mask of the window (core plus halo), anything ``astype(bool)`` reads.
        core: the core as ``(row slice, col slice)`` of the window (e.g. a rasterio
            ``Window.toslices()`` relative to the window). A core side that is also the
            window's side must be the scene's edge: the pixels beyond it are taken not to exist.
        origin: global ``(row, col)`` of the window's first pixel on the scene grid.
        prob: optional ``(H, W)`` road probabilities: float 0..1, or uint8 0..255.
        max_hole_area_px, max_hole_extent_px: holes filled before thinning
            (:func:`~geounet.vectorize.skeleton.fill_small_holes`).

    Returns:
        A :class:`WindowPieces`. Exact with respect to the whole mask when the halo is at
        least :func:`exact_halo_px` (module docstring).

    Cost: the thinning's passes over the window, one distance transform, one labelling
    (hole fill), and a Python step per skeleton pixel of the core.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"road mask window must be 2-D, got shape {m.shape}")
    r0, c0, r1, c1 = _coerce_core(core, (m.shape[0], m.shape[1]))
    p = _probabilities(prob, m.shape)
    filled = fill_small_holes(m, max_hole_area_px, max_hole_extent_px)
    skel = thin(filled)
    tracer = _Tracer(skel, (r0, c0, r1, c1))
    rows, cols = tracer.rows, tracer.cols
    if filled.all():
        width = np.full(len(rows), np.nan, dtype=np.float32)
    else:
        width = (2.0 * edt_at(filled, rows, cols) - 1.0).astype(np.float32)
    probability = p[rows, cols] if p is not None else np.full(len(rows), np.nan, dtype=np.float32)
    grow, gcol = rows + int(origin[0]), cols + int(origin[1])

    pieces = tracer.pieces()
    flat = np.array([i for path, _, _, _ in pieces for i in path], dtype=np.int64)
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(path) for path, _, _, _ in pieces])
    seams = np.full((len(pieces), 2, 4), -1, dtype=np.int32)
    for i, (path, before, after, _) in enumerate(pieces):
        for end, (inside, outside) in enumerate(((path[0], before), (path[-1], after))):
            if outside >= 0:
                seams[i, end] = (grow[inside], gcol[inside], grow[outside], gcol[outside])
    nodes = np.flatnonzero(tracer.in_core & (tracer.degree != 2))
    return WindowPieces(
        node_rc=np.column_stack([grow[nodes], gcol[nodes]]).astype(np.int32).reshape(-1, 2),
        node_degree=tracer.degree[nodes].astype(np.int8),
        node_width_px=width[nodes],
        node_prob=probability[nodes],
        path_rc=np.column_stack([grow[flat], gcol[flat]]).astype(np.int32).reshape(-1, 2),
        path_width_px=width[flat],
        path_prob=probability[flat],
        offsets=offsets,
        seams=seams,
        closed=np.array([closed for _, _, _, closed in pieces], dtype=bool),
    )


# ---------------------------------------------------------------------------------------
# The join
# ---------------------------------------------------------------------------------------


@dataclass
class _Piece:
    path: np.ndarray
    width: np.ndarray
    prob: np.ndarray
    ends: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]
    closed: bool

    def reversed(self) -> _Piece:
        return _Piece(self.path[::-1], self.width[::-1], self.prob[::-1], (self.ends[1], self.ends[0]), self.closed)


def _unpack(windows: Sequence[WindowPieces]) -> tuple[list[_Piece], dict[tuple[int, int], tuple[int, float, float]]]:
    """All pieces, and every node pixel's (pixel degree, width, probability)."""
    pieces: list[_Piece] = []
    nodes: dict[tuple[int, int], tuple[int, float, float]] = {}
    for w in windows:
        for (r, c), d, wd, pr in zip(w.node_rc.tolist(), w.node_degree.tolist(), w.node_width_px, w.node_prob):
            if (r, c) in nodes:
                raise ValueError(f"node pixel (row {r}, col {c}) is in two windows' cores; the cores must not overlap")
            nodes[(r, c)] = (d, float(wd), float(pr))
        path = w.path_rc.astype(np.int64)
        seams = w.seams.tolist()
        for i in range(len(w)):
            a, b = int(w.offsets[i]), int(w.offsets[i + 1])
            ends = (tuple(seams[i][0]), tuple(seams[i][1]))
            pieces.append(_Piece(path[a:b], w.path_width_px[a:b], w.path_prob[a:b], ends, bool(w.closed[i])))
    return pieces, nodes


def _chains(pieces: list[_Piece]) -> list[tuple[_Piece, bool]]:
    """Pieces chained through matching seam crossings: ``(chain, is_loop)``.

    A chain either runs from node pixel to node pixel, or is a loop without a node pixel
    (its first pixel then touches its last).
    """
    at: dict[tuple[int, int, int, int], tuple[int, int]] = {}
    for i, p in enumerate(pieces):
        for end, seam in enumerate(p.ends):
            if seam != _NO_SEAM:
                at[seam] = (i, end)
    used = np.zeros(len(pieces), dtype=bool)

    def follow(i: int, start_end: int) -> tuple[_Piece, bool]:
        """Chain from piece ``i`` entered at its end ``start_end``; stops at a node end or back at ``i``."""
        first = pieces[i] if start_end == 0 else pieces[i].reversed()
        parts = [first]
        used[i] = True
        while parts[-1].ends[1] != _NO_SEAM:
            r, c, ro, co = parts[-1].ends[1]
            partner = at.get((ro, co, r, c))
            if partner is None:
                raise ValueError(
                    f"the centerline leaves a core from pixel (row {r}, col {c}) to (row {ro}, col {co}) but no "
                    "window's core continues it; give every window of the scene, each one pixel or more "
                    "beyond its core"
                )
            j, end = partner
            if j == i and end == start_end:
                break  # back at the start: a loop through seams only
            part = pieces[j] if end == 0 else pieces[j].reversed()
            used[j] = True
            parts.append(part)
        chain = _Piece(
            np.concatenate([q.path for q in parts]),
            np.concatenate([q.width for q in parts]),
            np.concatenate([q.prob for q in parts]),
            (parts[0].ends[0], parts[-1].ends[1]),
            False,
        )
        return chain, chain.ends[1] != _NO_SEAM

    out: list[tuple[_Piece, bool]] = []
    for i, p in enumerate(pieces):
        if used[i] or p.closed:
            continue
        if p.ends[0] == _NO_SEAM:
            out.append(follow(i, 0))
        elif p.ends[1] == _NO_SEAM:
            out.append(follow(i, 1))
    for i, p in enumerate(pieces):
        if not used[i]:
            used[i] = True
            out.append((p, True) if p.closed else follow(i, 0))
    return out


def _drop_corner_triangles(work: WorkGraph) -> None:
    """Drop the paths that only cut the corner of three mutually touching skeleton pixels.

    Thinning leaves such triangles where lines meet: a loop of three pixels, or a 3-pixel
    path between two touching junction pixels. They enclose no background, so they are
    not roads; without this every one of them would become a loop or a parallel edge.
    """
    for k, e in list(work.edges.items()):
        loop = e.u == e.v and len(e.path) <= 4
        corner = len(e.path) == 3 and np.abs(e.path[0] - e.path[2]).max() == 1
        if loop or corner:
            work.remove_edge(k)


def _contract_junctions(work: WorkGraph, values: dict[tuple[int, int], tuple[int, float, float]]) -> None:
    """Contract every cluster of touching junction pixels (pixel degree >= 3) into one node."""
    junction = {px for px, (d, _, _) in values.items() if d >= 3}
    links = [
        (k, e)
        for k, e in work.edges.items()
        if len(e.path) == 2 and work.pixel[e.u] in junction and work.pixel[e.v] in junction
    ]
    if not links:
        return
    ids = sorted(work.pixel)
    index = {n: i for i, n in enumerate(ids)}
    uv = np.array([[index[e.u], index[e.v]] for _, e in links], dtype=np.int64)
    adj = coo_matrix((np.ones(len(uv)), (uv[:, 0], uv[:, 1])), shape=(len(ids), len(ids)))
    _, label = connected_components(adj, directed=False)
    members: dict[int, list[int]] = {}
    for k, _ in links:
        work.remove_edge(k)
    for _, e in links:
        for n in (e.u, e.v):
            members.setdefault(int(label[index[n]]), [])
            if n not in members[int(label[index[n]])]:
                members[int(label[index[n]])].append(n)
    for group in members.values():
        px = np.array([work.pixel[n] for n in group], dtype=np.float64)
        centre = px.mean(axis=0)
        d2 = ((px - centre) ** 2).sum(axis=1)
        best = int(np.lexsort((px[:, 1], px[:, 0], d2))[0])
        keep = group[best]
        kpix = work.pixel[keep]
        _, kw, kp = values[kpix]
        for n in group:
            if n == keep:
                continue
            for k in list(work.incident[n]):
                e = work.edges[k]
                work.remove_edge(k)
                path, width, prob = e.path, e.width_px, e.prob
                if e.u == n:
                    path = np.vstack([[kpix], path])
                    width, prob = np.append(np.float32(kw), width), np.append(np.float32(kp), prob)
                if e.v == n:
                    path = np.vstack([path, [kpix]])
                    width, prob = np.append(width, np.float32(kw)), np.append(prob, np.float32(kp))
                u = keep if e.u == n else e.u
                v = keep if e.v == n else e.v
                work.add_edge(WorkEdge(u, v, path, width.astype(np.float32), prob.astype(np.float32)))
            del work.pixel[n], work.incident[n]


def join_windows(windows: Sequence[WindowPieces]) -> CenterlineGraph:
    """Join the pieces of every window of a scene into one canonical centerline graph.

    Pieces are chained through their seam crossings (each crossing must be matched by the
    reversed crossing of the window on the other side), junction clusters contracted,
    degree-2 nodes merged, loops without a node given one (module docstring). The result
    is identical for any tiling of the same mask into windows that satisfy the exactness
    condition, including one window for the whole mask.

    Cost: linear in the pieces' pixels; one dictionary entry per seam crossing.
    """
    pieces, values = _unpack(windows)
    work = WorkGraph()
    node_of = {px: work.add_node(px) for px in sorted(values)}
    for chain, is_loop in _chains(pieces):
        if is_loop:
            i = smallest_pixel(chain.path)
            path = np.roll(chain.path, -i, axis=0)
            width, prob = np.roll(chain.width, -i), np.roll(chain.prob, -i)
            n = work.add_node((int(path[0, 0]), int(path[0, 1])))
            work.add_edge(
                WorkEdge(n, n, np.vstack([path, path[:1]]), np.append(width, width[0]), np.append(prob, prob[0]))
            )
            continue
        a = (int(chain.path[0, 0]), int(chain.path[0, 1]))
        b = (int(chain.path[-1, 0]), int(chain.path[-1, 1]))
        work.add_edge(WorkEdge(node_of[a], node_of[b], chain.path, chain.width, chain.prob))
    _drop_corner_triangles(work)
    _contract_junctions(work, values)
    work.merge_degree_two()
    return work.freeze()


def centerline_graph(
    mask: np.ndarray,
    prob: np.ndarray | None = None,
    *,
    origin: tuple[int, int] = (0, 0),
    max_hole_area_px: int = 0,
    max_hole_extent_px: int = 0,
    min_spur_px: float = 0.0,
    min_component_px: float = 0.0,
    bridge_px: float = 0.0,
    simplify_px: float = 0.0,
) -> CenterlineGraph:
    """The cleaned centerline graph of a whole mask, traced as one window (no seams).

    The reference that window-by-window tracing reproduces; also the way to thin truth
    road polygons for evaluation. Lengths in pixels, as :func:`trace_window` and
    :func:`~geounet.vectorize.graph.clean_graph`. Cost: theirs, over the whole mask.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ConfigError(f"a road mask must be a non-empty 2-D array, got shape {m.shape}")
    pieces = trace_window(
        m,
        (slice(0, m.shape[0]), slice(0, m.shape[1])),
        origin,
        prob,
        max_hole_area_px=max_hole_area_px,
        max_hole_extent_px=max_hole_extent_px,
    )
    return clean_graph(
        join_windows([pieces]),
        min_spur_px=min_spur_px,
        min_component_px=min_component_px,
        bridge_px=bridge_px,
        simplify_px=simplify_px,
    )
