"""Contender "async-openai" (what users write themselves): AsyncOpenAI + asyncio.gather over every
chain of a round, under a semaphore of 64 chains, with the SDK's own retries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from backends.protocol import Message
from benchmarks import Sample
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, chat_messages, first_turn, run_async

ASYNC_OPENAI_CONCURRENCY = 64


def run_async_openai(ctx: RunContext) -> None:
    """All chains of a round gathered at once; a semaphore of 64 chains; the SDK's retries."""
    run_async(_async_openai_rounds(ctx))


async def _async_openai_rounds(ctx: RunContext) -> None:
    import openai

    endpoint = ctx.endpoint
    client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key)
    sem = asyncio.Semaphore(ASYNC_OPENAI_CONCURRENCY)

    async def ask(messages: Sequence[Message], max_tokens: int) -> str:
        response = await client.chat.completions.create(
            model=endpoint.model,
            messages=chat_messages(messages),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
        )
        return response.choices[0].message.content or ""

    async def score(chain: int, prompt: str, sample: Sample) -> None:
        async with sem:
            try:
                first = first_turn(ctx, prompt, sample)
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


CONTENDER = Contender(
    "async-openai",
    f"AsyncOpenAI + asyncio.gather under a semaphore of {ASYNC_OPENAI_CONCURRENCY}",
    "round",
    run_async_openai,
)
