"""A workload's rounds resolved against the task's data: which chains (global id, sample) each
candidate prompt is scored on, whole or capped, for a warm-up, or for re-running failures."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from benchmarks import Sample, Task
from perf.workloads import Workload

WARM_UP_SCORED_PROMPTS = 1_000
"""Zero-service-time runs (W5, W6) first score this many chains of other prompts, unmeasured."""


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


def failed_chains(rounds: Sequence[RoundPlan], unanswered: Collection[int]) -> list[RoundPlan]:
    """The rounds reduced to the chains that failed and are still unanswered (for a re-run)."""
    plans = []
    for plan in rounds:
        groups = []
        for group in plan.groups:
            chains = tuple(c for c in group.chains if c[0] in unanswered)
            if chains:
                groups.append(PromptGroup(group.prompt, chains))
        if groups:
            plans.append(RoundPlan(plan.label, plan.split, tuple(groups)))
    return plans
