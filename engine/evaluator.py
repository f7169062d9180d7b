"""The evaluator: score many prompts on a task's split in one call, through the engine.

Every (prompt, sample) pair is a scoring chain: the first turn laid out by `benchmarks`, then for
chat scorers the answer-pinning second turn, submitted the moment the first returns, at
`Priority.FOLLOW_UP` so that open chains finish before new ones start. All chains of all prompts
run at once under the engine's one window; a bounded number of chains are active at a time, so
memory stays flat however many prompts and samples are asked for. A chain whose request fails
is recorded as failed with its reason and left out of the prompt's mean, never silently scored 0;
a failure of the endpoint itself (`RequestFailed.fatal`) stops the evaluation and is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends.protocol import Message, Request, SamplingParams
from benchmarks import PromptLayout, Sample, Task, answer_turn, build_prompt, extract_answer
from benchmarks import score_answer as score_text
from engine.budget import BudgetExhausted
from engine.engine import Engine
from engine.queues import Priority
from engine.retry_policy import RequestFailed

FIRST_TURN_PARAMS = SamplingParams(max_tokens=256)
FOLLOW_UP_PARAMS = SamplingParams(max_tokens=100)


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One prompt scored on one sample."""

    task: str
    split: str
    prompt_index: int
    prompt: str
    sample_id: str
    answers: tuple[str, ...]
    parsed: str
    gold: str
    score: float
    failure: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "task": self.task,
            "split": self.split,
            "prompt_index": self.prompt_index,
            "prompt": self.prompt,
            "sample_id": self.sample_id,
            "answers": list(self.answers),
            "parsed": self.parsed,
            "gold": self.gold,
            "score": self.score,
            "failure": self.failure,
        }


@dataclass(slots=True)
class EvaluationResult:
    """Scores of `prompts` on one split: a prompts x samples matrix (NaN where a chain failed)."""

    task: str
    split: str
    prompts: tuple[str, ...]
    scores: np.ndarray
    records: list[SampleRecord] = field(default_factory=list)
    budget_exhausted: str | None = None

    @property
    def mean_scores(self) -> np.ndarray:
        """Per-prompt mean over the samples that were scored (0.0 when none was)."""
        answered = ~np.isnan(self.scores)
        counts = answered.sum(axis=1)
        sums = np.where(answered, self.scores, 0.0).sum(axis=1)
        return np.divide(sums, counts, out=np.zeros(len(self.prompts)), where=counts > 0)

    @property
    def failures(self) -> int:
        return int(np.isnan(self.scores).sum())


@dataclass(frozen=True, slots=True)
class EvaluatorSettings:
    layout: PromptLayout = field(default_factory=PromptLayout)
    first_turn: SamplingParams = FIRST_TURN_PARAMS
    follow_up: SamplingParams = FOLLOW_UP_PARAMS
    phase: str = "scoring"


async def run_in_waves(
    worker: Callable[[], Coroutine[Any, Any, None]], count: int, *, wave: int
) -> None:
    """Run `count` copies of `worker` as tasks, started `wave` at a time; wait for them all.

    Starting every chain before yielding would lay out every chain's first prompt before the
    engine could send its first call, leaving the server idle for that long: a fixed cost per
    evaluation that shows on a fast server. Yielding after each wave lets the first call leave
    while later chains are still being built. The tasks are awaited through one future that the
    last one completes, rather than `asyncio.gather`, whose per-task bookkeeping is measurable at
    thousands of chains.

    The first exception cancels the other tasks and is raised once they have all ended (every
    task's exception is retrieved, so none is reported as lost); cancelling the wait cancels them.
    """
    if count <= 0:
        return
    wave = max(1, wave)
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()
    tasks: list[asyncio.Task[None]] = []
    running = 0
    launching = True
    first_error: BaseException | None = None

    def finished(task: asyncio.Task[None]) -> None:
        nonlocal running, first_error
        running -= 1
        if not task.cancelled():
            error = task.exception()
            if error is not None and first_error is None:
                first_error = error
                for other in tasks:
                    other.cancel()
        if running == 0 and not launching and not all_done.done():
            all_done.set_result(None)

    try:
        for started in range(0, count, wave):
            if first_error is not None:
                break
            for _ in range(min(wave, count - started)):
                task = loop.create_task(worker())
                task.add_done_callback(finished)
                tasks.append(task)
                running += 1
            await asyncio.sleep(0)
        launching = False
        if running > 0:
            await all_done
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    if first_error is not None:
        raise first_error


