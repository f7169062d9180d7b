"""The ETA of a run in progress: an exponentially weighted rate of work units, and short numbers.

The estimator. Work is counted in units: one scored (prompt, sample) chain, or one sequence the
optimizer model generates. The caller knows how many units remain, phase by phase (what is left of
the current evaluation, then every remaining step's candidates x dev samples and optimizer
sequences, then the test prompts x test samples): so phases are weighted by the calls they still
need, and a test phase of 2 x 250 samples weighs 500 units however fast the dev steps went.

The rate is measured on wall time, over an exponentially weighted window of time constant
`tau_s` seconds: each past moment s seconds ago weighs exp(-s / tau). At each observation, the
units done since the previous one (du, taken as spread evenly over the interval) and the seconds
elapsed (dt) enter two decayed sums, each weighted by the interval's mean weight
f = tau / dt * (1 - exp(-dt / tau)),

    U <- U * exp(-dt / tau) + du * f        T <- T * exp(-dt / tau) + dt * f

and the rate is U / T: the units per second of roughly the last `tau_s` seconds, older intervals
weighing exponentially less, the same whether observed every second or once a minute. Time
spent with no unit finished (waiting on the optimizer model, a rate limit, a retry) lowers the
rate as it should, since the same waits lie ahead. The ETA is remaining units / rate; it is
unknown (None) until a unit has been done. Optimizer sequences and scored chains count alike;
the mix of the two changes little from step to step, so the window absorbs their difference.
"""

from __future__ import annotations

import math

DEFAULT_TAU_S = 120.0


class RateEstimator:
    """Units per second over an exponentially weighted window (see the module docstring)."""

    def __init__(self, tau_s: float = DEFAULT_TAU_S) -> None:
        if tau_s <= 0:
            raise ValueError("tau_s must be positive")
        self.tau_s = tau_s
        self._units = 0.0  # decayed sum of units done
        self._seconds = 0.0  # decayed sum of seconds elapsed
        self._last_time: float | None = None
        self._last_done = 0.0

    def observe(self, now: float, done: float) -> None:
        """Record that `done` units (a running total) are finished at time `now` (seconds)."""
        if self._last_time is None:
            self._last_time, self._last_done = now, done
            return
        elapsed = now - self._last_time
        if elapsed <= 0:
            return
        decay = math.exp(-elapsed / self.tau_s)
        weight = self.tau_s / elapsed * -math.expm1(-elapsed / self.tau_s)  # the interval's mean
        self._units = self._units * decay + max(0.0, done - self._last_done) * weight
        self._seconds = self._seconds * decay + elapsed * weight
        self._last_time, self._last_done = now, max(done, self._last_done)

    @property
    def rate(self) -> float | None:
        """Units per second, or None before any unit was seen done."""
        if self._units <= 0 or self._seconds <= 0:
            return None
        return self._units / self._seconds

    def eta_s(self, remaining: float) -> float | None:
        """Seconds until `remaining` more units are done at the current rate (None: unknown)."""
        if remaining <= 0:
            return 0.0
        rate = self.rate
        return None if rate is None else remaining / rate


def format_duration(seconds: float | None) -> str:
    """`1m32s`, `2h05m`, `45s`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_count(value: float) -> str:
    """`950`, `41.2k`, `3.10M`."""
    if value < 1000:
        return f"{int(value)}"
    if value < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.2f}M"
