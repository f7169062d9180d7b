"""The concurrency window found by measurement, for servers whose capacity nobody gave.

When neither the user (`--scorer-concurrency`) nor the server (a managed vLLM's
`max_num_seqs`) says how many sequences the server runs at once, `MeasuredWindow` finds out: it
starts at `start` (a guess per server kind) and moves within [`minimum`, `maximum`].

Signals, per answered call: its latency L (send to answer), the sequences it carried, and the
sequences in flight when it came back. Two latency averages are kept:

    short  <- short + a (L - short)                  a = 0.1 (recent latency)
    noload <- min(L, noload + b (s / W) (short - noload))
                                     b = 0.0005 per window's worth of answers (the unloaded
                                     latency: the least seen, drifting slowly up towards short,
                                     by 0.05% a round trip, so a server that changed is relearned)

TCP Vegas compares the throughput expected at no load, W / noload, with the actual one,
W / short; their difference times noload, W (1 - noload / short), is the number of sequences
queued at the server. Netflix's Gradient2 turns the same ratio into a multiplicative gradient:

    gradient = clamp(tolerance x noload / short, 0.5, 1)      tolerance = 2

A gradient of 1 means latency has not yet doubled: adding sequences still adds throughput (a
batching server's step time grows far slower than its batch), so the window grows, but only
while it is in use (at least half of it in flight; an idle window proves nothing):

- slow start (until the first sign of congestion): W <- W + s per answer of s sequences, that
  is, the window doubles every round trip, so a 256-slot server is found in a few round trips;
- afterwards: W <- W + sqrt(W) s / W, about sqrt(W) more per round trip (Gradient2's queue).

A gradient below 1 means sequences queue: the window moves towards Gradient2's target, smoothed
per window's worth of answers (s / W of the step per answer, so one round trip makes one step):

    target = W x gradient + sqrt(W)          W <- W + 0.2 (s / W) (target - W)

so it settles where latency is about `tolerance` times the unloaded one: past the knee of the
throughput curve, where more in flight buys only latency.

429s and timeouts halve the window (at most once a second: one burst of errors is one signal)
and end slow start, as in AIMD.

vLLM's `/metrics` is the direct signal where a server has it (`engine.server_load` polls
`vllm:num_requests_running` and `vllm:num_requests_waiting` and calls `on_server_load`): while
it is fresh (within 2 s) it replaces the latency gradient.

- Full: requests waiting beyond one prompt list (`batch`) at two polls in a row while the
  running count did not grow between them (waiting at one poll alone is a list waiting for its
  prefill). Growth stops and the window is brought down, by at most 10% a poll, to
  peak running + peak running / 2 + batch, the headroom that keeps the batch full (as for a
  server whose `max_num_seqs` is known, `EngineConfig.window_for`).
- Otherwise the server has free slots: the window grows as above even if latency climbs (on a
  batching server latency rises with the batch while throughput still does too), and in slow
  start a poll that finds the window in use doubles it at once (polls come every 0.25 s,
  sooner than a round trip of long generations).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

TOLERANCE = 2.0
SHORT_ALPHA = 0.1
NOLOAD_DRIFT = 0.0005
SMOOTHING = 0.2
MIN_GRADIENT = 0.5
LOAD_FRESH_S = 2.0
LOAD_STEP_DOWN = 0.9


class MeasuredWindow:
    """The number of sequences allowed in flight, found by measurement; see the module docs."""

    adaptive = True

    def __init__(
        self,
        start: int,
        minimum: int = 1,
        maximum: int = 1024,
        *,
        decrease_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self._size = float(min(self.maximum, max(self.minimum, start)))
        self.decrease_interval_s = decrease_interval_s
        self._clock = clock
        self.slow_start = True
        self.noload = math.inf
        self.short = 0.0
        self.decreases = 0
        self._last_decrease = -math.inf
        self._load_at = -math.inf
        self._server_full = False
        self._waited = False
        self._running = 0.0
        self._in_flight = 0

    @property
    def size(self) -> int:
        return int(self._size)

    @property
    def gradient(self) -> float:
        """Gradient2's clamp(tolerance x noload / short, 0.5, 1); 1 before any sample."""
        if self.short <= 0 or not math.isfinite(self.noload):
            return 1.0
        return max(MIN_GRADIENT, min(1.0, TOLERANCE * self.noload / self.short))

    def _load_fresh(self) -> bool:
        return self._clock() - self._load_at <= LOAD_FRESH_S

    def on_success(self, sequences: int, latency_s: float = 0.0, in_flight: int = 0) -> None:
        """A call of `sequences` answered after `latency_s`, `in_flight` sequences out with it."""
        self._in_flight = in_flight
        if latency_s <= 0 or sequences <= 0:
            return
        self.short = (
            latency_s if self.short <= 0 else self.short + SHORT_ALPHA * (latency_s - self.short)
        )
        size = self._size
        share = min(1.0, sequences / size)
        drifted = self.noload + NOLOAD_DRIFT * share * (self.short - self.noload)
        self.noload = min(latency_s, drifted if math.isfinite(self.noload) else latency_s)
        fresh = self._load_fresh()
        gradient = (0.0 if self._server_full else 1.0) if fresh else self.gradient
        if gradient >= 1.0:
            if in_flight * 2 >= size:
                step = sequences if self.slow_start else math.sqrt(size) * sequences / size
                self._size = min(float(self.maximum), size + step)
            return
        if self._server_full:
            return  # `on_server_load` brings it down
        self.slow_start = False
        target = size * gradient + math.sqrt(size)
        self._size = self._clamp(size + SMOOTHING * share * (target - size))

    def on_congestion(self) -> None:
        """A 429 or a timeout: halve, at most once per `decrease_interval_s`."""
        now = self._clock()
        if now - self._last_decrease < self.decrease_interval_s:
            return
        self._last_decrease = now
        self.slow_start = False
        self._size = self._clamp(self._size / 2)
        self.decreases += 1

    def on_server_load(self, running: float, waiting: float, batch: int) -> None:
        """The server's own counts (vLLM `/metrics`): `running` and `waiting` sequences."""
        self._load_at = self._clock()
        # Waiting alone is no proof: a prompt list waits a step or two for its prefill while
        # the batch still grows. Full is waiting twice in a row while running stopped growing.
        waits = waiting > max(1, batch)
        self._server_full = waits and self._waited and running <= self._running
        peak = max(running, self._running)
        self._waited, self._running = waits, running
        logger.debug(
            "window %d (in flight %d), server running %d, waiting %d%s",
            self.size,
            self._in_flight,
            running,
            waiting,
            ", full" if self._server_full else "",
        )
        if not self._server_full:
            if self.slow_start and self._in_flight * 2 >= self._size:
                # Free slots and the window in use: double now, not a round trip from now.
                self._size = self._clamp(self._size * 2)
            return
        self.slow_start = False
        headroom = peak + peak // 2 + batch
        if self._size > headroom:
            self._size = self._clamp(max(headroom, self._size * LOAD_STEP_DOWN))

    def _clamp(self, size: float) -> float:
        return min(float(self.maximum), max(float(self.minimum), size))

    def describe(self) -> str:
        return f"measured: {self.size} now, within [{self.minimum}, {self.maximum}]"
