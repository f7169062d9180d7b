"""A paired bootstrap confidence interval for the difference between two prompts' mean scores.

Two runs scored the same samples (matched by sample id beforehand, see `gpo.run_comparison`):
`baseline[i]` and `other[i]` are the scores of sample i, so `d[i] = other[i] - baseline[i]` is
the per-sample difference and the observed difference of means is `mean(d)`. Pairing removes
the variation between samples (an easy sample is easy for both prompts), which narrows the
interval compared with treating the two runs as independent.

The interval (the percentile bootstrap, Efron & Tibshirani 1993, ch. 13):
1. draw B resamples of the n sample indices, each n indices uniformly with replacement;
2. for resample b, the mean difference over its indices, m_b = mean(d[idx_b]);
3. the interval is the (1 - c)/2 and (1 + c)/2 quantiles of m_1..m_B (c = 0.95 by default;
   numpy's linear interpolation between order statistics).
B = 10,000 by default.

Over several tasks (`stratified_paired_bootstrap`), the difference reported is the mean over
tasks of each task's mean difference (each task weighs the same, as the paper's averages do);
each resample draws every task's samples within that task (a stratified bootstrap), and the
interval is again the percentiles of the B resampled means over tasks.

The generator is `numpy.random.default_rng(seed)` with a fixed seed, so the same scores always
give the same interval; change the seed (or B) to see how much the bounds move. Identical score
arrays give exactly [0, 0]; an interval that excludes 0 means the difference is unlikely to be
resampling noise of these samples (it says nothing about samples neither run scored).
Resamples are drawn in chunks, so memory stays bounded for large n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
_CHUNK_CELLS = 2_000_000  # indices drawn at once (16 MB of int64)


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """`other - baseline` over the shared samples: the mean and its bootstrap interval.

    Scores are fractions in [0, 1], so the fields are too (multiply by 100 for points).
    """

    mean: float
    low: float
    high: float
    n_shared: int
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a difference beyond noise)."""
        return self.low > 0.0 or self.high < 0.0

    def to_json(self) -> dict[str, float | int | bool]:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "n_shared": self.n_shared,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "excludes_zero": self.excludes_zero,
        }


def paired_bootstrap(
    baseline: ArrayLike,
    other: ArrayLike,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> PairedDifference:
    """The mean of `other - baseline` and its percentile bootstrap interval (module docstring).

    The arrays are aligned: element i of each is the same sample. Raises ValueError when they
    differ in length, are empty, hold NaN, or when `resamples` < 1 or `confidence` is not in
    (0, 1).
    """
    first = np.asarray(baseline, dtype=float)
    second = np.asarray(other, dtype=float)
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(
            f"score arrays must be aligned 1-D arrays, got {first.shape} and {second.shape}"
        )
    if first.size == 0:
        raise ValueError("no shared samples: there is no difference to estimate")
    if np.isnan(first).any() or np.isnan(second).any():
        raise ValueError("scores hold NaN: leave failed samples out before pairing")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    differences = second - first
    means = resampled_means(differences, resamples, np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedDifference(
        mean=float(differences.mean()),
        low=float(low),
        high=float(high),
        n_shared=int(differences.size),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def stratified_paired_bootstrap(
    pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> PairedDifference:
    """The mean over groups (tasks) of each group's mean `other - baseline`, with a bootstrap
    interval that resamples within each group; `n_shared` counts samples over all groups."""
    if not pairs:
        raise ValueError("no shared samples: there is no difference to estimate")
    parts = [paired_bootstrap(a, b, resamples=1, confidence=confidence) for a, b in pairs]
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for baseline, other in pairs:
        difference = np.asarray(other, dtype=float) - np.asarray(baseline, dtype=float)
        means += resampled_means(difference, resamples, rng)
    means /= len(pairs)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedDifference(
        mean=float(np.mean([part.mean for part in parts])),
        low=float(low),
        high=float(high),
        n_shared=sum(part.n_shared for part in parts),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` means of `values`, each over n indices drawn with replacement."""
    n = values.size
    if np.all(values == values[0]):
        return np.full(resamples, float(values[0]))  # every resample has the same mean
    chunk = max(1, _CHUNK_CELLS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        indices = rng.integers(0, n, size=(count, n))
        means[start : start + count] = values[indices].mean(axis=1)
    return means
