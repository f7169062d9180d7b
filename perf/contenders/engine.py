"""Contender "engine" (this project): Engine + Evaluator, every chain of a round at once under
one window, prompt lists of ChatML chats; the reference every other contender is compared with."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from perf.contenders.base import Contender, RunContext, run_async
from perf.engines import KNOWN, open_engine
from perf.rounds import PromptGroup

if TYPE_CHECKING:
    from engine.evaluator import Evaluator


def run_engine(ctx: RunContext) -> None:
    """Engine + Evaluator: every chain of a round at once under one window; prompt lists."""
    run_async(_engine_rounds(ctx), uvloop_loop=True)


async def _engine_rounds(ctx: RunContext, window: int | str = KNOWN) -> None:
    """Every round through one engine whose window is `window` (`perf.engines.KNOWN`)."""
    from engine.evaluator import Evaluator, EvaluatorSettings

    cache_path = Path(ctx.cache_path) if ctx.cache_path else None
    async with open_engine(ctx.endpoint, cache_path, window) as engine:
        evaluator = Evaluator(engine, EvaluatorSettings(layout=ctx.layout))
        for plan in ctx.rounds:
            if ctx.chains_done and ctx.out_of_time():
                return
            # A round is one evaluator call when every prompt has the same samples (always,
            # except when re-running failed chains: then one call per prompt, all at once).
            same_samples = len({group.samples for group in plan.groups}) == 1
            batches = [plan.groups] if same_samples else [(g,) for g in plan.groups]
            await asyncio.gather(
                *(_evaluate(ctx, evaluator, batch, plan.split) for batch in batches)
            )


async def _evaluate(
    ctx: RunContext, evaluator: Evaluator, groups: Sequence[PromptGroup], split: str
) -> None:
    from engine.evaluator import SampleRecord
    from gpo.task_view import TaskView

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

    # Records go straight into the transcript, as every contender's answers do, rather than
    # being held twice.
    await evaluator.evaluate(view, prompts, split, on_record=transcribe, keep_records=False)


CONTENDER = Contender(
    "engine",
    "this project: Engine + Evaluator, one window, prompt lists of ChatML chats",
    "round",
    run_engine,
    cache="file",
)
