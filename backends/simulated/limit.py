"""The simulated server's physical limit for a workload: the yardstick the engine is measured by.

A workload is a sequence of items `(prompt_tokens, output_tokens)` or
`(prompt_tokens, output_tokens, cached_prefix_tokens)`. The limit runs the live server's own step
model (`batching.ContinuousBatcher`) offline with every item queued at t = 0 in the given order,
so the batch is as full as the server's budgets allow at every step. The makespan is the sum of
the step times, divided by `time_scale`; it is the least time in which any client can get the
workload through the server in that arrival order (the live server schedules FCFS exactly so).
Cached prefix tokens are given per item, or computed by `workload_from_prompts` with a fresh
prefix cache fed in arrival order, which is what the live server's cache sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from backends.errors import ConfigError
from backends.simulated.batching import ContinuousBatcher, SequenceWork
from backends.simulated.config import SimulatedServerConfig
from backends.simulated.prefix_cache import PrefixCache
from backends.simulated.tokens import count_tokens, generated_block_hashes, prefix_block_hashes

WorkloadItem = tuple[int, int] | tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class ThroughputLimit:
    """The best the server can do on one workload; times are real seconds (after time_scale)."""

    makespan_s: float
    simulated_makespan_s: float
    sequences: int
    prompt_tokens: int
    output_tokens: int
    steps: int

    @property
    def request_throughput(self) -> float:
        """Sequences per real second."""
        return self.sequences / self.makespan_s if self.makespan_s > 0 else float("inf")

    @property
    def output_token_throughput(self) -> float:
        """Generated tokens per real second."""
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else float("inf")


def analyse_workload(
    config: SimulatedServerConfig, workload: Iterable[WorkloadItem]
) -> ThroughputLimit:
    """Run the step model offline over the workload, everything queued at t = 0."""
    batcher = ContinuousBatcher(config, prefix_cache=None)
    sequences = prompt_total = output_total = 0
    for position, item in enumerate(workload):
        prompt_tokens, output_tokens = item[0], item[1]
        cached = item[2] if len(item) > 2 else 0
        if prompt_tokens < 1 or output_tokens < 1:
            raise ConfigError(f"workload item {position}: tokens must be >= 1, got {item}")
        if prompt_tokens + output_tokens > config.max_model_len:
            raise ConfigError(
                f"workload item {position}: {prompt_tokens} + {output_tokens} tokens exceed "
                f"max_model_len {config.max_model_len}"
            )
        batcher.submit(SequenceWork(prompt_tokens, output_tokens, cached_tokens=cached))
        sequences += 1
        prompt_total += prompt_tokens
        output_total += output_tokens
    simulated = 0.0
    while batcher.has_work:
        plan = batcher.plan_step()
        simulated += plan.duration_s
        batcher.complete_step(plan)
    return ThroughputLimit(
        makespan_s=simulated / config.time_scale,
        simulated_makespan_s=simulated,
        sequences=sequences,
        prompt_tokens=prompt_total,
        output_tokens=output_total,
        steps=batcher.steps,
    )


def theoretical_makespan(config: SimulatedServerConfig, workload: Iterable[WorkloadItem]) -> float:
    """Least real seconds in which the server can finish the workload."""
    return analyse_workload(config, workload).makespan_s


def theoretical_throughput(
    config: SimulatedServerConfig, workload: Iterable[WorkloadItem]
) -> float:
    """Most sequences per real second the server can sustain on the workload."""
    return analyse_workload(config, workload).request_throughput


def workload_from_prompts(
    config: SimulatedServerConfig,
    prompts: Sequence[str],
    output_tokens: Sequence[int],
    outputs: Sequence[str] | None = None,
) -> list[tuple[int, int, int]]:
    """Workload items for prompt texts sent in this order, with their prefix-cache hits.

    With `outputs` (the answers' texts), each answer's decoded blocks enter the cache after its
    prompt, as they do on the live server when the sequence finishes, so a later prompt that
    repeats a prompt and its answer (a chat's next turn) hits them.
    """
    if len(prompts) != len(output_tokens) or (outputs is not None and len(outputs) != len(prompts)):
        raise ConfigError(
            f"{len(prompts)} prompts but {len(output_tokens)} output lengths"
            + ("" if outputs is None else f" and {len(outputs)} output texts")
            + "; they must match"
        )
    cache = (
        PrefixCache(config.kv_cache_blocks, config.block_size)
        if config.enable_prefix_caching
        else None
    )
    items = []
    for position, (prompt, output) in enumerate(zip(prompts, output_tokens, strict=True)):
        tokens = count_tokens(prompt)
        cached = 0
        if cache is not None:
            keys = prefix_block_hashes(prompt, config.block_size)
            cached = cache.admit(keys, tokens)
            if outputs is not None:
                cache.insert(
                    generated_block_hashes(prompt, outputs[position], config.block_size, keys)
                )
        items.append((tokens, output, cached))
    return items
