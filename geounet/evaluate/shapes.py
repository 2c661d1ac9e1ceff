"""Outline shape: how regular polygons are (vertices, corner angles, differences of directions).

Angles are in degrees, measured in the plane of the coordinates given, so pass polygons in a
metric (or at least conformal) CRS. Only exterior rings are measured. Every function takes
what :func:`geounet.evaluate.geometry.geometry_array` takes and costs one pass over the vertices.
"""

from __future__ import annotations

import numpy as np
import shapely

from geounet.evaluate.geometry import GeometryInput, geometry_array

__all__ = ["CORNER_TURN_DEG", "corner_angles", "direction_difference", "vertex_counts"]

CORNER_TURN_DEG = 1.0  # a vertex where the outline turns by less than this is not a corner


def _exterior_edges(geoms: GeometryInput) -> tuple[np.ndarray, np.ndarray, int]:
    """Edge vectors of every exterior ring, (n, 2), the polygon each belongs to, and the count of polygons."""
    arr = geometry_array(geoms, "polygons")
    rings = shapely.get_exterior_ring(arr)
    xy, owner = shapely.get_coordinates(rings, return_index=True)
    vectors = np.diff(xy, axis=0)
    same = owner[1:] == owner[:-1]  # the step from one ring's closing vertex to the next ring is no edge
    vectors, owner = vectors[same], owner[1:][same]
    keep = np.hypot(vectors[:, 0], vectors[:, 1]) > 0
    return vectors[keep], owner[keep], len(arr)


def vertex_counts(geoms: GeometryInput) -> np.ndarray:
    """Vertices of each polygon's exterior ring (the closing repeat not counted), int64."""
    arr = geometry_array(geoms, "polygons")
    counts = shapely.get_num_coordinates(shapely.get_exterior_ring(arr)) - 1
    return np.maximum(np.asarray(counts, dtype=np.int64), 0)


def corner_angles(geoms: GeometryInput) -> tuple[np.ndarray, np.ndarray]:
    """The angle between the two edges meeting at each corner of each exterior ring.

    A corner is a vertex where the outline turns by at least :data:`CORNER_TURN_DEG`;
    its angle is ``180 - turn``, in degrees in (0, 179] (90 for a right angle, whether the
    corner is convex or reflex).

    Returns:
        ``(angles, owner)``: float64 angles and the position of the polygon each belongs to.
    """
    vectors, owner, _ = _exterior_edges(geoms)
    if len(vectors) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    # the edge before each edge, within its ring (a ring's first edge follows its last)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    ends = np.r_[starts[1:], len(owner)] - 1
    before = np.arange(len(owner)) - 1
    before[starts] = ends
    a, b = vectors[before], vectors
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    dot = (a * b).sum(axis=1)
    turn = np.degrees(np.abs(np.arctan2(cross, dot)))
    corner = turn >= CORNER_TURN_DEG
    return 180.0 - turn[corner], owner[corner]


def direction_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Difference between dominant directions (degrees modulo 90, as
    :func:`geounet.vectorize.regularize.dominant_direction`), degrees in [0, 45]."""
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) % 90.0
    return np.minimum(d, 90.0 - d)