class Evaluator:
    """Scores prompts on tasks through one engine."""

    def __init__(
        self,
        engine: Engine,
        settings: EvaluatorSettings | None = None,
        *,
        max_active_chains: int | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings or EvaluatorSettings()
        self.max_active_chains = max_active_chains or max(64, min(4096, engine.window.maximum * 4))

    async def evaluate(
        self,
        task: Task,
        prompts: Sequence[str],
        split: str = "eval",
        *,
        limit: int | None = None,
        on_record: Callable[[SampleRecord], None] | None = None,
        keep_records: bool = True,
    ) -> EvaluationResult:
        """Score every prompt on every sample of `split` (the first `limit` samples if given).

        Each record goes to `on_record` as its chain ends. With `keep_records=False` the result
        holds only the scores matrix, not the records, so memory stays flat however many chains
        run (a caller that streams records to disk does not need them twice).
        """
        samples = task.split(split)
        if limit is not None:
            samples = samples[:limit]
        layout = self.settings.layout
        demonstrations = task.split("few_shot_examples") if layout.shots else ()
        scores = np.full((len(prompts), len(samples)), np.nan)
        result = EvaluationResult(task.name, split, tuple(prompts), scores)
        pairs = iter([(p, s) for p in range(len(prompts)) for s in range(len(samples))])

        async def chain_worker() -> None:
            for prompt_index, sample_index in pairs:
                if result.budget_exhausted is not None:
                    return
                record = await self._score_one(
                    task,
                    split,
                    prompt_index,
                    prompts[prompt_index],
                    samples[sample_index],
                    demonstrations,
                    result,
                )
                if record.failure is None:
                    scores[prompt_index, sample_index] = record.score
                if keep_records:
                    result.records.append(record)
                if on_record is not None:
                    on_record(record)

        workers = min(self.max_active_chains, len(prompts) * len(samples))
        await run_in_waves(chain_worker, workers, wave=self.engine.config.max_batch_size)
        return result

    async def _score_one(
        self,
        task: Task,
        split: str,
        prompt_index: int,
        prompt: str,
        sample: Sample,
        demonstrations: Sequence[Sample],
        result: EvaluationResult,
    ) -> SampleRecord:
        settings = self.settings
        first = build_prompt(prompt, sample, settings.layout, demonstrations)
        answers: list[str] = []
        try:
            if isinstance(first, str):
                request = Request(prompt=first, params=settings.first_turn)
            else:
                request = Request(messages=first, params=settings.first_turn)
            answer = await self.engine.generate(
                request, priority=Priority.SCORING, phase=settings.phase
            )
            answers.append(answer.text)
            follow_up = (
                None
                if isinstance(first, str)
                else answer_turn(task, sample, first[-1][1], settings.layout.position)
            )
            if follow_up is not None:
                conversation: tuple[Message, ...] = (
                    *first,  # type: ignore[misc]
                    ("assistant", answer.text),
                    ("user", follow_up),
                )
                second = await self.engine.generate(
                    Request(messages=conversation, params=settings.follow_up),
                    priority=Priority.FOLLOW_UP,
                    phase=settings.phase,
                )
                answers.append(second.text)
        except (RequestFailed, BudgetExhausted) as error:
            if isinstance(error, RequestFailed) and error.fatal:
                raise  # the endpoint is unusable: stop the evaluation, not just this sample
            if isinstance(error, BudgetExhausted):
                result.budget_exhausted = str(error)
            return SampleRecord(
                task.name,
                split,
                prompt_index,
                prompt,
                sample.id,
                tuple(answers),
                "",
                sample.target,
                0.0,
                failure=str(error),
            )
        final = answers[-1]
        return SampleRecord(
            task.name,
            split,
            prompt_index,
            prompt,
            sample.id,
            tuple(answers),
            extract_answer(task, final),
            sample.target,
            score_text(task, sample, final),
        )
