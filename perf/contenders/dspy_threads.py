"""Contender "dspy-threads" (DSPy Evaluate): per candidate, a pool of 8 threads over the samples,
each running the two-turn program; DSPy's in-memory LM cache when the run is given one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from backends.protocol import Message
from benchmarks import Sample
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, chat_messages, first_turn

DSPY_THREADS = 8
DSPY_RETRIES = 3


def run_dspy_threads(ctx: RunContext) -> None:
    """Per candidate, a pool of 8 threads over the samples; each runs the two-turn program.

    `ctx.memory_cache` plays DSPy's in-memory LM cache (key: the request serialised with sorted
    keys); without one, nothing is cached.
    """
    import openai

    cache = ctx.memory_cache
    client = openai.OpenAI(
        base_url=ctx.endpoint.base_url, api_key=ctx.endpoint.api_key, max_retries=DSPY_RETRIES
    )

    def lm(messages: Sequence[Message], max_tokens: int) -> str:
        request = {
            "model": ctx.endpoint.model,
            "messages": chat_messages(messages),
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
        first = first_turn(ctx, prompt, sample)
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


CONTENDER = Contender(
    "dspy-threads",
    f"DSPy Evaluate: thread pool of {DSPY_THREADS} over samples, candidates in turn",
    "candidate",
    run_dspy_threads,
    cache="memory",
)
