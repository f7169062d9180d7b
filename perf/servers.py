"""The servers the benchmark measures against: the simulated vLLM-like server started for a
workload's kind (H100 step model, hosted API with rate limits, zero service time), or a real
OpenAI-compatible server; the `Endpoint` a contender is given; the server's own request counts."""

from __future__ import annotations

import dataclasses
import os
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from benchmarks import Task
from perf.scales import Scale

API_REQUESTS_PER_MINUTE = 500
API_TOKENS_PER_MINUTE = 200_000
API_BURST_FRACTION = 0.02
"""Hosted APIs enforce per-minute limits over short windows (a 500 RPM limit is not 500 requests
in the first second); the simulated buckets hold 1.2 simulated seconds of each limit."""


@dataclass(frozen=True, slots=True)
class ApiLimits:
    requests_per_minute: int
    tokens_per_minute: int
    burst_fraction: float

    @property
    def request_burst(self) -> float:
        return max(1.0, self.requests_per_minute * self.burst_fraction)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a contender sends its work and what it may assume about the server."""

    base_url: str
    model: str
    api_key: str
    chat_template: str
    max_num_seqs: int
    time_scale: float
    api_limits: ApiLimits | None = None
    simulated: bool = True

    @property
    def metrics_url(self) -> str:
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        return f"{root}/metrics"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("api_key")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], api_key: str) -> Endpoint:
        values = dict(data)
        if values.get("api_limits") is not None:
            values["api_limits"] = ApiLimits(**values["api_limits"])
        return cls(**values, api_key=api_key)


def real_endpoint(url: str, model: str, chat_template: str, max_num_seqs: int) -> Endpoint:
    """A real OpenAI-compatible server (`--url`): nothing scaled; the key from the environment."""
    key = os.environ.get("OPENAI_API_KEY", "EMPTY")
    return Endpoint(url, model, key, chat_template, max_num_seqs, 1.0, simulated=False)


def answer_key_for(task: Task) -> dict[str, str]:
    """Question -> gold answer for every split the workloads use (the server's answer key)."""
    return {s.input: s.target for split in ("train", "eval", "test") for s in task.split(split)}


def server_config(kind: str, scale: Scale) -> Any:
    """The simulated server for a workload: a 7B chat model on one H100 under vLLM."""
    from backends.simulated import RateLimits, SimulatedServerConfig

    if kind == "zero":
        return SimulatedServerConfig(zero_latency=True)
    if kind == "api":
        return SimulatedServerConfig(
            time_scale=scale.api_time_scale,
            rate_limits=RateLimits(
                API_REQUESTS_PER_MINUTE, API_TOKENS_PER_MINUTE, API_BURST_FRACTION
            ),
        )
    return SimulatedServerConfig(time_scale=scale.time_scale)


def describe_server(config: Any) -> str:
    if config.zero_latency:
        return "zero service time (answers as soon as they are computed)"
    text = (
        f"{config.model}: max_num_seqs {config.max_num_seqs}, max_num_batched_tokens "
        f"{config.max_num_batched_tokens}, step {config.step_overhead_s * 1e3:g} ms + "
        f"{config.decode_time_per_seq_s * 1e3:g} ms/decoding seq + "
        f"{config.prefill_time_per_token_s * 1e3:g} ms/prefill token, KV "
        f"{config.kv_cache_blocks} x {config.block_size}-token blocks, prefix caching "
        f"{'on' if config.enable_prefix_caching else 'off'}, output lengths "
        f"{config.output_lengths.distribution}(mean {config.output_lengths.mean:g}, sigma "
        f"{config.output_lengths.sigma:g}), time_scale {config.time_scale:g}"
    )
    limits = config.rate_limits
    if limits.enabled:
        text += (
            f"; API mode: {limits.requests_per_minute} RPM, {limits.tokens_per_minute:,} TPM, "
            f"buckets of {limits.burst_fraction:g} of a minute"
        )
    return text


class ServerHandle:
    """A simulated server process shared by the runs of one workload family."""

    def __init__(self, kind: str, scale: Scale, answer_key: dict[str, str]) -> None:
        from backends.simulated import start_server_process

        self.kind = kind
        self.config = server_config(kind, scale)
        self.process = start_server_process(self.config, answer_key=answer_key)
        self.base_url = f"{self.process.url}/v1"

    def endpoint(self) -> Endpoint:
        limits = None
        if self.config.rate_limits.enabled:
            rl = self.config.rate_limits
            limits = ApiLimits(rl.requests_per_minute, rl.tokens_per_minute, rl.burst_fraction)
        return Endpoint(
            self.base_url,
            self.config.model,
            "sk-bench",
            "chatml",
            self.config.max_num_seqs,
            self.config.time_scale,
            limits,
        )

    def fresh(self) -> None:
        """Restart: empty prefix cache, idle batch, full rate-limit buckets (counters kept)."""
        self.process.restart()
        deadline = time.monotonic() + 10.0
        time.sleep(0.1)
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.process.url}/health", timeout=2.0):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the simulated server did not come back after a restart")

    def stop(self) -> None:
        self.process.stop()


def reset_prefix_cache(endpoint: Endpoint) -> None:
    """Ask a real vLLM server to forget its prefix cache between runs (best effort: the route
    exists when vLLM runs with VLLM_SERVER_DEV_MODE=1), so no contender inherits a warm one."""
    root = endpoint.metrics_url[: -len("/metrics")]
    request = urllib.request.Request(f"{root}/reset_prefix_cache", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10.0):
            pass
    except OSError:
        pass


def server_counts(metrics_url: str) -> tuple[int, int, int] | None:
    """(generation HTTP requests, 429s, answered requests) from the server's /metrics."""
    from backends.simulated.metrics import parse_prometheus

    try:
        with urllib.request.urlopen(metrics_url, timeout=10.0) as response:
            samples = parse_prometheus(response.read().decode("utf-8"))
    except OSError:
        return None
    requests = limited = answered = 0
    names = {key.partition("{")[0] for key in samples}
    seen = "sim_sequences_served_total" in names or "http_requests_total" in names
    for key, value in samples.items():
        name, _, labels = key.partition("{")
        if name == "sim_http_requests_total":
            if "/v1/completions" in labels or "/v1/chat/completions" in labels:
                requests += int(value)
                if 'status="429"' in labels:
                    limited += int(value)
                if 'status="200"' in labels:
                    answered += int(value)
        elif name == "http_requests_total" and (
            '"/v1/completions"' in labels or '"/v1/chat/completions"' in labels
        ):
            # vLLM's own server (prometheus-fastapi-instrumentator) groups statuses as 2xx, 4xx.
            requests += int(value)
            if 'status="2xx"' in labels:
                answered += int(value)
    return (requests, limited, answered) if seen else None
