"""Benchmark: the evaluation engine against the dispatch patterns peers use, on the same server.

    python bench.py                          # W1-W6, medians of 3 runs
    python bench.py --quick                  # every workload and contender, small (< 2 min)
    python bench.py --smoke                  # tiny and in-process, for the test suite
    python bench.py --workloads W1,W3 --repeat 5 --json out.json --markdown out.md
    python bench.py --full                   # adds W5 at 1M scored prompts
    python bench.py --url http://HOST:8000/v1 --model NAME   # a real `vllm serve`: ratios only
    python bench.py --check-estimate         # dry-run cost estimate vs the ledger of a real run

bench.py starts the simulated vLLM-like server (`backends.simulated`) in its own process on
loopback, restarts it before every measured run (empty prefix cache, full rate-limit buckets),
and runs each contender in a fresh worker process, so that the client's CPU time and peak memory
are its own. A "scored prompt" is one (candidate prompt, dev sample) chain: the first chat turn
laid out by `benchmarks`, then the answer-pinning second turn built from the first answer, then
extraction and scoring. Every contender does exactly that work, and its answers are compared with
the engine's (the simulated server is deterministic), so no contender can win by doing less.

Workloads (bbh/navigate, reference prompts from the data as candidates):
  W1  one GPO step: 8 candidates x 48 dev samples x 2 chat turns.
  W2  one task's optimisation load as the optimizer submits it, step after step: the initial
      prompt on dev, 18 steps of W1, then initial and final prompt on the 144 test samples.
  W3  a hosted API in API mode: RPM and TPM limits enforced with 429s (W1's work).
  W4  W1 again on a warm response cache.
  W5  scale: 1k, 10k, 100k (and 1M with --full) scored prompts on a zero-service-time server.
  W6  client overhead: a zero-service-time server; client CPU per scored prompt.

Figures: wall time; scored prompts per second; percent of the server's theoretical limit (the
makespan of the workload with every round fully queued at t = 0, computed offline with the
server's own step model and answers by `backends.simulated.limit`; for W3, the workload's
requests, one per chat turn, over the requests the limits allowed during the run); the
contender's wall time over the engine's; client CPU seconds (`time.process_time` of the worker,
threads included; the server runs in another process); HTTP requests and 429s (the server's
/metrics, before and after); failures (chains the pattern gave up on); peak memory (the worker's
peak RSS during the run minus its RSS before it, libraries already imported: VmHWM reset through
/proc/self/clear_refs, ru_maxrss where /proc is unavailable). On the zero-service-time server
(W5, W6) each worker first scores up to 1,000 chains of other prompts, unmeasured, so that the
figures are a warm process's per-prompt cost, as in a long run, not its start-up (which would
fall on the smallest W5 size alone; the warm-up's freed memory may be reused by the measured run,
so its peak can read up to the warm-up's own few MB low). Every figure is the median of
`--repeat` runs. A contender too slow to finish within the run budget stops at a unit boundary
(a chain, a candidate or a round, as its pattern allows) and its totals are extrapolated linearly
from the measured prefix; the table marks them with "~". A contender that gives up on chains
re-runs them until they are answered (as a user would, from lm-eval's cache or the cookbook's
error file), with the time counted, so that every row ends with every request answered.

The simulated H100 runs `time_scale` times faster than real time (4 for W1, W2 and W4, 10 for
W3), so the whole benchmark takes about half an hour; the limit and every contender are measured
on the same clock, client CPU is real, and each pattern's fixed waits (OPRO's 30 s, tenacity's
1-10 s, the cookbook's 15 s pause) are given in simulated seconds. Against a real server
(`--url`) nothing is scaled, no limit is printed, W3, W5 and W6 are skipped (they need the
simulated server's API and zero-latency modes), and vLLM's prefix cache is reset between runs
where the server allows it (VLLM_SERVER_DEV_MODE=1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import importlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from backends.chat_template import get_chat_template
from backends.protocol import Message
from benchmarks import (
    PromptLayout,
    Sample,
    Task,
    answer_turn,
    build_prompt,
    extract_answer,
    load_reference_prompts,
    load_task,
    score_answer,
)
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS

T = TypeVar("T")

# =================================================================================================
# Parameters
# =================================================================================================

TASK_NAME = "bbh/navigate"
INITIAL_PROMPT = "Let's think step by step."
SAMPLES_PER_PROMPT_AT_SCALE = 40
"""W5/W6 score each prompt on the first 40 dev samples, so sizes are round numbers."""

SEQUENTIAL_RETRY_S = 30.0
"""OPRO's scorer sleeps 30 s after an API error that carries no retry time (simulated seconds)."""
DSPY_THREADS = 8
DSPY_RETRIES = 3
LM_EVAL_CONCURRENCY = 32
LM_EVAL_ATTEMPTS = 3
ASYNC_OPENAI_CONCURRENCY = 64
COOKBOOK_PAUSE_AFTER_429_S = 15.0
COOKBOOK_TICK_S = 0.001
COOKBOOK_MAX_ATTEMPTS = 5

API_REQUESTS_PER_MINUTE = 500
API_TOKENS_PER_MINUTE = 200_000
API_BURST_FRACTION = 0.02
"""Hosted APIs enforce per-minute limits over short windows (a 500 RPM limit is not 500 requests
in the first second); the simulated buckets hold 1.2 simulated seconds of each limit."""

UNLIMITED_BUDGET_S = 1e9
"""The engine is the reference: it always runs its whole workload."""
MAX_RERUN_PASSES = 100
RERUN_TIME_LIMIT_S = 600.0


@dataclass(frozen=True, slots=True)
class Scale:
    """Sizes and pacing of one benchmark mode."""

    name: str
    candidates: int
    dev_samples: int
    steps: int
    test_samples: int
    w5_sizes: tuple[int, ...]
    w6_scored_prompts: int
    time_scale: float
    api_time_scale: float
    run_budget_s: float
    zero_latency_budget_s: float
    round_cap: int
    """Most scored prompts a gather-everything pattern is measured on before extrapolating."""
    repeat: int
    in_process: bool = False


SCALES: dict[str, Scale] = {
    "full": Scale(
        "full", 8, 48, 18, 144, (1_000, 10_000, 100_000), 20_000, 4.0, 10.0, 30.0, 5.0, 4_000, 3
    ),
    "quick": Scale(
        "quick", 8, 16, 3, 24, (1_000, 4_000, 16_000), 4_000, 10.0, 20.0, 2.0, 0.3, 500, 1
    ),
    "smoke": Scale("smoke", 2, 4, 2, 4, (80, 160, 320), 160, 50.0, 50.0, 0.5, 0.3, 100, 1, True),
}
FULL_SCALE_EXTRA_W5 = 1_000_000

# =================================================================================================
# Workloads
# =================================================================================================


@dataclass(frozen=True, slots=True)
class ScoringRound:
    """One evaluator call: every prompt on the first `sample_count` samples of `split`.

    Rounds run one after another, as the optimizer submits them (step t+1's candidates exist
    only once step t is scored).
    """

    label: str
    split: str
    prompts: tuple[str, ...]
    sample_count: int

    @property
    def scored_prompts(self) -> int:
        return len(self.prompts) * self.sample_count


@dataclass(frozen=True, slots=True)
class Workload:
    key: str
    title: str
    server: str
    """Which server it runs on: "h100" (the step model), "api" (rate limits) or "zero"."""
    rounds: tuple[ScoringRound, ...]
    description: str

    @property
    def scored_prompts(self) -> int:
        return sum(r.scored_prompts for r in self.rounds)


def candidate_prompts(count: int, data_dir: str | None = None) -> list[str]:
    """Distinct candidate prompts from the reference run's final prompts (navigate's first).

    Beyond the 86 reference prompts, variants are made by appending a numbered sentence, so
    every candidate is a new prompt that the server must answer afresh.
    """
    references = load_reference_prompts(data_dir)
    ordered = [references[TASK_NAME]] + [p for name, p in references.items() if name != TASK_NAME]
    prompts = []
    for index in range(count):
        base = ordered[index % len(ordered)]
        cycle = index // len(ordered)
        prompts.append(base if cycle == 0 else f"{base} Check your answer ({cycle}).")
    return prompts


