"""Latency percentiles in constant memory: a log-spaced histogram.

A run may make millions of calls; keeping every latency would grow without bound. Buckets grow by
5% from 0.1 ms, so any percentile is exact to within 5% whatever the number of samples.
"""

from __future__ import annotations

import math

_SMALLEST_S = 1e-4
_GROWTH = 1.05
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = 400  # 0.1 ms * 1.05**400 ~ 30 000 s


class LatencyHistogram:
    __slots__ = ("count", "counts", "total_s")

    def __init__(self) -> None:
        self.counts = [0] * (_BUCKETS + 1)
        self.count = 0
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        if seconds <= _SMALLEST_S:
            bucket = 0
        else:
            bucket = min(_BUCKETS, 1 + int(math.log(seconds / _SMALLEST_S) / _LOG_GROWTH))
        self.counts[bucket] += 1
        self.count += 1
        self.total_s += seconds

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) in seconds: the upper edge of the bucket holding it."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for bucket, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return _SMALLEST_S * _GROWTH**bucket
        return _SMALLEST_S * _GROWTH**_BUCKETS

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0
