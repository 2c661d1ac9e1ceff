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

__all__ = ["MatchResult", "building_f1"]

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
    """

    tp: int
    fp: int
    fn: int
    iou_sum: float = 0.0
    iou_threshold: float = 0.5
    matches: tuple[tuple[int, int, float], ...] = ()

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
    )
