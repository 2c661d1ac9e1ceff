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

__all__ = ["Confusion", "ratio"]


def ratio(num: float, den: float, nothing_present: bool) -> float:
    """``num / den``; ``NaN`` when ``nothing_present``, else ``0`` for a zero denominator."""
    if nothing_present:
        return math.nan
    return float(num) / float(den) if den > 0 else 0.0


class Confusion:
    """Precision, recall and F1 of true/false positives and false negatives, by :func:`ratio`.

    A base of the dataclasses that count objects (:class:`~geounet.evaluate.objects.MatchResult`)
    and pixels (:class:`~geounet.evaluate.pixels.PixelCounts`); they declare the three counts.
    """

    tp: int
    fp: int
    fn: int

    @property
    def _empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0 when nothing was predicted but truth exists; NaN when both are empty."""
        return ratio(self.tp, self.tp + self.fp, self._empty)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0 when there is no truth but predictions exist; NaN when both are empty."""
        return ratio(self.tp, self.tp + self.fn, self._empty)

    @property
    def f1(self) -> float:
        """2·TP / (2·TP + FP + FN): the harmonic mean of precision and recall (pixel F1 = Dice)."""
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self._empty)
