"""Contender "sequential" (the GPO / OPRO reference with an API scorer): one request at a time;
on any API error, sleep 30 simulated seconds and try again, forever."""

from __future__ import annotations

import time
from collections.abc import Sequence

from backends.protocol import Message
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, chat_messages, first_turn

SEQUENTIAL_RETRY_S = 30.0
"""OPRO's scorer sleeps 30 s after an API error that carries no retry time (simulated seconds)."""


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
                    messages=chat_messages(messages),  # type: ignore[arg-type]
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
                    first = first_turn(ctx, group.prompt, sample)
                    answers = [ask(first, FIRST_TURN_PARAMS.max_tokens)]
                    second = ctx.conversation(first, answers[0], sample)
                    if second is not None:
                        answers.append(ask(second, FOLLOW_UP_PARAMS.max_tokens))
                    ctx.finish(chain, sample, answers)
    finally:
        client.close()


CONTENDER = Contender(
    "sequential",
    "GPO / OPRO reference, API scorer: one request at a time",
    "chain",
    run_sequential,
)
