"""Buildings as objects: one-to-one matching at IoU >= threshold (the SpaceNet F1).

:func:`building_f1` matches predicted to true footprints and returns a :class:`MatchResult`,
whose counts add up over scenes (:meth:`MatchResult.combine`) and whose ratios follow
:mod:`geounet.evaluate.ratios`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from geounet.errors import ConfigError
from geounet.evaluate.geometry import GeometryInput, check_same_crs, geometry_array, polygonal
from geounet.evaluate.ratios import Confusion

__all__ = ["MatchResult", "MergeRate", "building_f1", "merge_rate"]

_EPS_IOU = 1e-9  # tolerance on the IoU threshold: reprojection rounding must not flip a match


@dataclass(frozen=True)
class MatchResult(Confusion):
    """Outcome of matching predicted to true polygons.

    Attributes:
        tp: predictions matched one-to-one to a true polygon at IoU >= threshold.
        fp: predictions left unmatched (including degenerate, zero-area predictions).
        fn: true polygons left unmatched.
        iou_sum: sum of the IoU of the matches (``mean_iou = iou_sum / tp``); kept as a sum
            so that results of several scenes can be combined exactly.
        iou_threshold: the threshold used.
        matches: ``(prediction index, truth index, IoU)`` per match, indices being positions
            in the inputs as given. Empty for combined results.
        merged: true polygons whose best prediction also covers another true polygon
            (:func:`merge_rate`); ``merge_rate = merged / overlapped``.
        overlapped: true polygons overlapped by any prediction.
    """

    tp: int
    fp: int
    fn: int
    iou_sum: float = 0.0
    iou_threshold: float = 0.5
    matches: tuple[tuple[int, int, float], ...] = ()
    merged: int = 0
    overlapped: int = 0

    @property
    def merge_rate(self) -> float:
        """Share of the overlapped true polygons merged with a neighbour; NaN when none is overlapped."""
        return self.merged / self.overlapped if self.overlapped else math.nan

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs; NaN without matches."""
        return self.iou_sum / self.tp if self.tp else math.nan

    @classmethod
    def combine(cls, results: Iterable[MatchResult]) -> MatchResult:
        """Sum the counts of several scenes (micro-average); the match lists are dropped."""
        rs = list(results)
        thresholds = {r.iou_threshold for r in rs}
        if len(thresholds) > 1:
            raise ConfigError(
                f"cannot combine building results made with different IoU thresholds {sorted(thresholds)}"
            )
        return cls(
            tp=sum(r.tp for r in rs),
            fp=sum(r.fp for r in rs),
            fn=sum(r.fn for r in rs),
            iou_sum=float(sum(r.iou_sum for r in rs)),
            iou_threshold=thresholds.pop() if thresholds else 0.5,
            merged=sum(r.merged for r in rs),
            overlapped=sum(r.overlapped for r in rs),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: counts and ratios, NaN kept (the JSON writer turns it into ``null``)."""
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "n_pred": self.tp + self.fp,
            "n_truth": self.tp + self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_iou": self.mean_iou,
            "iou_sum": self.iou_sum,
            "iou_threshold": self.iou_threshold,
            "merged": self.merged,
            "overlapped": self.overlapped,
            "merge_rate": self.merge_rate,
        }


def building_f1(
    pred: GeometryInput,
    truth: GeometryInput,
    iou_threshold: float = 0.5,
    *,
    min_area: float = 0.0,
) -> MatchResult:
    """Match predicted to true footprints one-to-one at IoU >= ``iou_threshold`` (SpaceNet F1).

    Every candidate pair (found with an STRtree on the truth) gets its IoU = area(P ∩ T) /
    area(P ∪ T). Pairs at or above the threshold are accepted greedily in order of
    decreasing IoU (ties: lower prediction index, then lower truth index); each prediction
    and each true polygon is used at most once. Accepted pairs are true positives, the
    remaining predictions false positives and the remaining truths false negatives.
    Unlike SpaceNet's reference code, which visits predictions in file order, the global
    greedy order makes the result independent of the order of the inputs up to exact ties.

    Each input row is one object: a MultiPolygon is one footprint. Invalid geometries are
    repaired with ``shapely.make_valid`` (method ``structure``); non-areal parts are dropped.
    A prediction that has no area after repair can match nothing and counts as a false
    positive; true polygons without area, and polygons of either side smaller than
    ``min_area`` (SpaceNet used 20 px), are ignored. Null geometries are ignored.

    Empty inputs follow :mod:`geounet.evaluate.ratios`: both empty gives NaN precision/recall/F1
    (nothing to score); only truth empty gives precision 0, recall 0, F1 0 when there are
    predictions, and vice versa.

    The result also counts merges (:func:`merge_rate`): true polygons whose best-overlapping
    prediction covers another true polygon too (touching buildings predicted as one).

    Geometries must be in one CRS — a projected one for ``min_area`` to be in m². Cost: one
    intersection per candidate pair (pairs whose envelopes intersect), O(n log n) otherwise.

    Args:
        pred: predicted polygons (GeoSeries, GeoDataFrame, or sequence of shapely geometries).
        truth: true polygons, same kinds.
        iou_threshold: minimum IoU of a match, in (0, 1]. A tolerance of 1e-9 absorbs
            floating rounding (an exact 0.5 computed as 0.4999999999 still matches).
        min_area: area below which polygons are ignored, in CRS units squared.
    """
    if not (0.0 < iou_threshold <= 1.0):
        raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if min_area < 0:
        raise ConfigError(f"min_area must be >= 0, got {min_area}")
    check_same_crs(pred, truth, "building_f1")
    p_raw = geometry_array(pred, "predictions")
    t_raw = geometry_array(truth, "truth")
    p_null = shapely.is_missing(p_raw)
    t_null = shapely.is_missing(t_raw)
    p = polygonal(p_raw)
    t = polygonal(t_raw)
    p_area = shapely.area(p)
    t_area = shapely.area(t)
    # Predictions: nulls and those below min_area are ignored; zero-area ones stay (as FP).
    p_keep = ~p_null & ~((p_area < min_area) & (p_area > 0))
    t_keep = ~t_null & (t_area > 0) & (t_area >= min_area)
    p_idx = np.flatnonzero(p_keep)
    t_idx = np.flatnonzero(t_keep)
    n_pred, n_truth = len(p_idx), len(t_idx)
    if n_pred == 0 or n_truth == 0:
        return MatchResult(tp=0, fp=n_pred, fn=n_truth, iou_threshold=iou_threshold)

    merges = merge_rate(p[p_idx], t[t_idx])
    tree = shapely.STRtree(t[t_idx])
    qi, qt = tree.query(p[p_idx], predicate="intersects")
    pi, ti = p_idx[qi], t_idx[qt]
    inter = shapely.area(shapely.intersection(p[pi], t[ti]))
    union = p_area[pi] + t_area[ti] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    ok = iou >= iou_threshold - _EPS_IOU
    pi, ti, iou = pi[ok], ti[ok], iou[ok]
    order = np.lexsort((ti, pi, -iou))
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for k in order:
        a, b = int(pi[k]), int(ti[k])
        if a in used_p or b in used_t:
            continue
        used_p.add(a)
        used_t.add(b)
        matches.append((a, b, float(iou[k])))
    tp = len(matches)
    return MatchResult(
        tp=tp,
        fp=n_pred - tp,
        fn=n_truth - tp,
        iou_sum=float(sum(m[2] for m in matches)),
        iou_threshold=iou_threshold,
        matches=tuple(matches),
        merged=merges.merged,
        overlapped=merges.matched,
    )


@dataclass(frozen=True)
class MergeRate:
    """True buildings whose best prediction also covers another true building.

    Counts add up over scenes (:meth:`combine`); ``rate`` is ``merged / matched`` (NaN when no
    true building has a prediction overlapping it).
    """

    merged: int  # true buildings whose best prediction covers another true building too
    matched: int  # true buildings with any overlapping prediction

    @property
    def rate(self) -> float:
        return self.merged / self.matched if self.matched else math.nan

    @staticmethod
    def combine(results: Iterable[MergeRate]) -> MergeRate:
        rs = list(results)
        return MergeRate(sum(r.merged for r in rs), sum(r.matched for r in rs))


def merge_rate(pred: GeometryInput, truth: GeometryInput, *, cover: float = 0.5) -> MergeRate:
    """How often touching buildings come out as one polygon.

    Each true building's best prediction is the one overlapping it most (by area); the building
    counts as merged when that prediction also covers at least ``cover`` of another true
    building's area. Geometries in one CRS; repaired and filtered as in :func:`building_f1`.
    """
    if not (0.0 < cover <= 1.0):
        raise ConfigError(f"cover must be in (0, 1], got {cover}")
    check_same_crs(pred, truth, "merge_rate")
    p = polygonal(geometry_array(pred, "predictions"))
    t = polygonal(geometry_array(truth, "truth"))
    p = p[~shapely.is_missing(p)]
    t = t[~shapely.is_missing(t)]
    t = t[shapely.area(t) > 0]
    if len(p) == 0 or len(t) == 0:
        return MergeRate(0, 0)
    qi, qt = shapely.STRtree(p).query(t, predicate="intersects")
    inter = shapely.area(shapely.intersection(p[qt], t[qi]))
    ok = inter > 0
    qi, qt, inter = qi[ok], qt[ok], inter[ok]
    if len(qi) == 0:
        return MergeRate(0, 0)
    # best prediction per truth: the largest overlap (ties: lower prediction index)
    order = np.lexsort((qt, -inter, qi))
    first = np.ones(len(order), dtype=bool)
    first[1:] = qi[order][1:] != qi[order][:-1]
    best_t, best_p = qi[order][first], qt[order][first]
    # predictions covering >= cover of some truth, and which truths
    covers = inter >= cover * shapely.area(t[qi]) - 1e-12
    covered_by: dict[int, set[int]] = {}
    for a, b in zip(qt[covers], qi[covers]):
        covered_by.setdefault(int(a), set()).add(int(b))
    merged = sum(1 for ti, pi in zip(best_t, best_p) if covered_by.get(int(pi), set()) - {int(ti)})
    return MergeRate(merged=merged, matched=len(best_t))