def build_workloads(scale: Scale, *, full: bool = False) -> dict[str, Workload]:
    """Every workload of this scale, keyed "W1" ... "W6" ("W5-1k" etc. for the W5 sizes)."""
    step_count = scale.candidates
    pool = candidate_prompts(step_count * scale.steps + 1)
    step_one = ScoringRound("step", "eval", tuple(pool[:step_count]), scale.dev_samples)
    shape = f"{scale.candidates} candidates x {scale.dev_samples} dev samples x 2 chat turns"
    workloads = {
        "W1": Workload("W1", "one GPO step", "h100", (step_one,), shape),
        "W3": Workload(
            "W3",
            "a hosted API with RPM/TPM limits",
            "api",
            (step_one,),
            f"{shape}, chat requests under {API_REQUESTS_PER_MINUTE} RPM and "
            f"{API_TOKENS_PER_MINUTE:,} TPM",
        ),
        "W4": Workload("W4", "W1 on a warm response cache", "h100", (step_one,), shape),
    }
    rounds = [ScoringRound("initial", "eval", (INITIAL_PROMPT,), scale.dev_samples)]
    for step in range(scale.steps):
        prompts = tuple(pool[step * step_count : (step + 1) * step_count])
        rounds.append(ScoringRound(f"step {step + 1}", "eval", prompts, scale.dev_samples))
    rounds.append(ScoringRound("test", "test", (INITIAL_PROMPT, pool[0]), scale.test_samples))
    workloads["W2"] = Workload(
        "W2",
        "one task's optimisation load, step after step",
        "h100",
        tuple(rounds),
        f"initial prompt on {scale.dev_samples} dev samples, {scale.steps} steps of "
        f"{scale.candidates} x {scale.dev_samples}, then 2 prompts x {scale.test_samples} test "
        "samples; 2 chat turns each",
    )
    sizes = scale.w5_sizes + ((FULL_SCALE_EXTRA_W5,) if full else ())
    samples = min(SAMPLES_PER_PROMPT_AT_SCALE, scale.dev_samples * 10)
    for size in sizes:
        count = max(1, size // samples)
        prompts = tuple(candidate_prompts(count))
        key = f"W5-{_short_count(size)}"
        workloads[key] = Workload(
            key,
            f"scale: {size:,} scored prompts",
            "zero",
            (ScoringRound("all", "eval", prompts, samples),),
            f"{count:,} prompts x {samples} dev samples x 2 chat turns, zero service time",
        )
    w6_count = max(1, scale.w6_scored_prompts // samples)
    workloads["W6"] = Workload(
        "W6",
        "client overhead",
        "zero",
        (ScoringRound("all", "eval", tuple(candidate_prompts(w6_count)), samples),),
        f"{w6_count:,} prompts x {samples} dev samples x 2 chat turns, zero service time",
    )
    return workloads


def _short_count(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size >= 1_000 and size % 1_000 == 0:
        return f"{size // 1_000}k"
    return str(size)


@dataclass(frozen=True, slots=True)
class PromptGroup:
    """One candidate prompt and the chains (global id, sample) to score it on."""

    prompt: str
    chains: tuple[tuple[int, Sample], ...]

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(sample for _, sample in self.chains)


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """A round resolved against the task's data; chain ids are global and prompt-major."""

    label: str
    split: str
    groups: tuple[PromptGroup, ...]

    @property
    def chains(self) -> int:
        return sum(len(group.chains) for group in self.groups)


def plan_rounds(workload: Workload, task: Task, chain_cap: int | None = None) -> list[RoundPlan]:
    """The rounds with their samples; with `chain_cap`, only a prefix of whole prompts."""
    plans = []
    first = 0
    for scoring_round in workload.rounds:
        samples = task.split(scoring_round.split)[: scoring_round.sample_count]
        prompts = scoring_round.prompts
        if chain_cap is not None:
            room = chain_cap - first
            if room <= 0:
                break
            prompts = prompts[: max(1, room // len(samples))]
        groups = []
        for prompt in prompts:
            groups.append(PromptGroup(prompt, tuple(enumerate(samples, start=first))))
            first += len(samples)
        plans.append(RoundPlan(scoring_round.label, scoring_round.split, tuple(groups)))
    return plans


WARM_UP_SCORED_PROMPTS = 1_000
"""Zero-service-time runs (W5, W6) first score this many chains of other prompts, unmeasured."""


def warm_up_rounds(workload: Workload, task: Task) -> list[RoundPlan]:
    """An unmeasured first evaluation in the worker for the zero-service-time workloads.

    W5 and W6 measure what a scored prompt costs the client in a long run, where the process
    has long been warm; a fresh worker's first evaluation also pays one-off costs (first calls
    through every code path, the allocator's first arenas, the first connections), several ms that
    would be charged to the smallest W5 size alone. The warm-up uses the workload's own shape
    with other prompt texts, so no answer is reused; every contender gets the same warm-up.
    """
    renamed = dataclasses.replace(
        workload,
        rounds=tuple(
            dataclasses.replace(r, prompts=tuple(f"{p} (warm-up)" for p in r.prompts))
            for r in workload.rounds
        ),
    )
    return plan_rounds(renamed, task, min(WARM_UP_SCORED_PROMPTS, workload.scored_prompts))


def failed_chains(rounds: Sequence[RoundPlan], transcript: Transcript) -> list[RoundPlan]:
    """The rounds reduced to the chains that failed and are still unanswered (for a re-run)."""
    plans = []
    for plan in rounds:
        groups = []
        for group in plan.groups:
            chains = tuple(c for c in group.chains if c[0] in transcript.unanswered)
            if chains:
                groups.append(PromptGroup(group.prompt, chains))
        if groups:
            plans.append(RoundPlan(plan.label, plan.split, tuple(groups)))
    return plans


def answer_key_for(task: Task) -> dict[str, str]:
    """Question -> gold answer for every split the workloads use (the server's answer key)."""
    return {s.input: s.target for split in ("train", "eval", "test") for s in task.split(split)}


# =================================================================================================
# The servers and their theoretical limits
# =================================================================================================


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


def expected_transcript_workload(
    config: Any, rounds: Sequence[RoundPlan], task: Task, answer_key: dict[str, str]
) -> list[list[tuple[str, int, str]]]:
    """Per round, (rendered prompt, output tokens, answer) in the order FCFS sees them at best.

    The answers come from the server's own synthesizer, so the second turn's prompt holds the
    very first answer the server will give. First turns come before second turns.
    """
    from backends.simulated.answer_key import AnswerKey
    from backends.simulated.answers import AnswerSynthesizer

    synthesizer = AnswerSynthesizer(config.output_lengths, AnswerKey(answer_key))
    render = get_chat_template("chatml")
    layout = PromptLayout()

    def answer(prompt: str, max_tokens: int) -> tuple[str, int]:
        generated = synthesizer.generate(
            synthesizer.plan(prompt), temperature=0.0, seed=None, choice=0, max_tokens=max_tokens
        )
        return generated.text, max(1, generated.completion_tokens)

    per_round = []
    for plan in rounds:
        firsts: list[tuple[str, int, str]] = []
        seconds: list[tuple[str, int, str]] = []
        for group in plan.groups:
            for _, sample in group.chains:
                messages = build_prompt(group.prompt, sample, layout)
                assert not isinstance(messages, str)
                rendered = render(messages)
                text, tokens = answer(rendered, FIRST_TURN_PARAMS.max_tokens)
                firsts.append((rendered, tokens, text))
                follow_up = answer_turn(task, sample)
                if follow_up is not None:
                    conversation = (*messages, ("assistant", text), ("user", follow_up))
                    second = render(conversation)
                    final, final_tokens = answer(second, FOLLOW_UP_PARAMS.max_tokens)
                    seconds.append((second, final_tokens, final))
        per_round.append(firsts + seconds)
    return per_round


def theoretical_makespan_s(
    config: Any, rounds: Sequence[RoundPlan], task: Task, answer_key: dict[str, str]
) -> float:
    """Least real seconds the server needs: rounds in sequence, each fully queued at t = 0.

    The prefix cache is carried from round to round in submission order, as the live server's is;
    answers' decoded blocks enter it, so second turns find the first turn's prompt and answer.
    """
    from backends.simulated import analyse_workload, workload_from_prompts

    per_round = expected_transcript_workload(config, rounds, task, answer_key)
    flat = [item for items in per_round for item in items]
    items = workload_from_prompts(
        config, [p for p, _, _ in flat], [t for _, t, _ in flat], [a for _, _, a in flat]
    )
    total = 0.0
    start = 0
    for round_items in per_round:
        chunk = items[start : start + len(round_items)]
        start += len(round_items)
        if chunk:
            total += analyse_workload(config, chunk).makespan_s
    return total


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


# =================================================================================================
# Contenders
# =================================================================================================


class Transcript:
    """What a contender produced: per chain, its answers (both turns) or a failure.

    `failed` counts every time a pattern gave up on a chain; `unanswered` holds the chains
    that failed and have not been answered since (by a re-run).
    """

    __slots__ = ("answers", "failed", "scores", "unanswered")

    def __init__(self, size: int) -> None:
        self.answers: list[tuple[str, ...] | None] = [None] * size
        self.scores: list[float | None] = [None] * size
        self.failed = 0
        self.unanswered: set[int] = set()

    def record(self, chain: int, answers: tuple[str, ...], score: float) -> None:
        self.answers[chain] = answers
        self.scores[chain] = score
        self.unanswered.discard(chain)

    def fail(self, chain: int) -> None:
        self.failed += 1
        self.unanswered.add(chain)

    def digests(self) -> list[str | None]:
        return [
            None
            if a is None
            else hashlib.blake2b("\x1e".join(a).encode(), digest_size=8).hexdigest()
            for a in self.answers
        ]


@dataclass(slots=True)
class RunContext:
    """Everything a contender needs for one measured run."""

    task: Task
    rounds: list[RoundPlan]
    endpoint: Endpoint
    transcript: Transcript
    deadline: float
    layout: PromptLayout = field(default_factory=PromptLayout)
    cache_path: str | None = None
    chains_done: int = 0

    def out_of_time(self) -> bool:
        """True once the run budget is spent; checked only between a pattern's units."""
        return time.perf_counter() > self.deadline

    def seconds(self, simulated: float) -> float:
        """A pattern's fixed wait, given in simulated seconds, in real seconds."""
        return simulated / self.endpoint.time_scale

    def finish(self, chain: int, sample: Sample, answers: Sequence[str]) -> None:
        final = answers[-1]
        extract_answer(self.task, final)
        self.transcript.record(chain, tuple(answers), score_answer(self.task, sample, final))
        self.chains_done += 1

    def fail(self, chain: int) -> None:
        self.transcript.fail(chain)
        self.chains_done += 1

    def conversation(
        self, first: tuple[Message, ...], first_answer: str, sample: Sample
    ) -> tuple[Message, ...] | None:
        follow_up = answer_turn(self.task, sample)
        if follow_up is None:
            return None
        return (*first, ("assistant", first_answer), ("user", follow_up))


def _first_turn(ctx: RunContext, prompt: str, sample: Sample) -> tuple[Message, ...]:
    messages = build_prompt(prompt, sample, ctx.layout)
    assert not isinstance(messages, str), "the benchmark scores chat scorers"
    return messages


def _chat_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


def _run_async(coroutine: Coroutine[Any, Any, T], *, uvloop_loop: bool = False) -> T:
    if uvloop_loop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coroutine)
    return asyncio.run(coroutine)


# -- the engine ------------------------------------------------------------------------------------


def run_engine(ctx: RunContext) -> None:
    """Engine + Evaluator: every chain of a round at once under one window; prompt lists."""
    _run_async(_engine_rounds(ctx), uvloop_loop=True)


async def _engine_rounds(ctx: RunContext) -> None:
    from backends.openai_client import OpenAICompatibleBackend
    from backends.protocol import Capabilities
    from engine.cache import ResponseCache
    from engine.engine import Engine, EngineConfig
    from engine.evaluator import Evaluator, EvaluatorSettings, SampleRecord
    from gpo.task_view import TaskView

    endpoint = ctx.endpoint
    limits = endpoint.api_limits
    if limits is None:
        capabilities = Capabilities(max_concurrency=endpoint.max_num_seqs)
        config = EngineConfig(chat_template=endpoint.chat_template)
    else:
        # A hosted chat API: one conversation per call. The limits are given as the provider
        # enforces them: buckets of `burst_fraction` of a minute.
        capabilities = Capabilities(prompt_lists=False)
        window_s = 60.0 * limits.burst_fraction / endpoint.time_scale
        config = EngineConfig(
            requests_per_minute=limits.requests_per_minute * limits.burst_fraction,
            tokens_per_minute=limits.tokens_per_minute * limits.burst_fraction,
            rate_window_s=window_s,
        )
    backend = OpenAICompatibleBackend(
        endpoint.base_url, endpoint.model, api_key=endpoint.api_key, capabilities=capabilities
    )
    cache = ResponseCache(ctx.cache_path) if ctx.cache_path else None
    try:
        async with Engine(backend, config, cache=cache) as engine:
            evaluator = Evaluator(engine, EvaluatorSettings(layout=ctx.layout))
            for plan in ctx.rounds:
                if ctx.chains_done and ctx.out_of_time():
                    return
                # A round is one evaluator call when every prompt has the same samples (always,
                # except when re-running failed chains: then one call per prompt, all at once).
                same_samples = len({group.samples for group in plan.groups}) == 1
                batches = [plan.groups] if same_samples else [(g,) for g in plan.groups]

                async def evaluate(groups: Sequence[PromptGroup], split: str) -> None:
                    samples = groups[0].samples
                    view = TaskView(ctx.task, {split: samples})
                    prompts = [group.prompt for group in groups]
                    position = {sample.id: i for i, sample in enumerate(samples)}

                    def transcribe(record: SampleRecord) -> None:
                        group = groups[record.prompt_index]
                        chain = group.chains[position[record.sample_id]][0]
                        if record.failure is None:
                            ctx.transcript.record(chain, record.answers, record.score)
                        else:
                            ctx.transcript.fail(chain)
                        ctx.chains_done += 1

                    # Records go straight into the transcript, as every contender's answers do,
                    # rather than being held twice.
                    await evaluator.evaluate(
                        view, prompts, split, on_record=transcribe, keep_records=False
                    )

                await asyncio.gather(*(evaluate(batch, plan.split) for batch in batches))
    finally:
        if cache is not None:
            cache.close()


# -- one request at a time (GPO / OPRO reference with an API scorer) ---------------------------


def run_sequential(ctx: RunContext) -> None:
    """One request at a time; on any API error, sleep 30 s and try again, forever.

    OPRO's scorer sleeps `e.retry_after` if the exception has that attribute, else 30 s; the
    OpenAI SDK's exceptions have none, so it is always 30 s (simulated seconds here).
    """
    import openai

    client = openai.OpenAI(
        base_url=ctx.endpoint.base_url, api_key=ctx.endpoint.api_key, max_retries=0
    )

    def ask(messages: Sequence[Message], max_tokens: int) -> str:
        while True:
            try:
                response = client.chat.completions.create(
                    model=ctx.endpoint.model,
                    messages=_chat_messages(messages),  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=0.0,
                )
                return response.choices[0].message.content or ""
            except openai.APIError:
                time.sleep(ctx.seconds(SEQUENTIAL_RETRY_S))

    try:
        for plan in ctx.rounds:
            for group in plan.groups:
                for chain, sample in group.chains:
                    if ctx.chains_done and ctx.out_of_time():
                        return
                    first = _first_turn(ctx, group.prompt, sample)
                    answers = [ask(first, FIRST_TURN_PARAMS.max_tokens)]
                    second = ctx.conversation(first, answers[0], sample)
                    if second is not None:
                        answers.append(ask(second, FOLLOW_UP_PARAMS.max_tokens))
                    ctx.finish(chain, sample, answers)
    finally:
        client.close()


# -- one candidate's samples per batch (GPO reference with vLLM) -------------------------------


def run_gpo_vllm(ctx: RunContext) -> None:
    """Per candidate: all first turns as one offline batch, then all second turns as another.

    The reference calls `LLM.generate` with the rendered prompts of one candidate; over HTTP the
    same batch is one `/v1/completions` call with a prompt list, answered when all are done.
    """
    import openai

    render = get_chat_template(ctx.endpoint.chat_template)
    client = openai.OpenAI(
        base_url=ctx.endpoint.base_url, api_key=ctx.endpoint.api_key, max_retries=0
    )

    def generate(prompts: list[str], max_tokens: int) -> list[str]:
        response = client.completions.create(
            model=ctx.endpoint.model, prompt=prompts, max_tokens=max_tokens, temperature=0.0
        )
        texts = [""] * len(prompts)
        for choice in response.choices:
            texts[choice.index] = choice.text
        return texts

    try:
        for plan in ctx.rounds:
            for group in plan.groups:
                if ctx.chains_done and ctx.out_of_time():
                    return
                samples = group.samples
                firsts = [_first_turn(ctx, group.prompt, sample) for sample in samples]
                try:
                    first_answers = generate(
                        [render(m) for m in firsts], FIRST_TURN_PARAMS.max_tokens
                    )
                    seconds = [
                        ctx.conversation(m, a, sample)
                        for m, a, sample in zip(firsts, first_answers, samples, strict=True)
                    ]
                    pending = [i for i, c in enumerate(seconds) if c is not None]
                    second_answers = (
                        generate(
                            [render(seconds[i]) for i in pending],  # type: ignore[arg-type]
                            FOLLOW_UP_PARAMS.max_tokens,
                        )
                        if pending
                        else []
                    )
                except openai.APIError:
                    for chain, _ in group.chains:
                        ctx.fail(chain)
                    continue
                by_sample = dict(zip(pending, second_answers, strict=True))
                for s, (chain, sample) in enumerate(group.chains):
                    answers = [first_answers[s]]
                    if s in by_sample:
                        answers.append(by_sample[s])
                    ctx.finish(chain, sample, answers)
    finally:
        client.close()


# -- a thread pool of 8 over samples (DSPy Evaluate) -------------------------------------------


def run_dspy_threads(ctx: RunContext, cache: dict[str, str] | None = None) -> None:
    """Per candidate, a pool of 8 threads over the samples; each runs the two-turn program.

    `cache` plays DSPy's in-memory LM cache (key: the request serialised with sorted keys).
    """
    import openai

    client = openai.OpenAI(
        base_url=ctx.endpoint.base_url, api_key=ctx.endpoint.api_key, max_retries=DSPY_RETRIES
    )

    def lm(messages: Sequence[Message], max_tokens: int) -> str:
        request = {
            "model": ctx.endpoint.model,
            "messages": _chat_messages(messages),
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        key = json.dumps(request, sort_keys=True) if cache is not None else ""
        if cache is not None and key in cache:
            return cache[key]
        response = client.chat.completions.create(**request)  # type: ignore[call-overload]
        text = response.choices[0].message.content or ""
        if cache is not None:
            cache[key] = text
        return text

    def program(prompt: str, sample: Sample) -> list[str]:
        first = _first_turn(ctx, prompt, sample)
        answers = [lm(first, FIRST_TURN_PARAMS.max_tokens)]
        second = ctx.conversation(first, answers[0], sample)
        if second is not None:
            answers.append(lm(second, FOLLOW_UP_PARAMS.max_tokens))
        return answers

    try:
        for plan in ctx.rounds:
            for group in plan.groups:
                if ctx.chains_done and ctx.out_of_time():
                    return
                with ThreadPoolExecutor(max_workers=DSPY_THREADS) as pool:
                    futures = [pool.submit(program, group.prompt, s) for _, s in group.chains]
                    for future, (chain, sample) in zip(futures, group.chains, strict=True):
                        try:
                            ctx.finish(chain, sample, future.result())
                        except openai.APIError:
                            ctx.fail(chain)
    finally:
        client.close()


# -- num_concurrent semaphore + tenacity (lm-evaluation-harness local-completions) -------------


def run_lm_eval(ctx: RunContext) -> None:
    """Per candidate, one harness pass per turn: all requests under a semaphore of 32, each with
    tenacity (3 attempts, exponential wait 1-10 s, no Retry-After); one aiohttp session a pass.

    `local-completions` sends ChatML-rendered prompts to /v1/completions; against a hosted chat
    API (W3) the harness's chat-completions model sends messages instead.
    """
    _run_async(_lm_eval_candidates(ctx))


async def _lm_eval_candidates(ctx: RunContext) -> None:
    import aiohttp
    from tenacity import retry, stop_after_attempt, wait_exponential

    endpoint = ctx.endpoint
    chat = endpoint.api_limits is not None
    render = get_chat_template(endpoint.chat_template)
    url = f"{endpoint.base_url}/chat/completions" if chat else f"{endpoint.base_url}/completions"
    header = {"Authorization": f"Bearer {endpoint.api_key}"}

    def payload(messages: Sequence[Message], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": endpoint.model,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": 1234,
        }
        if chat:
            body["messages"] = _chat_messages(messages)
        else:
            body["prompt"] = render(messages)
        return body

    async def model_call(
        session: aiohttp.ClientSession, sem: asyncio.Semaphore, body: dict[str, Any]
    ) -> str:
        async with sem, session.post(url, json=body, headers=header) as response:
            response.raise_for_status()
            outputs = await response.json()
        choice = outputs["choices"][0]
        return choice["message"]["content"] if chat else choice["text"]

    async def harness_pass(requests: list[tuple[int, dict[str, Any]]]) -> dict[int, str | None]:
        # The harness sorts requests by length, longest first, and gathers them all.
        requests = sorted(requests, key=lambda item: -len(json.dumps(item[1])))
        connector = aiohttp.TCPConnector(limit=LM_EVAL_CONCURRENCY)
        sem = asyncio.Semaphore(LM_EVAL_CONCURRENCY)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=300)
        ) as session:
            retrying = retry(
                stop=stop_after_attempt(LM_EVAL_ATTEMPTS),
                wait=wait_exponential(
                    multiplier=ctx.seconds(0.5), min=ctx.seconds(1.0), max=ctx.seconds(10.0)
                ),
                reraise=True,
            )(model_call)
            tasks = [asyncio.create_task(retrying(session, sem, body)) for _, body in requests]
            # The harness would abort the whole run on the first request that fails for good;
            # here the chain is counted as failed and the run goes on.
            outputs = await asyncio.gather(*tasks, return_exceptions=True)
        return {
            index: (None if isinstance(output, BaseException) else output)
            for (index, _), output in zip(requests, outputs, strict=True)
        }

    for plan in ctx.rounds:
        for group in plan.groups:
            if ctx.chains_done and ctx.out_of_time():
                return
            samples = group.samples
            firsts = [_first_turn(ctx, group.prompt, sample) for sample in samples]
            first_answers = await harness_pass(
                [(s, payload(m, FIRST_TURN_PARAMS.max_tokens)) for s, m in enumerate(firsts)]
            )
            seconds: dict[int, tuple[Message, ...]] = {}
            for s, sample in enumerate(samples):
                answer = first_answers[s]
                if answer is not None:
                    conversation = ctx.conversation(firsts[s], answer, sample)
                    if conversation is not None:
                        seconds[s] = conversation
            second_answers = await harness_pass(
                [(s, payload(m, FOLLOW_UP_PARAMS.max_tokens)) for s, m in seconds.items()]
            )
            for s, (chain, sample) in enumerate(group.chains):
                first_answer = first_answers[s]
                if first_answer is None or (s in seconds and second_answers[s] is None):
                    ctx.fail(chain)
                    continue
                answers = [first_answer]
                if s in seconds:
                    answers.append(second_answers[s])  # type: ignore[arg-type]
                ctx.finish(chain, sample, answers)


# -- AsyncOpenAI + asyncio.gather under a semaphore (what users write themselves) ---------------


def run_async_openai(ctx: RunContext) -> None:
    """All chains of a round gathered at once; a semaphore of 64 chains; the SDK's retries."""
    _run_async(_async_openai_rounds(ctx))


async def _async_openai_rounds(ctx: RunContext) -> None:
    import openai

    endpoint = ctx.endpoint
    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key)
    sem = asyncio.Semaphore(ASYNC_OPENAI_CONCURRENCY)

    async def ask(messages: Sequence[Message], max_tokens: int) -> str:
        response = await client.chat.completions.create(
            model=endpoint.model,
            messages=_chat_messages(messages),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
        )
        return response.choices[0].message.content or ""

    async def score(chain: int, prompt: str, sample: Sample) -> None:
        async with sem:
            try:
                first = _first_turn(ctx, prompt, sample)
                answers = [await ask(first, FIRST_TURN_PARAMS.max_tokens)]
                second = ctx.conversation(first, answers[0], sample)
                if second is not None:
                    answers.append(await ask(second, FOLLOW_UP_PARAMS.max_tokens))
            except openai.APIError:
                ctx.fail(chain)
                return
        ctx.finish(chain, sample, answers)

    try:
        for plan in ctx.rounds:
            if ctx.chains_done and ctx.out_of_time():
                return
            await asyncio.gather(
                *(
                    score(chain, group.prompt, sample)
                    for group in plan.groups
                    for chain, sample in group.chains
                )
            )
    finally:
        await client.close()


# -- the OpenAI cookbook's parallel processor ----------------------------------------------------


@dataclass(slots=True)
class _CookbookStatus:
    in_progress: int = 0
    rate_limit_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass(slots=True)
class _CookbookRequest:
    chain: int
    sample: Sample
    messages: tuple[Message, ...]
    max_tokens: int
    answers: list[str]
    token_consumption: int
    attempts_left: int = COOKBOOK_MAX_ATTEMPTS


def cookbook_token_consumption(messages: Sequence[Message], max_tokens: int) -> int:
    """The cookbook's estimate for a chat request: 4 per message, its texts, 2, max_tokens x n.

    The cookbook counts with tiktoken; here the server's own tokenizer is used (its best case).
    """
    from backends.simulated.tokens import count_tokens

    tokens = 2
    for role, content in messages:
        tokens += 4 + count_tokens(role) + count_tokens(content)
    return tokens + max_tokens


def run_cookbook(ctx: RunContext) -> None:
    """RPM/TPM capacity counters refilled each 1 ms tick; a 15 s pause after any 429; up to 5
    attempts. The second turn of a chain is queued behind retries, ahead of new first turns.
    Capacities count simulated minutes: the refill is scaled by the server's time_scale."""
    _run_async(_cookbook_rounds(ctx))


async def _cookbook_rounds(ctx: RunContext) -> None:
    import aiohttp

    endpoint = ctx.endpoint
    limits = endpoint.api_limits
    rpm = float(limits.requests_per_minute if limits else 3_500)
    tpm = float(limits.tokens_per_minute if limits else 10_000_000)
    scale = endpoint.time_scale
    url = f"{endpoint.base_url}/chat/completions"
    header = {"Authorization": f"Bearer {endpoint.api_key}"}
    pause_s = ctx.seconds(COOKBOOK_PAUSE_AFTER_429_S)

    for plan in ctx.rounds:
        if ctx.chains_done and ctx.out_of_time():
            return
        status = _CookbookStatus()
        retry_queue: asyncio.Queue[_CookbookRequest] = asyncio.Queue()
        follow_ups: deque[_CookbookRequest] = deque()
        new_requests = (
            (chain, group.prompt, sample) for group in plan.groups for chain, sample in group.chains
        )
        available_requests, available_tokens = rpm, tpm
        last_update = time.time()
        next_request: _CookbookRequest | None = None
        file_not_finished = True
        tasks: set[asyncio.Task[None]] = set()

        async def call_api(
            request: _CookbookRequest,
            session: aiohttp.ClientSession,
            status: _CookbookStatus,
            retry_queue: asyncio.Queue[_CookbookRequest],
            follow_ups: deque[_CookbookRequest],
        ) -> None:
            body = {
                "model": endpoint.model,
                "messages": _chat_messages(request.messages),
                "max_tokens": request.max_tokens,
                "temperature": 0.0,
            }
            error = False
            try:
                async with session.post(url, headers=header, json=body) as response:
                    data = await response.json()
                if "error" in data:
                    error = True
                    if "rate limit" in str(data["error"].get("message", "")).lower():
                        status.time_of_last_rate_limit_error = time.time()
                        status.rate_limit_errors += 1
            except Exception:
                error = True
            if error:
                if request.attempts_left:
                    retry_queue.put_nowait(request)
                else:
                    status.in_progress -= 1
                    ctx.fail(request.chain)
                return
            text = data["choices"][0]["message"]["content"] or ""
            request.answers.append(text)
            conversation = (
                ctx.conversation(request.messages, text, request.sample)
                if len(request.answers) == 1
                else None
            )
            if conversation is None:
                status.in_progress -= 1
                ctx.finish(request.chain, request.sample, request.answers)
                return
            follow_ups.append(
                _CookbookRequest(
                    request.chain,
                    request.sample,
                    conversation,
                    FOLLOW_UP_PARAMS.max_tokens,
                    request.answers,
                    cookbook_token_consumption(conversation, FOLLOW_UP_PARAMS.max_tokens),
                )
            )

        async with aiohttp.ClientSession() as session:
            while True:
                if next_request is None:
                    if not retry_queue.empty():
                        next_request = retry_queue.get_nowait()
                    elif follow_ups:
                        next_request = follow_ups.popleft()
                    elif file_not_finished:
                        try:
                            chain, prompt, sample = next(new_requests)
                        except StopIteration:
                            file_not_finished = False
                        else:
                            first = _first_turn(ctx, prompt, sample)
                            next_request = _CookbookRequest(
                                chain,
                                sample,
                                first,
                                FIRST_TURN_PARAMS.max_tokens,
                                [],
                                cookbook_token_consumption(first, FIRST_TURN_PARAMS.max_tokens),
                            )
                            status.in_progress += 1
                now = time.time()
                elapsed_minutes = (now - last_update) * scale / 60.0
                available_requests = min(available_requests + rpm * elapsed_minutes, rpm)
                available_tokens = min(available_tokens + tpm * elapsed_minutes, tpm)
                last_update = now
                if next_request is not None and (
                    available_requests >= 1 and available_tokens >= next_request.token_consumption
                ):
                    available_requests -= 1
                    available_tokens -= next_request.token_consumption
                    next_request.attempts_left -= 1
                    task = asyncio.create_task(
                        call_api(next_request, session, status, retry_queue, follow_ups)
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    next_request = None
                if status.in_progress == 0 and not file_not_finished and next_request is None:
                    break
                await asyncio.sleep(COOKBOOK_TICK_S)
                since = time.time() - status.time_of_last_rate_limit_error
                if since < pause_s:
                    await asyncio.sleep(pause_s - since)


# -- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    pattern: str
    unit: str
    """Where a run may stop early: after a "chain", a "candidate" or a "round"."""
    run: Callable[[RunContext], None]
    has_cache: bool = False


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender(
            "engine",
            "this project: Engine + Evaluator, one window, prompt lists of ChatML chats",
            "round",
            run_engine,
            has_cache=True,
        ),
        Contender(
            "sequential",
            "GPO / OPRO reference, API scorer: one request at a time",
            "chain",
            run_sequential,
        ),
        Contender(
            "gpo-vllm",
            "GPO reference with vLLM: one candidate's samples per batch, candidates in turn",
            "candidate",
            run_gpo_vllm,
        ),
        Contender(
            "dspy-threads",
            f"DSPy Evaluate: thread pool of {DSPY_THREADS} over samples, candidates in turn",
            "candidate",
            run_dspy_threads,
            has_cache=True,
        ),
        Contender(
            "lm-eval",
            f"lm-eval local-completions: semaphore {LM_EVAL_CONCURRENCY}, tenacity "
            f"{LM_EVAL_ATTEMPTS} attempts, candidates in turn",
            "candidate",
            run_lm_eval,
        ),
        Contender(
            "async-openai",
            f"AsyncOpenAI + asyncio.gather under a semaphore of {ASYNC_OPENAI_CONCURRENCY}",
            "round",
            run_async_openai,
        ),
        Contender(
            "cookbook",
            "OpenAI cookbook parallel processor: RPM/TPM buckets, 1 ms tick, 15 s pause on 429",
            "round",
            run_cookbook,
        ),
    )
}


def contenders_for(workload: Workload) -> list[str]:
    names = ["engine", "sequential", "gpo-vllm", "dspy-threads", "lm-eval", "async-openai"]
    if workload.server == "api":
        # Hosted chat APIs take one conversation per call: the vLLM batch pattern has no
        # counterpart there, and the cookbook's processor is the pattern made for them.
        names = [n for n in names if n != "gpo-vllm"] + ["cookbook"]
    return names


# =================================================================================================
# Measurement (one run, in a worker process)
# =================================================================================================


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One measured run, passed to a worker process as JSON."""

    workload: str
    scale: str
    full: bool
    contender: str
    endpoint: dict[str, Any]
    budget_s: float
    chain_cap: int | None = None
    cache_path: str | None = None
    warm_up_first: bool = False
    warm_up_process: bool = False


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run measured (before extrapolation)."""

    contender: str
    workload: str
    scored_prompts_total: int
    scored_prompts_run: int
    wall_s: float
    client_cpu_s: float
    peak_memory_mb: float
    memory_method: str
    http_requests: int | None
    rate_limited_429: int | None
    answered_requests: int | None
    failures: int
    rerun_passes: int
    unanswered: int
    answered_turns: int
    digests: list[str | None]


def _read_status_kb(name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


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


CLIENT_MODULES = (
    "aiohttp",
    "openai",
    "tenacity",
    "uvloop",
    "backends.openai_client",
    "backends.simulated.tokens",
    "engine.cache",
    "engine.engine",
    "engine.evaluator",
    "gpo.task_view",
)


def preload_client_modules() -> None:
    """Import every contender's libraries before measuring, so no run pays for imports."""
    for name in CLIENT_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def measure(spec: RunSpec, task: Task | None = None) -> RunResult:
    """Run one contender on one workload and measure it."""
    preload_client_modules()
    scale = SCALES[spec.scale]
    task = task or load_task(TASK_NAME)
    workload = build_workloads(scale, full=spec.full)[spec.workload]
    endpoint = Endpoint.from_json(spec.endpoint, os.environ.get("OPENAI_API_KEY", "sk-bench"))
    contender = CONTENDERS[spec.contender]
    rounds = plan_rounds(workload, task, spec.chain_cap)
    total = workload.scored_prompts
    dspy_cache: dict[str, str] | None = {} if spec.contender == "dspy-threads" else None

    def context(budget_s: float) -> RunContext:
        return RunContext(
            task,
            rounds,
            endpoint,
            Transcript(total),
            time.perf_counter() + budget_s,
            cache_path=spec.cache_path,
        )

    def launch(ctx: RunContext) -> None:
        if dspy_cache is not None and spec.warm_up_first:
            run_dspy_threads(ctx, dspy_cache)
        else:
            contender.run(ctx)

    if spec.warm_up_first:
        launch(context(float("inf")))
    if spec.warm_up_process:
        # Bounded by the run budget like the measured run, so slow patterns warm up briefly.
        warm_rounds = warm_up_rounds(workload, task)
        launch(
            dataclasses.replace(
                context(spec.budget_s),
                rounds=warm_rounds,
                transcript=Transcript(sum(plan.chains for plan in warm_rounds)),
            )
        )
    ctx = context(spec.budget_s)
    gc.collect()
    peak_reset = _reset_peak_rss()
    rss_before_kb = _read_status_kb("VmRSS") or 0
    maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts_before = server_counts(endpoint.metrics_url)
    cpu_started = time.process_time()
    started = time.perf_counter()
    launch(ctx)
    # A user re-runs what failed (lm-eval's cache, the cookbook's error file make that easy);
    # the time counts, so that every contender ends with every request answered.
    passes = 0
    rerun_deadline = started + RERUN_TIME_LIMIT_S
    while (
        ctx.transcript.unanswered
        and passes < MAX_RERUN_PASSES
        and time.perf_counter() < rerun_deadline
    ):
        passes += 1
        rerun = dataclasses.replace(
            ctx,
            rounds=failed_chains(rounds, ctx.transcript),
            deadline=float("inf"),
            chains_done=0,
        )
        launch(rerun)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    counts_after = server_counts(endpoint.metrics_url)
    if peak_reset and (peak_kb := _read_status_kb("VmHWM")) is not None:
        peak_mb = max(0, peak_kb - rss_before_kb) / 1024
        method = "VmHWM - VmRSS before (clear_refs)"
    else:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = max(0, maxrss - max(rss_before_kb, maxrss_before_kb)) / 1024
        method = "ru_maxrss delta"
    http = limited = answered = None
    if counts_before is not None and counts_after is not None:
        http, limited, answered = (a - b for a, b in zip(counts_after, counts_before, strict=True))
    transcript = ctx.transcript
    return RunResult(
        spec.contender,
        spec.workload,
        total,
        ctx.chains_done,
        wall,
        cpu,
        peak_mb,
        method,
        http,
        limited,
        answered,
        transcript.failed,
        passes,
        len(transcript.unanswered),
        sum(len(a) for a in transcript.answers if a is not None),
        transcript.digests(),
    )


def worker_main(spec_path: Path) -> int:
    """`bench.py --worker PATH`: run the RunSpec in PATH, write the RunResult to PATH.result."""
    spec = RunSpec(**json.loads(spec_path.read_text()))
    result = measure(spec)
    spec_path.with_suffix(".result").write_text(json.dumps(dataclasses.asdict(result)))
    return 0


def run_in_worker(spec: RunSpec, in_process: bool, task: Task) -> RunResult:
    if in_process:
        return measure(spec, task)
    with tempfile.TemporaryDirectory(prefix="gpo-bench-run-") as folder:
        spec_path = Path(folder) / "spec.json"
        spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
        completed = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"worker for {spec.contender} on {spec.workload} failed:\n"
                f"{completed.stderr[-3000:]}"
            )
        return RunResult(**json.loads(spec_path.with_suffix(".result").read_text()))


# =================================================================================================
# Results: medians, extrapolation, ratios
# =================================================================================================


@dataclass(frozen=True, slots=True)
class ContenderMetrics:
    """One table row: medians over the repeats, extrapolated to the whole workload if needed."""

    contender: str
    pattern: str
    runs: int
    scored_prompts: int
    measured_scored_prompts: int
    wall_s: float
    scored_prompts_per_s: float
    percent_of_limit: float | None
    time_vs_engine: float | None
    client_cpu_s: float
    client_cpu_us_per_scored_prompt: float
    http_requests: int | None
    rate_limited_429: int | None
    answered_requests: int | None
    failures: int
    unanswered: int
    peak_memory_mb: float
    extrapolated: bool
    answers_vs_engine: str
    note: str = ""


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def summarise_runs(
    name: str,
    runs: Sequence[RunResult],
    limit_s: float | None,
    engine_wall_s: float | None,
    answers: str,
    *,
    api_limits: ApiLimits | None = None,
    time_scale: float = 1.0,
    note: str = "",
) -> ContenderMetrics:
    total = runs[0].scored_prompts_total
    factors = [r.scored_prompts_total / max(1, r.scored_prompts_run) for r in runs]
    wall = _median(r.wall_s * f for r, f in zip(runs, factors, strict=True))
    cpu = _median(r.client_cpu_s * f for r, f in zip(runs, factors, strict=True))

    def scaled(values: Sequence[int | None]) -> int | None:
        if any(v is None for v in values):
            return None
        return round(_median(v * f for v, f in zip(values, factors, strict=True)))  # type: ignore[operator]

    http = scaled([r.http_requests for r in runs])
    limited = scaled([r.rate_limited_429 for r in runs])
    answered = scaled([r.answered_requests for r in runs])
    failures = scaled([r.failures for r in runs]) or 0
    useful = scaled([r.answered_turns for r in runs]) or 0
    percent = None
    if api_limits is not None:
        # Requests that carry the workload's answers (one per chat turn); repeated work done by
        # re-runs is not counted, so a contender cannot score by spending the allowance twice.
        per_s = api_limits.requests_per_minute * time_scale / 60.0
        percent = 100.0 * useful / (api_limits.request_burst + per_s * wall)
    elif limit_s is not None and wall > 0:
        percent = 100.0 * limit_s / wall
    extrapolated = any(r.scored_prompts_run < r.scored_prompts_total for r in runs)
    return ContenderMetrics(
        contender=name,
        pattern=CONTENDERS[name].pattern,
        runs=len(runs),
        scored_prompts=total,
        measured_scored_prompts=round(_median(r.scored_prompts_run for r in runs)),
        wall_s=wall,
        scored_prompts_per_s=total / wall if wall > 0 else float("inf"),
        percent_of_limit=percent,
        time_vs_engine=(wall / engine_wall_s) if engine_wall_s else None,
        client_cpu_s=cpu,
        client_cpu_us_per_scored_prompt=cpu / total * 1e6,
        http_requests=http,
        rate_limited_429=limited,
        answered_requests=answered,
        failures=failures,
        unanswered=max(r.unanswered for r in runs),
        peak_memory_mb=_median(r.peak_memory_mb for r in runs),
        extrapolated=extrapolated,
        answers_vs_engine=answers,
        note=note,
    )


def compare_answers(reference: Sequence[str | None], other: Sequence[str | None]) -> str:
    """ "same" when every chain both answered has the same answers; else how many differ."""
    both = [(a, b) for a, b in zip(reference, other, strict=True) if a is not None and b]
    differ = sum(1 for a, b in both if a != b)
    if not both:
        return "none to compare"
    return "same" if differ == 0 else f"{differ} of {len(both)} differ"


@dataclass(slots=True)
class WorkloadReport:
    key: str
    title: str
    description: str
    server: str
    limit_s: float | None
    limit_note: str
    rows: list[ContenderMetrics] = field(default_factory=list)

    def row(self, name: str) -> ContenderMetrics | None:
        return next((r for r in self.rows if r.contender == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "description": self.description,
            "server": self.server,
            "theoretical_limit_s": self.limit_s,
            "limit_note": self.limit_note,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


# =================================================================================================
# Orchestration
# =================================================================================================


@dataclass(frozen=True, slots=True)
class BenchSettings:
    scale: Scale
    repeat: int
    workloads: tuple[str, ...]
    full: bool
    budget_s: float
    url: str | None = None
    model: str | None = None
    chat_template: str = "chatml"
    max_num_seqs: int = 256
    contenders: tuple[str, ...] | None = None


def select_workloads(spec: str | None, available: Sequence[str]) -> tuple[str, ...]:
    if not spec:
        return tuple(available)
    chosen: list[str] = []
    for name in (part.strip().upper() for part in spec.split(",") if part.strip()):
        matches = [key for key in available if key == name or key.startswith(name + "-")]
        if not matches:
            raise SystemExit(f"--workloads: unknown workload {name!r}; known: W1-W6")
        chosen.extend(m for m in matches if m not in chosen)
    return tuple(chosen)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmark(settings: BenchSettings, task: Task) -> list[WorkloadReport]:
    scale = settings.scale
    workloads = build_workloads(scale, full=settings.full)
    answer_key = answer_key_for(task)
    servers: dict[str, ServerHandle] = {}
    reports: list[WorkloadReport] = []
    temp_dir = Path(tempfile.mkdtemp(prefix="gpo-bench-"))
    cold_cache: str | None = None
    try:
        for key in settings.workloads:
            workload = workloads[key]
            real = settings.url is not None
            if real and workload.server in ("api", "zero"):
                _log(f"{key}: skipped against a real endpoint (needs the simulated server's mode)")
                continue
            server: ServerHandle | None = None
            if real:
                endpoint = Endpoint(
                    settings.url or "",
                    settings.model or "",
                    os.environ.get("OPENAI_API_KEY", "EMPTY"),
                    settings.chat_template,
                    settings.max_num_seqs,
                    1.0,
                    simulated=False,
                )
            else:
                if workload.server not in servers:
                    servers[workload.server] = ServerHandle(workload.server, scale, answer_key)
                server = servers[workload.server]
                endpoint = server.endpoint()
            limit_s, limit_note = None, ""
            if key == "W4":
                limit_note = "a warm cache leaves the server no work: no limit applies"
            elif server is not None and workload.server == "h100":
                limit_s = theoretical_makespan_s(
                    server.config, plan_rounds(workload, task), task, answer_key
                )
                limit_note = (
                    f"theoretical limit {limit_s:.2f} s = "
                    f"{workload.scored_prompts / limit_s:,.0f} scored prompts/s "
                    "(rounds in sequence, each fully queued at t = 0)"
                )
            elif endpoint.api_limits is not None:
                limits = endpoint.api_limits
                limit_note = (
                    "% of limit = the workload's requests (one per chat turn) / requests "
                    "the limits allowed during the run "
                    f"({limits.request_burst:g} + {limits.requests_per_minute} per simulated "
                    "minute)"
                )
            report = WorkloadReport(
                key,
                workload.title,
                workload.description,
                describe_server(server.config) if server else f"{settings.url} ({settings.model})",
                limit_s,
                limit_note,
            )
            names = [
                n
                for n in contenders_for(workload)
                if settings.contenders is None or n in settings.contenders or n == "engine"
            ]
            runs: dict[str, list[RunResult]] = {n: [] for n in names}
            budget_s = (
                scale.zero_latency_budget_s if workload.server == "zero" else settings.budget_s
            )
            copied_from_w1: set[str] = set()
            for repeat in range(settings.repeat):
                for name in names:
                    if key == "W4" and not CONTENDERS[name].has_cache:
                        w1 = next((r for r in reports if r.key == "W1"), None)
                        if w1 is not None and w1.row(name) is not None:
                            copied_from_w1.add(name)
                            continue
                    cache_path = None
                    warm_up = False
                    if name == "engine" and key in ("W1", "W4"):
                        if key == "W1":
                            cache_path = str(temp_dir / f"w1-{repeat}.sqlite")
                            cold_cache = cold_cache or cache_path
                        else:
                            cache_path = cold_cache or str(temp_dir / "w4.sqlite")
                            warm_up = cold_cache is None
                    elif name == "dspy-threads" and key == "W4":
                        warm_up = True
                    if server is not None:
                        server.fresh()
                    else:
                        reset_prefix_cache(endpoint)
                    spec = RunSpec(
                        key,
                        scale.name,
                        settings.full,
                        name,
                        endpoint.to_json(),
                        budget_s if name != "engine" else UNLIMITED_BUDGET_S,
                        chain_cap=_chain_cap(workload, name, scale.round_cap),
                        cache_path=cache_path,
                        warm_up_first=warm_up,
                        warm_up_process=workload.server == "zero",
                    )
                    _log(f"{key} run {repeat + 1}/{settings.repeat}: {name} ...")
                    result = run_in_worker(spec, scale.in_process, task)
                    runs[name].append(result)
                    _log(
                        f"    {result.wall_s:.2f} s for {result.scored_prompts_run:,} of "
                        f"{result.scored_prompts_total:,} scored prompts, "
                        f"cpu {result.client_cpu_s:.2f} s, failures {result.failures}"
                    )
                    if name == "engine" and key == "W4" and warm_up:
                        cold_cache = cache_path
            engine_runs = runs.get("engine") or []
            engine_wall = None
            if engine_runs:
                engine_wall = _median(
                    r.wall_s * r.scored_prompts_total / max(1, r.scored_prompts_run)
                    for r in engine_runs
                )
            reference = engine_runs[0].digests if engine_runs else None
            for name in names:
                if name in copied_from_w1:
                    w1_row = next(r for r in reports if r.key == "W1").row(name)
                    assert w1_row is not None
                    report.rows.append(
                        dataclasses.replace(
                            w1_row,
                            percent_of_limit=None,
                            time_vs_engine=w1_row.wall_s / engine_wall if engine_wall else None,
                            note="no cache in this pattern: W1's figures (not re-run)",
                        )
                    )
                    continue
                name_runs = runs[name]
                if not name_runs:
                    continue
                answers = "reference"
                if name != "engine" and reference is not None:
                    answers = compare_answers(reference, name_runs[0].digests)
                notes = []
                if any(r.scored_prompts_run < r.scored_prompts_total for r in name_runs):
                    notes.append(
                        f"extrapolated from the first {name_runs[0].scored_prompts_run:,} "
                        f"scored prompts (run budget {budget_s:g} s)"
                    )
                if any(r.rerun_passes for r in name_runs):
                    notes.append(
                        "gave up on some chains (column fail); re-ran them until answered ("
                        + ", ".join(str(r.rerun_passes) for r in name_runs)
                        + " extra passes), time included"
                    )
                if any(r.unanswered for r in name_runs):
                    notes.append(
                        "still unanswered after re-runs: "
                        + ", ".join(str(r.unanswered) for r in name_runs)
                    )
                note = "; ".join(notes)
                report.rows.append(
                    summarise_runs(
                        name,
                        name_runs,
                        limit_s,
                        engine_wall,
                        answers,
                        api_limits=endpoint.api_limits,
                        time_scale=endpoint.time_scale,
                        note=note,
                    )
                )
            reports.append(report)
            print(render_table(report), flush=True)
    finally:
        for server in servers.values():
            server.stop()
        for path in temp_dir.glob("*"):
            path.unlink(missing_ok=True)
        temp_dir.rmdir()
    return reports


def _chain_cap(workload: Workload, contender: str, cap: int) -> int | None:
    """Patterns that gather a whole round at once cannot stop early: on the big zero-latency
    workloads they are measured on a prefix of whole prompts instead."""
    if contender == "engine" or CONTENDERS[contender].unit != "round":
        return None
    if workload.server != "zero" or workload.scored_prompts <= cap:
        return None
    return cap


# =================================================================================================
# Report: tables and the Bar
# =================================================================================================

COLUMNS = (
    ("contender", 13),
    ("wall s", 9),
    ("prompts/s", 10),
    ("% limit", 8),
    ("x engine", 9),
    ("cpu s", 8),
    ("cpu us/p", 9),
    ("HTTP", 8),
    ("429s", 6),
    ("fail", 6),
    ("peak MB", 8),
    ("answers", 10),
)


def _fmt(value: float | int | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _row_cells(row: ContenderMetrics) -> list[str]:
    mark = "~" if row.extrapolated else ""
    return [
        row.contender,
        mark + _fmt(row.wall_s, ".2f"),
        mark + _fmt(row.scored_prompts_per_s, ",.0f"),
        _fmt(row.percent_of_limit, ".1f"),
        _fmt(row.time_vs_engine, ".2f"),
        mark + _fmt(row.client_cpu_s, ".2f"),
        _fmt(row.client_cpu_us_per_scored_prompt, ",.0f"),
        mark + _fmt(row.http_requests, ","),
        mark + _fmt(row.rate_limited_429, ","),
        mark + _fmt(row.failures, ",") + ("!" if row.unanswered else ""),
        _fmt(row.peak_memory_mb, ".1f"),
        row.answers_vs_engine,
    ]


def render_table(report: WorkloadReport) -> str:
    lines = [
        "",
        f"== {report.key}: {report.title} ==",
        f"work:   {report.description} ({report.rows[0].scored_prompts:,} scored prompts)"
        if report.rows
        else f"work:   {report.description}",
        f"server: {report.server}",
    ]
    if report.limit_note:
        lines.append(f"limit:  {report.limit_note}")
    header = "  ".join(name.rjust(width) for name, width in COLUMNS)
    lines.append(header)
    lines.append("-" * len(header))
    for row in report.rows:
        cells = _row_cells(row)
        lines.append(
            "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))
        )
    for row in report.rows:
        if row.note:
            lines.append(f"  {row.contender}: {row.note}")
    if any(r.extrapolated for r in report.rows):
        lines.append("  ~ extrapolated linearly from a measured prefix")
    if any(r.unanswered for r in report.rows):
        lines.append("  ! some chains were never answered: that row did less work")
    return "\n".join(lines)


def render_markdown(
    reports: Sequence[WorkloadReport], parameters: dict[str, Any], bar: Sequence[BarLine]
) -> str:
    out = ["# bench.py results", ""]
    out += [f"- {k}: {v}" for k, v in parameters.items()]
    for report in reports:
        out += ["", f"## {report.key}: {report.title}", "", f"Work: {report.description}."]
        out.append(f"Server: {report.server}.")
        if report.limit_note:
            out.append(f"Limit: {report.limit_note}.")
        out += ["", "| " + " | ".join(name for name, _ in COLUMNS) + " |"]
        out.append("|" + "---|" * len(COLUMNS))
        for row in report.rows:
            out.append("| " + " | ".join(_row_cells(row)) + " |")
        notes = [f"- {row.contender}: {row.note}" for row in report.rows if row.note]
        if notes:
            out += ["", *notes]
    out += ["", "## Bar", ""]
    out += [f"- {line.render()}" for line in bar]
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class BarLine:
    name: str
    passed: bool | None
    figure: str

    def render(self) -> str:
        verdict = "n/a " if self.passed is None else ("PASS" if self.passed else "FAIL")
        return f"{verdict}  {self.name}: {self.figure}"


def _engine_vs_others(report: WorkloadReport) -> list[BarLine]:
    engine = report.row("engine")
    if engine is None:
        return []
    key = report.key
    lines = []
    if engine.percent_of_limit is not None:
        lines.append(
            BarLine(
                f"{key} engine >= 90% of the theoretical limit",
                engine.percent_of_limit >= 90.0,
                f"{engine.percent_of_limit:.1f}% ({engine.wall_s:.2f} s vs limit "
                f"{report.limit_s:.2f} s)",
            )
        )
    others = [r for r in report.rows if r.contender != "engine" and r.time_vs_engine]
    if others:
        slowest_margin = min(others, key=lambda r: r.time_vs_engine or 0.0)
        lines.append(
            BarLine(
                f"{key} engine faster than every contender",
                all((r.time_vs_engine or 0.0) > 1.0 for r in others),
                ", ".join(f"{r.contender} {r.time_vs_engine:.2f}x" for r in others)
                + f" (closest: {slowest_margin.contender})",
            )
        )
    references = [r for r in others if r.contender in ("sequential", "gpo-vllm")]
    if references:
        lines.append(
            BarLine(
                f"{key} engine >= 3x faster than both GPO reference patterns",
                all((r.time_vs_engine or 0.0) >= 3.0 for r in references) and len(references) == 2,
                ", ".join(f"{r.contender} {r.time_vs_engine:.2f}x" for r in references)
                + _limit_ceiling(report, references),
            )
        )
    return lines


def _limit_ceiling(report: WorkloadReport, rows: Sequence[ContenderMetrics]) -> str:
    """How much faster than each row the server's limit itself is: no client can beat that."""
    if not report.limit_s:
        return ""
    ceilings = ", ".join(f"{r.contender} {r.wall_s / report.limit_s:.2f}x" for r in rows)
    return f" (at the theoretical limit: {ceilings})"


def bar_lines(reports: Sequence[WorkloadReport], estimate: EstimateCheck | None) -> list[BarLine]:
    by_key = {r.key: r for r in reports}
    lines: list[BarLine] = []
    for key in ("W1", "W2"):
        if key in by_key:
            lines += _engine_vs_others(by_key[key])
    if "W3" in by_key and (engine := by_key["W3"].row("engine")) is not None:
        rate = engine.percent_of_limit
        lines.append(
            BarLine(
                "W3 engine >= 95% of the allowed request rate",
                None if rate is None else rate >= 95.0,
                "-" if rate is None else f"{rate:.1f}%",
            )
        )
        lines.append(BarLine("W3 engine zero failures", engine.failures == 0, f"{engine.failures}"))
        if engine.http_requests:
            share = 100.0 * (engine.rate_limited_429 or 0) / engine.http_requests
            lines.append(
                BarLine(
                    "W3 engine 429s under 1% of requests",
                    share < 1.0,
                    f"{engine.rate_limited_429} of {engine.http_requests} ({share:.2f}%)",
                )
            )
    if "W4" in by_key and (warm := by_key["W4"].row("engine")) is not None:
        lines.append(
            BarLine(
                "W4 zero server requests on a warm cache",
                warm.http_requests == 0,
                f"{warm.http_requests}",
            )
        )
        cold = by_key["W1"].row("engine") if "W1" in by_key else None
        if cold is not None:
            speedup = cold.wall_s / warm.wall_s if warm.wall_s > 0 else float("inf")
            lines.append(
                BarLine(
                    "W4 warm cache >= 20x faster than cold W1",
                    speedup >= 20.0,
                    f"{speedup:,.1f}x ({cold.wall_s:.2f} s -> {warm.wall_s:.3f} s)",
                )
            )
    w5 = [by_key[k] for k in by_key if k.startswith("W5-")]
    w5_engine = [(r, r.row("engine")) for r in w5 if r.row("engine") is not None]
    if len(w5_engine) >= 2:
        base = w5_engine[0][1]
        assert base is not None
        per_prompt = [(r.key, 1e6 * row.wall_s / row.scored_prompts) for r, row in w5_engine]  # type: ignore[union-attr]
        base_us = per_prompt[0][1]
        spread = max(abs(us / base_us - 1.0) for _, us in per_prompt)
        lines.append(
            BarLine(
                "W5 time per scored prompt within +-15% as the work grows",
                spread <= 0.15,
                ", ".join(f"{k} {us:.1f} us" for k, us in per_prompt)
                + f" (largest deviation {100 * spread:.1f}%)",
            )
        )
        sized = [(r, row) for r, row in w5_engine if row.scored_prompts <= 100_000]  # type: ignore[union-attr]
        _, largest = max(sized, key=lambda item: item[1].scored_prompts)  # type: ignore[union-attr]
        assert largest is not None
        lines.append(
            BarLine(
                f"W5 peak memory at {largest.scored_prompts:,} scored prompts under 300 MB",
                largest.peak_memory_mb < 300.0,
                f"{largest.peak_memory_mb:.1f} MB",
            )
        )
    if "W6" in by_key and (engine := by_key["W6"].row("engine")) is not None:
        peer = by_key["W6"].row("async-openai")
        peer_text = f"; AsyncOpenAI {peer.client_cpu_us_per_scored_prompt:,.0f} us" if peer else ""
        lines.append(
            BarLine(
                "W6 client CPU <= 50 us per scored prompt",
                engine.client_cpu_us_per_scored_prompt <= 50.0,
                f"engine {engine.client_cpu_us_per_scored_prompt:.1f} us{peer_text}",
            )
        )
        lines.append(
            BarLine(
                "W6 >= 5,000 scored prompts/s against a zero-service-time server",
                engine.scored_prompts_per_s >= 5_000,
                f"{engine.scored_prompts_per_s:,.0f} scored prompts/s",
            )
        )
    if estimate is not None:
        lines.append(
            BarLine(
                "dry-run estimate within 10% of the ledger's tokens",
                estimate.within(0.10),
                estimate.describe(),
            )
        )
    return lines


# =================================================================================================
# Cost estimate check
# =================================================================================================


@dataclass(frozen=True, slots=True)
class EstimateCheck:
    estimated: dict[str, int]
    measured: dict[str, int]

    def error(self, key: str) -> float:
        measured = self.measured[key]
        return (self.estimated[key] - measured) / measured if measured else 0.0

    def within(self, tolerance: float) -> bool:
        return all(abs(self.error(k)) <= tolerance for k in ("scorer_tokens", "total_tokens"))

    def describe(self) -> str:
        parts = []
        for key in (
            "scorer_calls",
            "optimizer_calls",
            "scorer_tokens",
            "optimizer_tokens",
            "total_tokens",
        ):
            parts.append(
                f"{key} {self.estimated[key]:,} vs {self.measured[key]:,} "
                f"({100 * self.error(key):+.1f}%)"
            )
        return "; ".join(parts)


CHECK_STEPS = 4
CHECK_CANDIDATES = 8
CHECK_DEV = 24
CHECK_TEST = 48


def check_estimate(task: Task) -> EstimateCheck:
    """Estimate a small GPO run dry, run it against the simulated server, compare with the ledger.

    Scorer and optimizer are both the simulated server (zero service time, so the run is quick);
    the estimate uses the server's tokenizer and its expected output lengths.
    """
    from backends.simulated import SimulatedServerConfig, start_server_process
    from backends.simulated.tokens import count_tokens
    from gpo.config import OptimizerConfig
    from gpo.cost_estimate import estimate_for_config, expected_output_tokens

    config = OptimizerConfig(
        steps=CHECK_STEPS,
        candidates=CHECK_CANDIDATES,
        dev_size=CHECK_DEV,
        test_size=CHECK_TEST,
    )
    server_config = SimulatedServerConfig(zero_latency=True)
    estimate = estimate_for_config(
        task,
        config,
        tokenizer=count_tokens,
        first_turn_output_tokens=expected_output_tokens(
            server_config.output_lengths, FIRST_TURN_PARAMS.max_tokens
        ),
        chat_template="chatml",
    )
    with start_server_process(server_config, answer_key=answer_key_for(task)) as server:
        ledgers = _run_optimization(task, config, f"{server.url}/v1", server_config.model)
    scorer, optimizer = ledgers
    measured = {
        "scorer_calls": scorer["requests"],
        "optimizer_calls": optimizer["requests"],
        "scorer_tokens": scorer["total_tokens"],
        "optimizer_tokens": optimizer["total_tokens"],
        "total_tokens": scorer["total_tokens"] + optimizer["total_tokens"],
    }
    estimated = {
        "scorer_calls": estimate.scorer_calls,
        "optimizer_calls": estimate.optimizer_calls,
        "scorer_tokens": estimate.scorer_prompt_tokens + estimate.scorer_completion_tokens,
        "optimizer_tokens": estimate.optimizer_prompt_tokens + estimate.optimizer_completion_tokens,
        "total_tokens": estimate.prompt_tokens + estimate.completion_tokens,
    }
    return EstimateCheck(estimated, measured)


def _run_optimization(
    task: Task, config: Any, base_url: str, model: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    from backends.openai_client import OpenAICompatibleBackend
    from backends.protocol import Capabilities
    from engine.engine import Engine, EngineConfig
    from engine.evaluator import Evaluator
    from gpo.embedders import EmbedderConfig, make_embedder
    from gpo.optimizer import PromptOptimizer

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        capabilities = Capabilities(max_concurrency=256)
        scorer = Engine(
            OpenAICompatibleBackend(base_url, model, capabilities=capabilities),
            EngineConfig(chat_template="chatml"),
        )
        optimizer = Engine(
            OpenAICompatibleBackend(base_url, model, capabilities=capabilities),
            EngineConfig(chat_template="chatml"),
        )
        embedder = make_embedder(EmbedderConfig())
        async with scorer, optimizer:
            loop = PromptOptimizer(
                config, evaluator=Evaluator(scorer), optimizer=optimizer, embedder=embedder
            )
            await loop.run(task)
        await embedder.close()
        return scorer.ledger.snapshot()["totals"], optimizer.ledger.snapshot()["totals"]

    return _run_async(main(), uvloop_loop=True)


# =================================================================================================
# Command line
# =================================================================================================


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Measure the engine against peers' dispatch patterns on the simulated server.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, one run (< 2 minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, in-process (seconds)")
    parser.add_argument("--full", action="store_true", help="add W5 at 1M scored prompts")
    parser.add_argument("--workloads", help="comma-separated, e.g. W1,W3 (default: all)")
    parser.add_argument("--contenders", help="comma-separated subset (the engine always runs)")
    parser.add_argument("--repeat", type=int, help="runs per contender; medians are reported")
    parser.add_argument("--budget-s", type=float, help="run budget before extrapolating")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write Markdown tables")
    parser.add_argument("--url", help="a real OpenAI-compatible server (e.g. vllm serve), /v1")
    parser.add_argument("--model", help="the model name the real server serves")
    parser.add_argument(
        "--chat-template", default="chatml", help="the real model's chat template (chatml, ...)"
    )
    parser.add_argument("--max-num-seqs", type=int, default=256, help="the real server's batch")
    parser.add_argument(
        "--check-estimate", action="store_true", help="compare the dry-run cost estimate"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.url and not args.model:
        parser.error("--url needs --model NAME")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    task = load_task(TASK_NAME)
    available = list(build_workloads(scale, full=args.full))
    order = sorted(available, key=lambda k: (k[:2], k != "W5-1k", len(k), k))
    settings = BenchSettings(
        scale=scale,
        repeat=args.repeat or scale.repeat,
        workloads=()
        if args.check_estimate and not args.workloads
        else select_workloads(args.workloads, order),
        full=args.full,
        budget_s=args.budget_s if args.budget_s is not None else scale.run_budget_s,
        url=args.url,
        model=args.model,
        chat_template=args.chat_template,
        max_num_seqs=args.max_num_seqs,
        contenders=tuple(c.strip() for c in args.contenders.split(","))
        if args.contenders
        else None,
    )
    parameters = {
        "mode": scale.name,
        "task": TASK_NAME,
        "repeat": settings.repeat,
        "run budget s": settings.budget_s,
        "scorer model": "simulated Llama-2-7b-chat, one H100 80GB, vLLM "
        "(max_num_seqs 256, 8192 batched tokens, chunked prefill, prefix caching)"
        if not args.url
        else f"{args.model} at {args.url}",
        "time_scale": f"{scale.time_scale:g} (W1, W2, W4), {scale.api_time_scale:g} (W3): "
        "simulated seconds per real second",
        "peak memory": "worker's peak RSS during the run minus its RSS before (VmHWM reset via "
        "/proc/self/clear_refs; ru_maxrss where /proc is unavailable)",
        "W3 engine limits": f"{API_REQUESTS_PER_MINUTE * API_BURST_FRACTION:g} requests and "
        f"{API_TOKENS_PER_MINUTE * API_BURST_FRACTION:,.0f} tokens per "
        f"{60 * API_BURST_FRACTION:g} simulated s (the limits as the server enforces them); "
        "the cookbook is given the per-minute figures, which is all it takes",
        "client CPU": "worker's process_time (all threads); the server is another process",
        "W5/W6 warm-up": f"each worker first scores up to {WARM_UP_SCORED_PROMPTS:,} chains of "
        "other prompts, unmeasured (a warm process's per-prompt cost, not its start-up)",
    }
    print("bench.py parameters:")
    for name, value in parameters.items():
        print(f"  {name}: {value}")
    reports = run_benchmark(settings, task)
    estimate = check_estimate(task) if args.check_estimate else None
    bar = bar_lines(reports, estimate)
    print("\n== Bar ==")
    for line in bar:
        print(line.render())
    if args.json:
        payload = {
            "parameters": parameters,
            "workloads": [r.to_json() for r in reports],
            "bar": [dataclasses.asdict(line) for line in bar],
            "estimate": dataclasses.asdict(estimate) if estimate else None,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    if args.markdown:
        args.markdown.write_text(render_markdown(reports, parameters, bar))
    return 0


if __name__ == "__main__":
    sys.exit(main())
