"""Configuration of the simulated vLLM-like server: one frozen value, validated on construction.

The defaults model Llama-2-7b-chat (the paper's scorer; fp16, 4096-token context) served by vLLM
on one H100 80GB with `--max-num-seqs 256 --max-num-batched-tokens 8192`, chunked prefill and
prefix caching on. How the numbers were chosen:

- Step time. A forward pass is memory-bound at small batches: reading 13.5 GB of weights at
  ~3 TB/s is ~4.5 ms, and vLLM adds scheduling, sampling and launch overhead, so a step with
  one running sequence takes `step_overhead_s` = 12 ms (~80 tokens/s for a single stream, as
  measured for 7B models under vLLM). Each sequence in the batch adds the cost of reading its KV
  cache and of its share of the GEMMs: `decode_time_per_seq_s` = 0.05 ms, so a full batch of 256
  decodes takes 24.8 ms (~10k generated tokens/s, in line with published vLLM throughput runs).
- Prefill is compute-bound: 2 x 6.7 GFLOP per token at ~40% of the H100's 990 dense bf16
  TFLOP/s gives ~30k tokens/s; `prefill_time_per_token_s` = 0.04 ms (25k tokens/s) allows for
  attention. Prefix-cached tokens cost nothing.
- KV cache: 0.9 x 80 GB - 13.5 GB of weights - activations leaves ~57 GiB; Llama-2-7B (32
  layers, 32 KV heads of 128, fp16) needs 512 KiB per token, so ~114k tokens = 7100 blocks of 16.

`time_scale` is simulated seconds per real second: with `time_scale=100` a simulated minute lasts
0.6 real seconds. It applies to the step model and to the rate-limit windows; `Retry-After`,
`slow_body_seconds` and `hang_seconds` are real seconds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from backends.errors import ConfigError

_STANDARD_NORMAL = NormalDist()
OUTPUT_LENGTH_DISTRIBUTIONS = ("fixed", "uniform", "lognormal")


@dataclass(frozen=True, slots=True)
class OutputLengths:
    """How many tokens a first-turn answer has before `max_tokens` caps it.

    `fixed`: always `round(mean)`. `uniform`: an integer in [low, high]. `lognormal`: `mean` is
    the distribution's mean in tokens and `sigma` the standard deviation of its logarithm
    (mu = ln(mean) - sigma^2 / 2). Every draw is at least 1. The draw is a deterministic function
    of the request (prompt, seed, choice index), never of random state.
    """

    distribution: str = "lognormal"
    mean: float = 150.0
    sigma: float = 0.5
    low: int = 1
    high: int = 256

    def __post_init__(self) -> None:
        if self.distribution not in OUTPUT_LENGTH_DISTRIBUTIONS:
            known = ", ".join(OUTPUT_LENGTH_DISTRIBUTIONS)
            raise ConfigError(
                f"output_lengths.distribution {self.distribution!r} is not one of {known}"
            )
        if self.mean < 1:
            raise ConfigError(f"output_lengths.mean must be >= 1, got {self.mean}")
        if self.sigma < 0:
            raise ConfigError(f"output_lengths.sigma must be >= 0, got {self.sigma}")
        if not 1 <= self.low <= self.high:
            raise ConfigError(
                f"output_lengths needs 1 <= low <= high, got low={self.low} high={self.high}"
            )

    def sample(self, uniform: float) -> int:
        """The length for a uniform draw in [0, 1)."""
        if self.distribution == "fixed":
            return max(1, round(self.mean))
        if self.distribution == "uniform":
            return min(self.high, self.low + int(uniform * (self.high - self.low + 1)))
        clamped = min(max(uniform, 1e-9), 1.0 - 1e-9)
        mu = math.log(self.mean) - self.sigma * self.sigma / 2.0
        return max(1, round(math.exp(mu + self.sigma * _STANDARD_NORMAL.inv_cdf(clamped))))

    @classmethod
    def parse(cls, spec: str) -> OutputLengths:
        """Parse `fixed:N`, `uniform:LOW:HIGH` or `lognormal:MEAN:SIGMA` (the CLI's syntax)."""
        name, _, rest = spec.partition(":")
        parts = rest.split(":") if rest else []
        try:
            if name == "fixed" and len(parts) == 1:
                return cls(distribution="fixed", mean=float(parts[0]))
            if name == "uniform" and len(parts) == 2:
                return cls(distribution="uniform", low=int(parts[0]), high=int(parts[1]))
            if name == "lognormal" and len(parts) == 2:
                return cls(distribution="lognormal", mean=float(parts[0]), sigma=float(parts[1]))
        except ValueError:
            pass
        raise ConfigError(
            f"--output-lengths {spec!r}: expected fixed:N, uniform:LOW:HIGH or lognormal:MEAN:SIGMA"
        )


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Hosted-API limits (API mode); None switches a limit off. See `rate_limits.py`."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    burst_fraction: float = 1.0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"rate_limits.{name} must be >= 1 or None, got {value}")
        if not 0.0 < self.burst_fraction <= 1.0:
            raise ConfigError(
                f"rate_limits.burst_fraction must be in (0, 1], got {self.burst_fraction}"
            )

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probabilities, per generation request, of each injected fault (see `faults.py`).

    The rates must sum to at most 1. `slow_body_seconds` is how long (real seconds) a slow body
    takes to write; `hang_seconds` how long a hang lasts before the connection is dropped (None:
    until the client gives up or the server stops). Draws come from a generator seeded with
    `seed`, one per generation request in arrival order.
    """

    server_error: float = 0.0
    connection_reset: float = 0.0
    hang: float = 0.0
    malformed_json: float = 0.0
    truncated_body: float = 0.0
    slow_body: float = 0.0
    slow_body_seconds: float = 1.0
    hang_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        rates = self.rates()
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"faults.{name} must be in [0, 1], got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ConfigError(f"fault rates sum to {sum(rates.values()):.3f}, more than 1")
        if self.slow_body_seconds < 0:
            raise ConfigError(
                f"faults.slow_body_seconds must be >= 0, got {self.slow_body_seconds}"
            )
        if self.hang_seconds is not None and self.hang_seconds < 0:
            raise ConfigError(f"faults.hang_seconds must be >= 0, got {self.hang_seconds}")

    def rates(self) -> dict[str, float]:
        """Fault kind -> probability, in the order faults are drawn."""
        return {
            "server_error": self.server_error,
            "connection_reset": self.connection_reset,
            "hang": self.hang,
            "malformed_json": self.malformed_json,
            "truncated_body": self.truncated_body,
            "slow_body": self.slow_body,
        }

    @property
    def enabled(self) -> bool:
        return any(rate > 0 for rate in self.rates().values())


@dataclass(frozen=True, slots=True)
class SimulatedServerConfig:
    """Everything that decides how the simulated server behaves (defaults: see the module doc).

    `zero_latency` answers every request at once, bypassing the step model and the prefix cache,
    to measure a client's own overhead. `api_key`, when set, is required as a Bearer token.
    """

    port: int = 0
    model: str = "simulated-llama-2-7b-chat"
    max_model_len: int = 4096
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    kv_cache_blocks: int = 7100
    enable_prefix_caching: bool = True
    step_overhead_s: float = 0.012
    decode_time_per_seq_s: float = 0.00005
    prefill_time_per_token_s: float = 0.00004
    output_lengths: OutputLengths = field(default_factory=OutputLengths)
    time_scale: float = 1.0
    zero_latency: bool = False
    rate_limits: RateLimits = field(default_factory=RateLimits)
    faults: FaultRates = field(default_factory=FaultRates)
    api_key: str | None = field(default=None, repr=False)
    embedding_dim: int = 64
    batch_delay_s: float = 60.0
    """Simulated seconds a Batch API batch stays in progress (see `batch_api.py`)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if not self.model:
            raise ConfigError("model must be a non-empty name")
        positive_ints = ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size")
        for name in (*positive_ints, "kv_cache_blocks", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError(
                "max_num_batched_tokens must be >= max_num_seqs (every running sequence decodes "
                f"one token per step), got {self.max_num_batched_tokens} < {self.max_num_seqs}"
            )
        if self.kv_cache_blocks * self.block_size < self.max_model_len:
            raise ConfigError(
                f"kv_cache_blocks * block_size = {self.kv_cache_blocks * self.block_size} tokens "
                f"cannot hold one sequence of max_model_len = {self.max_model_len}"
            )
        for name in ("step_overhead_s", "decode_time_per_seq_s", "prefill_time_per_token_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.step_overhead_s + self.decode_time_per_seq_s + self.prefill_time_per_token_s <= 0:
            raise ConfigError("a step must take some time: the step cost parameters are all 0")
        if self.batch_delay_s < 0:
            raise ConfigError(f"batch_delay_s must be >= 0, got {self.batch_delay_s}")
        if not self.time_scale > 0:
            raise ConfigError(f"time_scale must be > 0, got {self.time_scale}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict without the API key (it travels through the environment instead)."""
        data = dataclasses.asdict(self)
        data.pop("api_key")
        return data

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, api_key: str | None = None
    ) -> SimulatedServerConfig:
        """Inverse of `to_dict`; unknown keys are a `ConfigError` naming them."""
        nested = {"output_lengths": OutputLengths, "rate_limits": RateLimits, "faults": FaultRates}
        known = {f.name for f in dataclasses.fields(cls)} - {"api_key"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown simulated server config keys: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            kind = nested.get(key)
            if kind is not None and isinstance(value, dict):
                names = {f.name for f in dataclasses.fields(kind)}
                bad = sorted(set(value) - names)
                if bad:
                    raise ConfigError(f"unknown keys in {key}: {', '.join(bad)}")
                value = kind(**value)
            values[key] = value
        return cls(**values, api_key=api_key)
