"""The one rule for every ratio of the evaluation (precision, recall, F1, IoU, Dice,
completeness, correctness).

When *nothing* is present on either side (no true and no predicted objects, pixels or road
length) the ratio is undefined and reported as ``NaN`` (``null`` in JSON, ``-`` in tables).
Otherwise a ratio whose denominator is zero is ``0``, as in SpaceNet's reference scorer
(e.g. no predictions but some truth: precision 0, recall 0, F1 0). Results of several scenes
are combined by summing their counts and computing the ratios once (micro-averaging, as
SpaceNet does), so empty scenes add nothing and cannot pull an average up or down.
"""

from __future__ import annotations

import math

__all__ = ["ratio"]


def ratio(num: float, den: float, nothing_present: bool) -> float:
    """``num / den``; ``NaN`` when ``nothing_present``, else ``0`` for a zero denominator."""
    if nothing_present:
        return math.nan
    return float(num) / float(den) if den > 0 else 0.0
