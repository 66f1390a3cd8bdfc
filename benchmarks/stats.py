"""Small statistics shared by the bench's processes (no Django here)."""

from __future__ import annotations

import bisect
import math


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def most_in_window(sorted_times: list[float], window: float = 1.0) -> int:
    """The most timestamps that fall in any half-open interval [t, t + window).

    Sliding, not fixed one-second buckets: a burst that straddles a bucket edge
    still counts in full.
    """
    best = 0
    for index, start in enumerate(sorted_times):
        best = max(best, bisect.bisect_left(sorted_times, start + window, lo=index) - index)
    return best
