"""Racing prompts through the evaluator: score candidates sample by sample, stop the losers early.

`race_prompts` scores `prompts` on a split like `Evaluator.evaluate`, but visits the samples in
a fixed shuffled order and hands the scores to `engine.racing.Race`, which drops a candidate once
an anytime-valid test says it cannot be within epsilon of the best. Only the chosen candidate
(and any survivor still racing when the samples run out) is scored on every sample, so its mean
is a full-dev score, exactly what `evaluate` would have given it.

Dispatch goes through the engine's one window like everything else. Chains are handed out
position by position for the surviving candidates, at most `round_size` positions ahead of the
last position every survivor has answered: the next round's calls leave while the stragglers of
the previous one finish, so racing keeps the server as busy as a plain evaluation whenever
`survivors x round_size` chains fill the window. Once one candidate is left, its remaining
samples are handed out with no look-ahead limit. Chains of a candidate that was dropped while
they were in flight finish and are recorded (their calls are paid for) but change nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmarks import Task
from engine.evaluator import EvaluationResult, Evaluator, SampleRecord, run_in_waves
from engine.racing import Race, RacingSettings, racing_order


@dataclass(slots=True)
class RaceOutcome:
    """What racing did on one split: who was chosen, who was dropped when, and what it saved."""

    prompts: tuple[str, ...]
    chosen: int
    survivors: tuple[int, ...]
    dropped_at: dict[int, int]  # candidate -> samples answered when it was dropped
    partial: dict[int, tuple[float, int]]  # dropped candidate -> (partial mean, samples)
    chains_scored: int
    chains_full: int
    delta: float
    epsilon: float
    round_size: int

    @property
    def chains_saved(self) -> int:
        return self.chains_full - self.chains_scored

    def candidate_rows(self, prompts: Sequence[str]) -> dict[str, dict[str, object]]:
        """Per raced prompt (in the order raced): how it fared, for the step's candidate rows."""
        rows: dict[str, dict[str, object]] = {}
        for index, prompt in enumerate(self.prompts):
            if index in self.dropped_at:
                mean, answered = self.partial[index]
                rows[prompt] = {
                    "raced": "dropped",
                    "partial_mean": mean,
                    "partial_samples": answered,
                }
            else:
                rows[prompt] = {"raced": "full"}
        return {prompt: row for prompt, row in rows.items() if prompt in set(prompts)}

    def to_json(self) -> dict[str, object]:
        return {
            "chosen": self.chosen,
            "survivors": list(self.survivors),
            "dropped": [
                {
                    "candidate": candidate,
                    "after_samples": answered,
                    "partial_mean": self.partial[candidate][0],
                    "partial_samples": self.partial[candidate][1],
                }
                for candidate, answered in sorted(self.dropped_at.items())
            ],
            "chains_scored": self.chains_scored,
            "chains_full": self.chains_full,
            "chains_saved": self.chains_saved,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "round_size": self.round_size,
        }


@dataclass(slots=True)
class _Dispatch:
    """Hands out (candidate, position) chains in racing order, within the look-ahead."""

    race: Race
    round_size: int
    next_position: dict[int, int] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    in_flight: int = 0

    def take(self) -> tuple[int, int] | None:
        """The next chain to score, or None when nothing may leave now."""
        survivors = self.race.survivors()
        needed = self.race.full_scores_needed()
        candidates = needed if self.race.finished else survivors
        limit = self.race.samples
        if not self.race.finished and len(survivors) > 1:
            limit = min(limit, self.race.decided_prefix + self.round_size)
        best: tuple[int, int] | None = None
        for candidate in candidates:
            position = self.next_position.get(candidate, 0)
            if position < limit and (best is None or position < best[1]):
                best = (candidate, position)
        if best is not None:
            self.next_position[best[0]] = best[1] + 1
            self.in_flight += 1
        return best

    def done(self) -> bool:
        """Nothing left to hand out, ever: every needed candidate is through every sample."""
        if not self.race.finished:
            return False
        return all(
            self.next_position.get(c, 0) >= self.race.samples
            for c in self.race.full_scores_needed()
        )


async def race_prompts(
    evaluator: Evaluator,
    task: Task,
    prompts: Sequence[str],
    split: str,
    settings: RacingSettings,
    *,
    on_record: Callable[[SampleRecord], None] | None = None,
) -> tuple[EvaluationResult, RaceOutcome]:
    """Race `prompts` on `split`; the result's matrix has NaN where a chain was never scored."""
    samples = task.split(split)
    order = racing_order(len(samples), settings.seed)
    layout = evaluator.settings.layout
    demonstrations = task.split("few_shot_examples") if layout.shots else ()
    scores = np.full((len(prompts), len(samples)), np.nan)
    result = EvaluationResult(task.name, split, tuple(prompts), scores)
    race = Race(len(prompts), len(samples), settings)
    dispatch = _Dispatch(race, max(1, settings.round_size))
    scored = 0

    async def chain_worker() -> None:
        nonlocal scored
        while result.budget_exhausted is None:
            async with dispatch.changed:
                chain = dispatch.take()
                while chain is None:
                    if dispatch.done() or dispatch.in_flight == 0:
                        return
                    await dispatch.changed.wait()
                    if result.budget_exhausted is not None:
                        return
                    chain = dispatch.take()
            candidate, position = chain
            sample_index = order[position]
            record = await evaluator._score_one(
                task,
                split,
                candidate,
                prompts[candidate],
                samples[sample_index],
                demonstrations,
                result,
            )
            scored += 1
            value = float("nan") if record.failure is not None else record.score
            if record.failure is None:
                scores[candidate, sample_index] = record.score
            result.records.append(record)
            if on_record is not None:
                on_record(record)
            async with dispatch.changed:
                dispatch.in_flight -= 1
                race.record(candidate, position, value)
                dispatch.changed.notify_all()

    if prompts and samples:
        workers = min(evaluator.max_active_chains, len(prompts) * len(samples))
        await run_in_waves(chain_worker, workers, wave=evaluator.engine.config.max_batch_size)
    return result, _outcome(race, prompts, settings, scored, len(prompts) * len(samples))


def _outcome(
    race: Race, prompts: Sequence[str], settings: RacingSettings, scored: int, full: int
) -> RaceOutcome:
    return RaceOutcome(
        prompts=tuple(prompts),
        chosen=race.leader() if race.survivors() else 0,
        survivors=tuple(race.survivors()),
        dropped_at=dict(race.dropped_at),
        partial={c: race.partial_mean(c) for c in race.dropped_at},
        chains_scored=scored,
        chains_full=full,
        delta=settings.delta,
        epsilon=settings.epsilon_for(race.samples),
        round_size=settings.round_size,
    )
