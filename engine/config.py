"""`EngineConfig`: one engine's scheduling policy (window, prompt lists, retries, rates, claims).

Budgets are not here: they hold for a whole run, so a run passes one shared `Budget`
(`engine.budget`) to all its engines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from backends.protocol import Capabilities
from engine.cache import DEFAULT_CLAIM_TTL_S
from engine.retry_policy import RetryPolicy


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Scheduling policy. `None` sizes derive from the backend's capabilities."""

    max_concurrency: int | None = None
    min_concurrency: int = 1
    window_start: int = 64
    """Where a measured window starts (`engine.adaptive_window`): no concurrency configured
    and none known from the server."""
    window_limit: int = 1024
    """The most a measured window grows to."""
    adaptive_concurrency: bool = True
    max_batch_size: int = 32
    prompt_lists: bool = True
    chat_template: str | None = None
    max_retries: int = 8
    max_rate_limited_retries: int = 200
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    rate_window_s: float = 60.0
    max_pending: int = 4096
    seed: int = 0
    share_cache_claims: bool = True
    claim_ttl_s: float = DEFAULT_CLAIM_TTL_S
    claim_poll_max_s: float = 1.0

    def measures_window(self, capabilities: Capabilities) -> bool:
        """True when the window is found by measurement: nobody said how large it may be."""
        return (
            self.adaptive_concurrency
            and self.max_concurrency is None
            and capabilities.max_concurrency is None
        )

    def window_for(self, capabilities: Capabilities) -> int:
        """The concurrency window's largest size, in sequences."""
        if self.max_concurrency is not None:
            return max(1, self.max_concurrency)
        known = capabilities.max_concurrency
        if known is None:
            return 64
        # Keep the server's waiting queue non-empty: a prompt-list call holds its slots until its
        # longest sequence ends, so some headroom above max_num_seqs keeps the batch full.
        return known if known <= 2 else known + known // 2 + self.max_batch_size

    def retry_policy(self, rng: random.Random) -> RetryPolicy:
        """The retry rules these settings describe, drawing jitter from `rng`."""
        return RetryPolicy(
            max_retries=self.max_retries,
            max_rate_limited_retries=self.max_rate_limited_retries,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            rng=rng,
        )
