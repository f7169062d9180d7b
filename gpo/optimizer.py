"""The optimization loop: GPO and its baselines as one configurable procedure (GPO.md).

For one task:
1. Score the initial prompt on the dev split; it starts the trajectory.
2. For each of `total` steps (epochs x steps per epoch, steps per epoch = train_n // batch,
   plus one when the remainder is at least half a batch):
   - reflection baselines: score the current prompt on the step's training batch and ask the
     optimizer (temperature 0) what is wrong, from the items it got wrong; SGDM folds that into a
     running summary of problems;
   - choose the update direction (retrieved trajectory, or the summary) and the word budget;
   - render the meta-prompt and ask the optimizer for `candidates` prompts at temperature 1.0:
     one request with n where the endpoint honours n (the meta-prompt is paid for once),
     otherwise one request per candidate;
   - parse and de-duplicate; a prompt scored before keeps its score; every new candidate is
     scored on the dev split in ONE evaluator call;
   - the best candidate not chosen before becomes the current prompt and joins the trajectory.
3. The final prompt is the best dev score of the trajectory; the initial and final prompts (and,
   as an option, every step's prompt) are scored on the test split in one call.

Everything is deterministic given the answers: seeds drawn from the config, a fixed
`sample_index` (and seed) for every sampled request, evaluator records sorted before they are
written. With the engine's response cache in the run directory, re-running a killed task
replays its finished work from the cache at no cost and ends with the same result.

A spent budget (`BudgetExhausted`: raised by the engines, or for an evaluation they stopped) ends
the task cleanly with status "stopped" and the best prompt found so far.

The number of steps and the format examples come from `gpo.step_plan`; scoring, with its records
and its refusal of made-up means, is `gpo.task_scoring`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from backends.errors import ConfigError
from backends.protocol import Completion, Purpose, Request, SamplingParams
from benchmarks.sample import Sample
from engine.engine import BudgetExhausted, Priority, RequestFailed
from engine.race_runner import RaceOutcome
from gpo.candidates import parse_candidates, parse_marked_answer
from gpo.config import OptimizerConfig
from gpo.embedders import Embedder
from gpo.interfaces import GenerationEngine, ProgressListener, ScoringEvaluator, SilentProgress
from gpo.meta_prompts import (
    NO_WRONG_EXAMPLES,
    FormatExample,
    WrongExample,
    render_problem_integration_prompt,
    render_prompt_summary_prompt,
    render_reflection_prompt,
    render_update_prompt,
)
from gpo.results import TaskResult
from gpo.retrieval import select_direction
from gpo.run_dir import TaskRecorder
from gpo.selection import choose_next
from gpo.step_plan import draw_format_indices, steps_per_epoch, total_steps
from gpo.task_scoring import TaskScorer, sorted_records
from gpo.trajectory import INITIAL_STEP, Trajectory, TrajectoryEntry, shown_step

logger = logging.getLogger(__name__)

OPTIMIZING_PHASE = "optimizing"
# Offsets that keep the sample indices of a step's different sampled requests apart.
_CANDIDATE_SLOT = 0
_SINGLE_SLOT = 900
# Single optimizer requests, in slot order, with what each asks for (told to the server).
_ASK_KINDS = {
    "reflection": Purpose.REFLECTION,
    "momentum": Purpose.REFLECTION,
    "summary": Purpose.NEW_PROMPT,
}


class PromptOptimizer:
    """Runs the loop of `config` for tasks, scoring with `evaluator`, proposing with `engine`."""

    def __init__(
        self,
        config: OptimizerConfig,
        *,
        evaluator: ScoringEvaluator,
        optimizer: GenerationEngine,
        embedder: Embedder | None = None,
        listener: ProgressListener | None = None,
        budget_engines: Sequence[Any] = (),
        format_draws: Mapping[str, list[int]] | None = None,
    ) -> None:
        self.config = config
        # Format-example indices drawn across the run's tasks (gpo/format_draws.py).
        self.format_draws = dict(format_draws or {})
        self.evaluator = evaluator
        self.optimizer = optimizer
        self.embedder = embedder
        self.listener = listener or SilentProgress()
        self.budget_engines = tuple(budget_engines) or (optimizer,)
        if config.optimize and config.direction == "relevance" and embedder is None:
            raise ConfigError("the relevance direction needs an embedder (--embedder)")

    async def run(self, task: Any, recorder: TaskRecorder | None = None) -> TaskResult:
        """Optimize (or, for fixed-prompt methods, just score) one task."""
        return await _TaskRun(self, task, recorder).run()


class _TaskRun:
    """The state of one task's optimization."""

    def __init__(self, owner: PromptOptimizer, task: Any, recorder: TaskRecorder | None) -> None:
        self.owner = owner
        self.config = owner.config
        self.task = task
        self.name: str = task.name
        self.recorder = recorder
        cfg = self.config
        train_all = task.split("train") if cfg.optimize else ()
        dev_all = task.split("eval")
        test_all = task.split("test") if cfg.evaluate_test else ()
        self.train: tuple[Sample, ...] = tuple(train_all[: cfg.train_size])
        self.dev: tuple[Sample, ...] = tuple(dev_all[: cfg.dev_size])
        self.test: tuple[Sample, ...] = tuple(test_all[: cfg.test_size])
        self.examples: list[FormatExample] = []
        self.total = 0
        self.steps_per_epoch = 0
        if cfg.optimize:
            format_all = task.split("format")
            indices = owner.format_draws.get(self.name)
            if indices is None:
                indices = draw_format_indices(
                    cfg.seed,
                    (len(train_all), len(dev_all), len(task.split("test"))),
                    len(format_all),
                    cfg.format_examples,
                )
            self.examples = [
                FormatExample(format_all[i].input, format_all[i].target) for i in indices
            ]
            self.steps_per_epoch = steps_per_epoch(len(self.train), cfg.batch_size)
            self.total = total_steps(cfg, len(self.train))
            if self.total < 1:
                raise ConfigError(
                    f"task {self.name}: {len(self.train)} training samples give no step with "
                    f"--train-batch-size {cfg.batch_size}; pass --steps or a smaller "
                    "--train-batch-size"
                )
            if cfg.reflection and not self.train:
                raise ConfigError(
                    f"task {self.name}: reflection needs training samples (--train-size)"
                )
        if not self.dev:
            raise ConfigError(f"task {self.name}: the dev (eval) split is empty")
        self.trajectory = Trajectory()
        self.known_scores: dict[str, float] = {}
        self.racing_steps: list[dict[str, Any]] = []
        self.word_budgets: list[int | None] = []
        self.problem_momentum: str | None = None
        self.summary_entry: TrajectoryEntry | None = None
        self.stop_reason: str | None = None
        self.started = time.monotonic()
        self.scorer = TaskScorer(task, owner.evaluator, recorder, owner.budget_engines)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> TaskResult:
        cfg = self.config
        if self.recorder is not None:
            self.recorder.start()
        self.owner.listener.task_started(self.name, self.total)
        initial_test: float | None = None
        final_test: float | None = None
        test_by_step: list[tuple[int, float]] = []
        try:
            if not cfg.optimize:
                initial_test = await self._score_fixed_prompt()
                final_test = initial_test
            else:
                await self._score_initial()
                for step in range(self.total):
                    self.scorer.check_budget()
                    await self._step(step)
                    self.owner.listener.step_finished(
                        self.name, step, self.total, self.trajectory.best().dev_score
                    )
                if cfg.evaluate_test:
                    initial_test, final_test, test_by_step = await self._score_test()
        except BudgetExhausted as stop:
            self.stop_reason = str(stop)
            logger.warning("task %s stopped: %s", self.name, stop)
        result = self._result(initial_test, final_test, test_by_step)
        if self.recorder is not None:
            self.recorder.write_result(result.to_json())
        self.owner.listener.task_finished(self.name, result)
        return result

    async def _score_fixed_prompt(self) -> float | None:
        prompt = self.config.initial_prompt
        (dev,) = await self.scorer.scores("eval", self.dev, [prompt], INITIAL_STEP, "initial")
        entry = TrajectoryEntry(INITIAL_STEP, prompt, dev)
        self.trajectory.append(entry)
        self._record_trajectory(entry, None)
        if not (self.config.evaluate_test and self.test):
            return None
        (test,) = await self.scorer.scores("test", self.test, [prompt], INITIAL_STEP, "test")
        return test

    async def _score_initial(self) -> None:
        prompt = self.config.initial_prompt
        (score,) = await self.scorer.scores("eval", self.dev, [prompt], INITIAL_STEP, "initial")
        entry = TrajectoryEntry(INITIAL_STEP, prompt, float(score))
        self.known_scores[prompt] = entry.dev_score
        self.trajectory.append(entry)
        self._record_trajectory(entry, None)

    async def _step(self, step: int) -> None:
        cfg = self.config
        current = self.trajectory.current
        problems: str | None = None
        if cfg.reflection:
            problems = await self._reflect(step, current)
        previous_summary: TrajectoryEntry | None = None
        if cfg.direction == "summary":
            if problems is not None:
                problems = await self._fold_problems(step, problems)
            else:
                previous_summary = await self._summarise_prompts(step, current)
        shown = await select_direction(
            cfg.direction,
            self.trajectory.entries,
            cfg.trajectory_k,
            embedder=self.owner.embedder,
            order=cfg.relevance_order,
        )
        budget = cfg.schedule.budget(len(self.trajectory), self.total)
        self.word_budgets.append(budget)
        meta_prompt = render_update_prompt(
            style=cfg.update,
            current=current,
            examples=self.examples,
            position=cfg.instruction_position,
            shown=shown,
            previous_summary=previous_summary,
            problems=problems,
            word_budget=budget,
            score_scale=cfg.score_scale,
        )
        answers = await self._propose(step, meta_prompt)
        self._record_meta(step, "update", meta_prompt, answers)
        candidates, dropped = parse_candidates(answers, self.known_scores)
        if dropped:
            logger.info(
                "task %s step %d: %d empty or repeated answers",
                self.name,
                shown_step(step),
                dropped,
            )
        new_prompts = [c.prompt for c in candidates if c.known_score is None]
        race = await self._score_candidates(step, new_prompts)
        # A candidate racing dropped has no full-dev score: it cannot be chosen (a survivor is
        # better, with probability 1 - delta) and its partial mean is never kept as a score.
        scored = [
            (c.prompt, self.known_scores[c.prompt])
            for c in candidates
            if c.prompt in self.known_scores
        ]
        chosen = choose_next(scored, self.trajectory.chosen_prompts())
        if chosen is None:
            logger.warning(
                "task %s step %d: the optimizer gave no usable prompt; keeping the current one",
                self.name,
                shown_step(step),
            )
            chosen = (current.prompt, current.dev_score)
        entry = TrajectoryEntry(step, chosen[0], chosen[1])
        self.trajectory.append(entry)
        self._record_candidates(step, candidates, chosen[0], race)
        self._record_trajectory(
            entry, budget, candidates=len(candidates), new=len(new_prompts), race=race
        )

    async def _score_candidates(self, step: int, new_prompts: Sequence[str]) -> RaceOutcome | None:
        """Score the step's new candidates on dev: each on every sample, or raced (`--racing`)."""
        racing = self.config.racing
        if not new_prompts:
            return None
        if racing is None or len(new_prompts) < 2:
            scores = await self.scorer.scores("eval", self.dev, new_prompts, step, "candidates")
            for prompt, score in zip(new_prompts, scores, strict=True):
                self.known_scores[prompt] = float(score)
            return None
        # Each step visits the dev samples in its own order, fixed by the run's seed and the step.
        settings = dataclasses.replace(racing, seed=self.config.seed * 100_003 + step + 1)
        means, outcome = await self.scorer.race(self.dev, new_prompts, step, settings)
        self.racing_steps.append(
            {
                "step": step,
                "chains_scored": outcome.chains_scored,
                "chains_full": outcome.chains_full,
                "dropped": len(outcome.dropped_at),
                "delta": outcome.delta,
                "epsilon": outcome.epsilon,
            }
        )
        for prompt, mean in zip(new_prompts, means, strict=True):
            if mean is not None:
                self.known_scores[prompt] = mean
        return outcome

    # -- update direction helpers --------------------------------------------------------------

    def _train_batch(self, step: int) -> tuple[Sample, ...]:
        size = self.config.batch_size
        index = step % self.steps_per_epoch if self.steps_per_epoch else 0
        return self.train[index * size : min(len(self.train), (index + 1) * size)]

    async def _reflect(self, step: int, current: TrajectoryEntry) -> str:
        batch = self._train_batch(step)
        outcome = await self.scorer.outcome("train", batch, [current.prompt], step, "reflection")
        by_id = {sample.id: sample for sample in batch}
        wrong = [
            WrongExample(
                question=by_id[record.sample_id].input,
                prediction=record.answers[-1] if record.answers else record.parsed,
                answer=record.gold,
            )
            for record in sorted_records(outcome, batch)
            if record.failure is None and record.score <= 0.0
        ]
        if not wrong:
            return NO_WRONG_EXAMPLES
        text = render_reflection_prompt(current.prompt, wrong)
        answer = await self._ask(step, "reflection", text, self.config.reflection_temperature)
        return parse_marked_answer(answer)

    async def _fold_problems(self, step: int, problems: str) -> str:
        """SGDM: the running summary of problems absorbs this step's problems."""
        if self.problem_momentum is None:
            self.problem_momentum = problems
            return problems
        text = render_problem_integration_prompt(self.problem_momentum, problems)
        answer = await self._ask(step, "momentum", text, self.config.reflection_temperature)
        self.problem_momentum = parse_marked_answer(answer)
        return self.problem_momentum

    async def _summarise_prompts(self, step: int, current: TrajectoryEntry) -> TrajectoryEntry:
        """Summarised trajectory without reflection: a running summary prompt with its score."""
        if self.summary_entry is None:
            self.summary_entry = TrajectoryEntry(step, current.prompt, current.dev_score)
            return self.summary_entry
        cfg = self.config
        text = render_prompt_summary_prompt(self.summary_entry, current, cfg.score_scale)
        answer = await self._ask(step, "summary", text, cfg.reflection_temperature)
        prompt = parse_marked_answer(answer) or current.prompt
        if prompt not in self.known_scores:
            (score,) = await self.scorer.scores("eval", self.dev, [prompt], step, "summary")
            self.known_scores[prompt] = float(score)
        self.summary_entry = TrajectoryEntry(step, prompt, self.known_scores[prompt])
        return self.summary_entry

    # -- optimizer calls -----------------------------------------------------------------------

    def _sample_index(self, step: int, slot: int) -> int:
        return self.config.seed * 1_000_000 + step * 1000 + slot

    def _request(
        self, text: str, temperature: float, n: int, index: int, purpose: Purpose
    ) -> Request:
        sampled = temperature > 0
        params = SamplingParams(
            max_tokens=self.config.optimizer_max_tokens,
            temperature=temperature,
            n=n,
            seed=index if sampled else None,
            purpose=purpose,
        )
        return Request(
            messages=(("user", text),), params=params, sample_index=index if sampled else None
        )

    async def _propose(self, step: int, meta_prompt: str) -> list[str]:
        """`candidates` raw answers to the meta-prompt."""
        cfg = self.config
        engine = self.owner.optimizer
        count = cfg.candidates
        if count == 1 or engine.capabilities.multiple_choices:
            request = self._request(
                meta_prompt,
                cfg.optimizer_temperature,
                count,
                self._sample_index(step, _CANDIDATE_SLOT),
                Purpose.NEW_PROMPT,
            )
            completion = await engine.generate(
                request, priority=Priority.OPTIMIZER, phase=OPTIMIZING_PHASE
            )
            return list(completion.texts)
        requests = [
            self._request(
                meta_prompt,
                cfg.optimizer_temperature,
                1,
                self._sample_index(step, _CANDIDATE_SLOT + i),
                Purpose.NEW_PROMPT,
            )
            for i in range(count)
        ]
        outcomes = await engine.generate_many(
            requests, priority=Priority.OPTIMIZER, phase=OPTIMIZING_PHASE
        )
        texts = [o.text for o in outcomes if isinstance(o, Completion)]
        failures = [o for o in outcomes if not isinstance(o, Completion)]
        for failure in failures:
            if isinstance(failure, BudgetExhausted):
                raise failure
            logger.warning(
                "task %s step %d: a candidate request failed: %s",
                self.name,
                shown_step(step),
                failure,
            )
        if not texts and failures:
            raise failures[0]
        return texts

    async def _ask(self, step: int, kind: str, text: str, temperature: float) -> str:
        """One answer from the optimizer (reflection, momentum, summary)."""
        index = self._sample_index(step, _SINGLE_SLOT + list(_ASK_KINDS).index(kind))
        request = self._request(text, temperature, 1, index, _ASK_KINDS[kind])
        try:
            completion = await self.owner.optimizer.generate(
                request, priority=Priority.OPTIMIZER, phase=OPTIMIZING_PHASE
            )
        except RequestFailed:
            logger.error(
                "task %s step %d: the %s request failed", self.name, shown_step(step), kind
            )
            raise
        self._record_meta(step, kind, text, list(completion.texts))
        return completion.text

    # -- scoring -------------------------------------------------------------------------------

    async def _score_test(self) -> tuple[float | None, float | None, list[tuple[int, float]]]:
        if not self.test:
            return None, None, []
        initial = self.trajectory.entries[0].prompt
        final = self.trajectory.best().prompt
        prompts = [initial, final]
        if self.config.test_every_step:
            prompts += [entry.prompt for entry in self.trajectory]
        unique = list(dict.fromkeys(prompts))
        scores = await self.scorer.scores("test", self.test, unique, self.total, "test")
        by_prompt = dict(zip(unique, scores, strict=True))
        by_step = (
            [(entry.step, by_prompt[entry.prompt]) for entry in self.trajectory]
            if self.config.test_every_step
            else []
        )
        return by_prompt[initial], by_prompt[final], by_step

    # -- results and records -------------------------------------------------------------------

    def _result(
        self,
        initial_test: float | None,
        final_test: float | None,
        test_by_step: list[tuple[int, float]],
    ) -> TaskResult:
        cfg = self.config
        entries = self.trajectory.entries
        if entries:
            best = self.trajectory.best()
            initial_dev: float | None = entries[0].dev_score
            final_prompt, final_step, final_dev = best.prompt, best.step, best.dev_score
        else:
            initial_dev = final_dev = None
            final_prompt, final_step = cfg.initial_prompt, INITIAL_STEP
        return TaskResult(
            task=self.name,
            method=cfg.method,
            status="stopped" if self.stop_reason else "finished",
            stop_reason=self.stop_reason,
            initial_prompt=cfg.initial_prompt,
            initial_dev=initial_dev,
            initial_test=initial_test,
            final_prompt=final_prompt,
            final_step=final_step,
            final_dev=final_dev,
            final_test=final_test,
            steps_done=max(0, len(entries) - 1),
            steps_total=self.total,
            trajectory=entries,
            word_budgets=tuple(self.word_budgets),
            test_by_step=tuple(test_by_step),
            wall_time_s=time.monotonic() - self.started,
            racing_steps=tuple(self.racing_steps),
        )

    def _record_trajectory(
        self,
        entry: TrajectoryEntry,
        budget: int | None,
        *,
        candidates: int = 0,
        new: int = 0,
        race: RaceOutcome | None = None,
    ) -> None:
        if self.recorder is None:
            return
        epoch = (
            entry.step // self.steps_per_epoch if self.steps_per_epoch and entry.step >= 0 else None
        )
        self.recorder.append(
            "trajectory",
            [
                {
                    "step": entry.step,
                    "epoch": epoch,
                    "prompt": entry.prompt,
                    "dev_score": entry.dev_score,
                    "word_budget": budget,
                    "candidates": candidates,
                    "new_candidates": new,
                    **({} if race is None else {"racing": race.to_json()}),
                }
            ],
        )

    def _record_meta(self, step: int, kind: str, text: str, answers: list[str]) -> None:
        if self.recorder is not None:
            self.recorder.append(
                "meta_prompts", [{"step": step, "kind": kind, "text": text, "answers": answers}]
            )

    def _record_candidates(
        self, step: int, candidates: Sequence[Any], chosen: str, race: RaceOutcome | None
    ) -> None:
        if self.recorder is None:
            return
        raced = {} if race is None else race.candidate_rows([c.prompt for c in candidates])
        self.recorder.append(
            "candidates",
            [
                {
                    "step": step,
                    "index": c.index,
                    "prompt": c.prompt,
                    "dev_score": self.known_scores.get(c.prompt),
                    "reused": c.known_score is not None,
                    "chosen": c.prompt == chosen,
                    "raw": c.raw,
                    **raced.get(c.prompt, {}),
                }
                for c in candidates
            ],
        )
