"""Contender "cookbook" (the OpenAI cookbook's parallel processor): RPM/TPM capacity counters
refilled each 1 ms tick, a 15 s pause after any 429, up to 5 attempts a request; the second turn
of a chain is queued behind retries, ahead of new first turns."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backends.protocol import Message
from benchmarks import Sample
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, chat_messages, first_turn, run_async
from perf.rounds import RoundPlan

if TYPE_CHECKING:
    import aiohttp

COOKBOOK_PAUSE_AFTER_429_S = 15.0
COOKBOOK_TICK_S = 0.001
COOKBOOK_MAX_ATTEMPTS = 5


@dataclass(slots=True)
class _CookbookStatus:
    in_progress: int = 0
    rate_limit_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass(slots=True)
class _CookbookRequest:
    chain: int
    sample: Sample
    messages: tuple[Message, ...]
    max_tokens: int
    answers: list[str]
    token_consumption: int
    attempts_left: int = COOKBOOK_MAX_ATTEMPTS


def cookbook_token_consumption(messages: Sequence[Message], max_tokens: int) -> int:
    """The cookbook's estimate for a chat request: 4 per message, its texts, 2, max_tokens x n.

    The cookbook counts with tiktoken; here the server's own tokenizer is used (its best case).
    """
    from backends.simulated.tokens import count_tokens

    tokens = 2
    for role, content in messages:
        tokens += 4 + count_tokens(role) + count_tokens(content)
    return tokens + max_tokens


def run_cookbook(ctx: RunContext) -> None:
    """RPM/TPM capacity counters refilled each 1 ms tick; a 15 s pause after any 429; up to 5
    attempts. The second turn of a chain is queued behind retries, ahead of new first turns.
    Capacities count simulated minutes: the refill is scaled by the server's time_scale."""
    run_async(_cookbook_rounds(ctx))


async def _cookbook_rounds(ctx: RunContext) -> None:
    for plan in ctx.rounds:
        if ctx.chains_done and ctx.out_of_time():
            return
        await _CookbookRound(ctx, plan).run()


class _CookbookRound:
    """The processor over one round's chains, as the cookbook runs over one request file."""

    def __init__(self, ctx: RunContext, plan: RoundPlan) -> None:
        endpoint = ctx.endpoint
        limits = endpoint.api_limits
        self.ctx = ctx
        self.rpm = float(limits.requests_per_minute if limits else 3_500)
        self.tpm = float(limits.tokens_per_minute if limits else 10_000_000)
        self.scale = endpoint.time_scale
        self.url = f"{endpoint.base_url}/chat/completions"
        self.header = {"Authorization": f"Bearer {endpoint.api_key}"}
        self.pause_s = ctx.seconds(COOKBOOK_PAUSE_AFTER_429_S)
        self.status = _CookbookStatus()
        self.retry_queue: asyncio.Queue[_CookbookRequest] = asyncio.Queue()
        self.follow_ups: deque[_CookbookRequest] = deque()
        self.new_requests: Iterator[tuple[int, str, Sample]] = (
            (chain, group.prompt, sample) for group in plan.groups for chain, sample in group.chains
        )
        self.file_not_finished = True
        self.tasks: set[asyncio.Task[None]] = set()

    def _next_request(self) -> _CookbookRequest | None:
        """Retries first, then second turns, then the next chain's first turn."""
        if not self.retry_queue.empty():
            return self.retry_queue.get_nowait()
        if self.follow_ups:
            return self.follow_ups.popleft()
        if not self.file_not_finished:
            return None
        try:
            chain, prompt, sample = next(self.new_requests)
        except StopIteration:
            self.file_not_finished = False
            return None
        first = first_turn(self.ctx, prompt, sample)
        self.status.in_progress += 1
        return _CookbookRequest(
            chain,
            sample,
            first,
            FIRST_TURN_PARAMS.max_tokens,
            [],
            cookbook_token_consumption(first, FIRST_TURN_PARAMS.max_tokens),
        )

    async def run(self) -> None:
        import aiohttp

        status = self.status
        available_requests, available_tokens = self.rpm, self.tpm
        last_update = time.time()
        next_request: _CookbookRequest | None = None
        async with aiohttp.ClientSession() as session:
            while True:
                if next_request is None:
                    next_request = self._next_request()
                now = time.time()
                elapsed_minutes = (now - last_update) * self.scale / 60.0
                available_requests = min(available_requests + self.rpm * elapsed_minutes, self.rpm)
                available_tokens = min(available_tokens + self.tpm * elapsed_minutes, self.tpm)
                last_update = now
                if next_request is not None and (
                    available_requests >= 1 and available_tokens >= next_request.token_consumption
                ):
                    available_requests -= 1
                    available_tokens -= next_request.token_consumption
                    next_request.attempts_left -= 1
                    task = asyncio.create_task(self._call_api(next_request, session))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    next_request = None
                if status.in_progress == 0 and not self.file_not_finished and next_request is None:
                    break
                await asyncio.sleep(COOKBOOK_TICK_S)
                since = time.time() - status.time_of_last_rate_limit_error
                if since < self.pause_s:
                    await asyncio.sleep(self.pause_s - since)

    async def _call_api(self, request: _CookbookRequest, session: aiohttp.ClientSession) -> None:
        ctx, status = self.ctx, self.status
        body = {
            "model": ctx.endpoint.model,
            "messages": chat_messages(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": 0.0,
        }
        data: dict[str, Any] = {}
        error = False
        try:
            async with session.post(self.url, headers=self.header, json=body) as response:
                data = await response.json()
            if "error" in data:
                error = True
                if "rate limit" in str(data["error"].get("message", "")).lower():
                    status.time_of_last_rate_limit_error = time.time()
                    status.rate_limit_errors += 1
        except Exception:
            error = True
        if error:
            if request.attempts_left:
                self.retry_queue.put_nowait(request)
            else:
                status.in_progress -= 1
                ctx.fail(request.chain)
            return
        text = data["choices"][0]["message"]["content"] or ""
        request.answers.append(text)
        self._after_answer(request, text)

    def _after_answer(self, request: _CookbookRequest, text: str) -> None:
        """A first turn's answer queues the chain's second turn; a last answer ends the chain."""
        ctx = self.ctx
        conversation = (
            ctx.conversation(request.messages, text, request.sample)
            if len(request.answers) == 1
            else None
        )
        if conversation is None:
            self.status.in_progress -= 1
            ctx.finish(request.chain, request.sample, request.answers)
            return
        self.follow_ups.append(
            _CookbookRequest(
                request.chain,
                request.sample,
                conversation,
                FOLLOW_UP_PARAMS.max_tokens,
                request.answers,
                cookbook_token_consumption(conversation, FOLLOW_UP_PARAMS.max_tokens),
            )
        )


CONTENDER = Contender(
    "cookbook",
    "OpenAI cookbook parallel processor: RPM/TPM buckets, 1 ms tick, 15 s pause on 429",
    "round",
    run_cookbook,
)
