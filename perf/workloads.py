"""The benchmark's workloads W1-W7: which rounds of (prompts x samples) each submits, on which
server, against which contenders, and how it uses the response cache.

Everything that sets one workload apart from another is a field of its `Workload`, so the
runner has no per-workload branches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks import load_reference_prompts
from perf.scales import (
    FULL_SCALE_EXTRA_W5,
    INITIAL_PROMPT,
    SAMPLES_PER_PROMPT_AT_SCALE,
    TASK_NAME,
    Scale,
)
from perf.servers import API_REQUESTS_PER_MINUTE, API_TOKENS_PER_MINUTE

VLLM_CONTENDERS = ("engine", "sequential", "gpo-vllm", "dspy-threads", "lm-eval", "async-openai")
WINDOW_CONTENDERS = (
    "engine",
    "engine-auto",
    "engine-w16",
    "engine-w64",
    "engine-w128",
    "engine-w256",
)
"""W7: the engine told the server's batch (the reference), told nothing (its window found by
measurement) and given hand-set windows (`perf.contenders.engine_windows`)."""
WINDOW_STEPS = 3
API_CONTENDERS = ("engine", "sequential", "dspy-threads", "lm-eval", "async-openai", "cookbook")
PEERS = ("dspy-evaluate", "lm-eval-completions", "lm-eval-chat")
CHAT_PEERS = ("dspy-evaluate", "lm-eval-chat")
"""Hosted chat APIs take one conversation per call: the vLLM batch pattern has no counterpart
there, and the cookbook's processor is the pattern made for them. The peers' own code (the
`bench` extra) runs beside the re-implementations of their patterns on one step (W1, W3)."""


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
    contenders: tuple[str, ...] = VLLM_CONTENDERS
    """Who runs it, in table order (the engine first: it is the reference)."""
    fills_cache: bool = False
    """Contenders with a file cache write a fresh one, kept for workloads that start warm."""
    warm_from: str | None = None
    """The workload whose response cache this one starts on (W4: W1's). The server then has no
    work, so no limit applies; contenders without a cache show that workload's row (not re-run);
    those with one use its cache file, or fill their cache with a first, unmeasured run."""

    @property
    def scored_prompts(self) -> int:
        return sum(r.scored_prompts for r in self.rounds)

    @property
    def zero_latency(self) -> bool:
        """On the zero-service-time server: workers warm up first, budgets are short."""
        return self.server == "zero"


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
    pool = candidate_prompts(scale.candidates * max(scale.steps, WINDOW_STEPS) + 1)
    workloads = _step_workloads(scale, pool)
    workloads["W2"] = _optimisation_load(scale, pool)
    workloads["W7"] = _window_workload(scale, pool)
    workloads.update(_zero_latency_workloads(scale, full))
    return workloads


def _step_workloads(scale: Scale, pool: list[str]) -> dict[str, Workload]:
    """W1, W3 and W4: one GPO step on the H100, on a rate-limited API, on a warm cache."""
    step_one = ScoringRound("step", "eval", tuple(pool[: scale.candidates]), scale.dev_samples)
    shape = f"{scale.candidates} candidates x {scale.dev_samples} dev samples x 2 chat turns"
    return {
        "W1": Workload(
            "W1",
            "one GPO step",
            "h100",
            (step_one,),
            shape,
            contenders=VLLM_CONTENDERS + PEERS,
            fills_cache=True,
        ),
        "W3": Workload(
            "W3",
            "a hosted API with RPM/TPM limits",
            "api",
            (step_one,),
            f"{shape}, chat requests under {API_REQUESTS_PER_MINUTE} RPM and "
            f"{API_TOKENS_PER_MINUTE:,} TPM",
            contenders=API_CONTENDERS + CHAT_PEERS,
        ),
        "W4": Workload(
            "W4", "W1 on a warm response cache", "h100", (step_one,), shape, warm_from="W1"
        ),
    }


def _optimisation_load(scale: Scale, pool: list[str]) -> Workload:
    """W2: the initial prompt, every step's candidates, then the test split, in sequence."""
    count = scale.candidates
    rounds = [ScoringRound("initial", "eval", (INITIAL_PROMPT,), scale.dev_samples)]
    for step in range(scale.steps):
        prompts = tuple(pool[step * count : (step + 1) * count])
        rounds.append(ScoringRound(f"step {step + 1}", "eval", prompts, scale.dev_samples))
    rounds.append(ScoringRound("test", "test", (INITIAL_PROMPT, pool[0]), scale.test_samples))
    return Workload(
        "W2",
        "one task's optimisation load, step after step",
        "h100",
        tuple(rounds),
        f"initial prompt on {scale.dev_samples} dev samples, {scale.steps} steps of "
        f"{scale.candidates} x {scale.dev_samples}, then 2 prompts x {scale.test_samples} test "
        "samples; 2 chat turns each",
    )


def _window_workload(scale: Scale, pool: list[str]) -> Workload:
    """W7: three GPO steps in a row through one engine, on the 256-slot server (or the real
    one), so that a window that must be found by measurement pays for finding it."""
    count = scale.candidates
    rounds = tuple(
        ScoringRound(
            f"step {step + 1}",
            "eval",
            tuple(pool[step * count : (step + 1) * count]),
            scale.dev_samples,
        )
        for step in range(WINDOW_STEPS)
    )
    return Workload(
        "W7",
        "the window: none configured vs set by hand",
        "h100",
        rounds,
        f"{WINDOW_STEPS} steps of {count} candidates x {scale.dev_samples} dev samples x 2 chat "
        "turns; the engine with no window configured and with windows 16, 64, 128, 256",
        contenders=WINDOW_CONTENDERS,
    )


def _zero_latency_workloads(scale: Scale, full: bool) -> dict[str, Workload]:
    """W5 at each size and W6, on the zero-service-time server."""
    sizes = scale.w5_sizes + ((FULL_SCALE_EXTRA_W5,) if full else ())
    samples = min(SAMPLES_PER_PROMPT_AT_SCALE, scale.dev_samples * 10)
    workloads = {}
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


def select_workloads(spec: str | None, available: Sequence[str]) -> tuple[str, ...]:
    """The workloads `--workloads SPEC` names (W1 names every W1-* size), in `available`'s order."""
    if not spec:
        return tuple(available)
    chosen: list[str] = []
    for name in (part.strip().upper() for part in spec.split(",") if part.strip()):
        matches = [key for key in available if key == name or key.startswith(name + "-")]
        if not matches:
            raise SystemExit(f"--workloads: unknown workload {name!r}; known: W1-W7")
        chosen.extend(m for m in matches if m not in chosen)
    return tuple(chosen)
