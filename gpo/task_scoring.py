"""Scoring prompts for the optimization loop: one evaluator call per batch of prompts.

`TaskScorer` scores prompts on a split of one task (or on a step's training batch), writes every
record to the run directory's `scores` file in (prompt, sample) order, and refuses numbers that
would be made up: an evaluation the engine stopped for budget keeps no score
(`BudgetExhausted`), and a prompt none of whose samples could be scored stops the task
(`ScoringFailed`) instead of being given a mean of 0. Failed samples of an otherwise scored
prompt are left out of its mean, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from backends.errors import ConfigError, GpoError
from benchmarks.sample import Sample
from engine.batch_api import work_that_can_wait
from engine.budget import BudgetExhausted
from engine.evaluator import Evaluator
from engine.race_runner import RaceOutcome, race_prompts
from engine.racing import RacingSettings
from gpo.interfaces import EvaluationOutcome, ScoringEvaluator
from gpo.run_dir import TaskRecorder
from gpo.task_view import TaskView
from gpo.trajectory import shown_step

logger = logging.getLogger(__name__)


class ScoringFailed(GpoError):
    """Every sample of a prompt failed to score: its mean would be a made-up 0."""


def sorted_records(outcome: EvaluationOutcome, samples: Sequence[Sample]) -> list[Any]:
    """Records in (prompt, sample) order: the evaluator appends them as chains finish."""
    position = {sample.id: i for i, sample in enumerate(samples)}
    return sorted(
        outcome.records,
        key=lambda r: (r.prompt_index, position.get(r.sample_id, len(position))),
    )


class TaskScorer:
    """Scores prompts on one task's samples with `evaluator`, recording into `recorder`."""

    def __init__(
        self,
        task: Any,
        evaluator: ScoringEvaluator,
        recorder: TaskRecorder | None,
        budget_engines: Sequence[Any],
    ) -> None:
        self.task = task
        self.name: str = task.name
        self.evaluator = evaluator
        self.recorder = recorder
        self.budget_engines = tuple(budget_engines)

    def check_budget(self) -> None:
        """Raise `BudgetExhausted` when an engine says the run's budget is spent."""
        for engine in self.budget_engines:
            check = getattr(engine, "budget_exhausted", None)
            reason = check() if callable(check) else None
            if reason:
                raise BudgetExhausted(reason)

    async def outcome(
        self,
        split: str,
        samples: Sequence[Sample],
        prompts: Sequence[str],
        step: int,
        purpose: str,
    ) -> EvaluationOutcome:
        """Score `prompts` on `samples` (as `split`); the records are written with step/purpose."""
        view = TaskView(self.task, {split: samples})
        if split == "test":  # nothing waits on a test score: it may go through the Batch API
            with work_that_can_wait():
                outcome = await self.evaluator.evaluate(view, list(prompts), split)
        else:
            outcome = await self.evaluator.evaluate(view, list(prompts), split)
        if outcome.budget_exhausted:
            # Scores of a half-finished evaluation would be wrong: keep none of them.
            raise BudgetExhausted(outcome.budget_exhausted)
        records = sorted_records(outcome, samples)
        self._write(records, step, purpose)
        self._check_failures(records, len(prompts), len(samples), split, step)
        return outcome

    def _write(self, records: Sequence[Any], step: int, purpose: str) -> None:
        if self.recorder is None:
            return
        rows = []
        for record in records:
            row = record.to_json() if hasattr(record, "to_json") else dict(vars(record))
            row.update({"step": step, "purpose": purpose})
            rows.append(row)
        self.recorder.append("scores", rows)

    async def race(
        self,
        samples: Sequence[Sample],
        prompts: Sequence[str],
        step: int,
        settings: RacingSettings,
    ) -> tuple[list[float | None], RaceOutcome]:
        """Race `prompts` on the dev `samples`: the full-dev mean of each survivor (None for a
        candidate racing dropped), and what racing did. Records go to the scores file with
        purpose "candidates", partial rows of dropped candidates included."""
        view = TaskView(self.task, {"eval": samples})
        racer = getattr(self.evaluator, "race", None)
        if callable(racer):  # a wrapper (progress) that races through the evaluator it wraps
            result, outcome = await racer(view, prompts, "eval", settings)
        elif isinstance(self.evaluator, Evaluator):
            result, outcome = await race_prompts(self.evaluator, view, prompts, "eval", settings)
        else:
            raise ConfigError("--racing needs the engine's evaluator (engine.evaluator.Evaluator)")
        if result.budget_exhausted:
            raise BudgetExhausted(result.budget_exhausted)
        records = sorted_records(result, samples)
        self._write(records, step, "candidates")
        self._check_failures(records, len(prompts), len(samples), "eval", step)
        means = result.mean_scores
        full = set(outcome.survivors) if outcome.survivors else set()
        return [float(means[i]) if i in full else None for i in range(len(prompts))], outcome

    async def scores(
        self,
        split: str,
        samples: Sequence[Sample],
        prompts: Sequence[str],
        step: int,
        purpose: str,
    ) -> list[float]:
        """The mean score of each prompt, in order."""
        outcome = await self.outcome(split, samples, prompts, step, purpose)
        return [float(score) for score in np.asarray(outcome.mean_scores, dtype=float)]

    def _check_failures(
        self, records: Sequence[Any], prompts: int, samples: int, split: str, step: int
    ) -> None:
        """Warn about failed samples (left out of the mean); stop when a prompt has no score."""
        failed = [record for record in records if record.failure is not None]
        if not failed or samples == 0:
            return
        answered = [0] * prompts
        for record in records:
            if record.failure is None:
                answered[record.prompt_index] += 1
        # Steps as users see them (the initial prompt is step 0); test scoring comes after all.
        where = "test scoring" if split == "test" else f"step {shown_step(step)}"
        if min(answered) == 0:
            raise ScoringFailed(
                f"task {self.name}, {where}: no {split} sample of a prompt could be scored "
                f"({len(failed)} of {prompts * samples} failed; first: {failed[0].failure}); "
                "the finished work is saved, continue with --resume"
            )
        logger.warning(
            "task %s, %s: %d of %d %s samples failed and are left out of the means",
            self.name,
            where,
            len(failed),
            prompts * samples,
            split,
        )
