"""How sure an accuracy is: the Wilson score interval.

For pass/fail scores it is the usual Wilson interval of k passes in n cases (Wilson 1927; it keeps inside [0, 1]
and stays sound for small n and for accuracies near 0 or 1, where the normal approximation fails). Fractional scores
(a scorer's or judge's number in [0, 1]) use the same formula with k = the sum of the scores: a score in [0, 1]
with mean p has a variance of at most p(1 - p), the variance of a pass/fail score, so the interval is at least as
wide as it needs to be (conservative).
"""

from __future__ import annotations

import math
from statistics import NormalDist

CONFIDENCE = 0.95


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval (low, high) of `successes` in `n` trials; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    middle = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, middle - half), min(1.0, middle + half)
