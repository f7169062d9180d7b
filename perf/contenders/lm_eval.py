"""Contender "lm-eval" (lm-evaluation-harness local-completions): per candidate, one harness pass
per turn, every request under a semaphore of 32, each with tenacity (3 attempts, exponential wait
1-10 s, no Retry-After); one aiohttp session a pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from backends.chat_template import get_chat_template
from backends.protocol import Message
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, chat_messages, first_turn, run_async
from perf.rounds import PromptGroup

if TYPE_CHECKING:
    import aiohttp

LM_EVAL_CONCURRENCY = 32
LM_EVAL_ATTEMPTS = 3


def run_lm_eval(ctx: RunContext) -> None:
    """Per candidate, one harness pass per turn: all requests under a semaphore of 32, each with
    tenacity (3 attempts, exponential wait 1-10 s, no Retry-After); one aiohttp session a pass.

    `local-completions` sends ChatML-rendered prompts to /v1/completions; against a hosted chat
    API (W3) the harness's chat-completions model sends messages instead.
    """
    run_async(_lm_eval_candidates(ctx))


class _Harness:
    """The harness's model: request bodies for /v1/completions (or chat), and its passes."""

    def __init__(self, ctx: RunContext) -> None:
        endpoint = ctx.endpoint
        self.ctx = ctx
        self.chat = endpoint.api_limits is not None
        self.render = get_chat_template(endpoint.chat_template)
        self.url = (
            f"{endpoint.base_url}/chat/completions"
            if self.chat
            else f"{endpoint.base_url}/completions"
        )
        self.header = {"Authorization": f"Bearer {endpoint.api_key}"}

    def payload(self, messages: Sequence[Message], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.ctx.endpoint.model,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": 1234,
        }
        if self.chat:
            body["messages"] = chat_messages(messages)
        else:
            body["prompt"] = self.render(messages)
        return body

    async def model_call(
        self, session: aiohttp.ClientSession, sem: asyncio.Semaphore, body: dict[str, Any]
    ) -> str:
        async with sem, session.post(self.url, json=body, headers=self.header) as response:
            response.raise_for_status()
            outputs = await response.json()
        choice = outputs["choices"][0]
        return choice["message"]["content"] if self.chat else choice["text"]

    async def run_pass(self, requests: list[tuple[int, dict[str, Any]]]) -> dict[int, str | None]:
        import aiohttp
        from tenacity import retry, stop_after_attempt, wait_exponential

        ctx = self.ctx
        # The harness sorts requests by length, longest first, and gathers them all.
        requests = sorted(requests, key=lambda item: -len(json.dumps(item[1])))
        connector = aiohttp.TCPConnector(limit=LM_EVAL_CONCURRENCY)
        sem = asyncio.Semaphore(LM_EVAL_CONCURRENCY)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=300)
        ) as session:
            retrying = retry(
                stop=stop_after_attempt(LM_EVAL_ATTEMPTS),
                wait=wait_exponential(
                    multiplier=ctx.seconds(0.5), min=ctx.seconds(1.0), max=ctx.seconds(10.0)
                ),
                reraise=True,
            )(self.model_call)
            tasks = [asyncio.create_task(retrying(session, sem, body)) for _, body in requests]
            # The harness would abort the whole run on the first request that fails for good;
            # here the chain is counted as failed and the run goes on.
            outputs = await asyncio.gather(*tasks, return_exceptions=True)
        return {
            index: (None if isinstance(output, BaseException) else output)
            for (index, _), output in zip(requests, outputs, strict=True)
        }


async def _lm_eval_candidates(ctx: RunContext) -> None:
    harness = _Harness(ctx)
    for plan in ctx.rounds:
        for group in plan.groups:
            if ctx.chains_done and ctx.out_of_time():
                return
            await _score_candidate(ctx, harness, group)


async def _score_candidate(ctx: RunContext, harness: _Harness, group: PromptGroup) -> None:
    samples = group.samples
    firsts = [first_turn(ctx, group.prompt, sample) for sample in samples]
    first_answers = await harness.run_pass(
        [(s, harness.payload(m, FIRST_TURN_PARAMS.max_tokens)) for s, m in enumerate(firsts)]
    )
    seconds: dict[int, tuple[Message, ...]] = {}
    for s, sample in enumerate(samples):
        answer = first_answers[s]
        if answer is not None:
            conversation = ctx.conversation(firsts[s], answer, sample)
            if conversation is not None:
                seconds[s] = conversation
    second_answers = await harness.run_pass(
        [(s, harness.payload(m, FOLLOW_UP_PARAMS.max_tokens)) for s, m in seconds.items()]
    )
    for s, (chain, sample) in enumerate(group.chains):
        first_answer = first_answers[s]
        if first_answer is None or (s in seconds and second_answers[s] is None):
            ctx.fail(chain)
            continue
        answers = [first_answer]
        if s in seconds:
            answers.append(second_answers[s])  # type: ignore[arg-type]
        ctx.finish(chain, sample, answers)


CONTENDER = Contender(
    "lm-eval",
    f"lm-eval local-completions: semaphore {LM_EVAL_CONCURRENCY}, tenacity "
    f"{LM_EVAL_ATTEMPTS} attempts, candidates in turn",
    "candidate",
    run_lm_eval,
)
