"""The engine: one bounded window of work in flight, shared by every caller.

`Engine.generate(request)` answers one request; callers await it concurrently and the engine
decides how the work reaches the server:

- Cache first (a hit costs nothing), then in-flight de-duplication (identical requests share one
  call), then a priority queue. Queues are kept per (priority, sampling settings) so that requests
  that can share a call sit together; the dispatcher always serves the most urgent queue first,
  oldest first among equals.
- One concurrency window counts sequences in flight, not calls and not candidates; it is sized for
  the server (a little above vLLM's `max_num_seqs`, so the server never waits for the client) and
  shrinks and regrows by AIMD on 429s and timeouts.
- Completion requests, and chats rendered with a known chat template, travel as prompt lists: up
  to `max_batch_size` prompts in one `/v1/completions` call. Per-call CPU is what limits a Python
  client, so this is the lever that keeps the client far below the server's capacity.
- Failures retry with exponential backoff and full jitter, never sooner than `Retry-After`; a 429
  pauses all dispatch until the server's reset. A call refused as invalid (4xx) is split so that
  one bad prompt cannot sink the others, and that prompt fails once, without retries. A request
  that finally fails raises `RequestFailed` with its reason; nothing is dropped silently.
- `Engine.embed(texts)` sends one `/v1/embeddings` call under the same rules (`RetryPolicy`,
  the same pause on `Retry-After`, the same fatal errors) and counts it in the ledger.
- Some failures condemn the endpoint, not one request: credentials refused, a model the server
  does not serve, a server that cannot be reached once retries are spent, answers that cannot be
  saved to the cache. The first one stops the engine: it is raised as a `RequestFailed` with
  `fatal=True`, once per waiting caller, no further call is sent, and callers can stop the run
  with one clear error instead of marking every remaining sample failed.
- Answers are committed to the cache as each call returns, before callers see them.
- Processes sharing one cache file do not pay twice for an answer: before a call is sent its keys
  are claimed in the cache (one transaction per call); a key another live process has claimed is
  parked and its answer awaited from the cache (polled with backoff, bounded by the claim's
  expiry) instead of being sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from backends.errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    ConnectionFailed,
    GpoError,
    RateLimited,
    Redirected,
    RequestTimeout,
    UnknownModel,
)
from backends.protocol import (
    Backend,
    Capabilities,
    Completion,
    EmbeddingBackend,
    Embeddings,
    Request,
    SamplingParams,
)
from backends.redaction import redact_completions
from engine.cache import DEFAULT_CLAIM_TTL_S, ClaimPoll, ResponseCache
from engine.chat_render import ChatRenderer
from engine.ledger import Ledger
from engine.rate_limits import AdaptiveWindow, RequestRateLimiter, TokenBucket
from engine.request_key import request_key

logger = logging.getLogger(__name__)


class Priority(IntEnum):
    """Lower values are served first."""

    OPTIMIZER = 0
    FOLLOW_UP = 10
    SCORING = 20


class RequestFailed(GpoError):
    """A request that could not be answered: retries exhausted or an error retrying cannot fix.

    `fatal` marks a failure of the endpoint itself (see the module docs): no later request can
    succeed either, so callers should stop rather than record it against one sample.
    """

    def __init__(self, reason: str, kind: str, attempts: int, *, fatal: bool = False) -> None:
        super().__init__(f"request failed after {attempts} attempt(s): {reason}")
        self.reason = reason
        self.kind = kind
        self.attempts = attempts
        self.fatal = fatal


class BudgetExhausted(GpoError):
    """The run's dollar or token budget is spent; no new request is sent."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Scheduling policy. `None` sizes derive from the backend's capabilities."""

    max_concurrency: int | None = None
    min_concurrency: int = 1
    adaptive_concurrency: bool = True
    max_batch_size: int = 32
    prompt_lists: bool = True
    chat_template: str | None = None
    max_retries: int = 8
    max_rate_limited_retries: int = 200
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    rate_window_s: float = 60.0
    budget_usd: float | None = None
    budget_tokens: int | None = None
    max_pending: int = 4096
    seed: int = 0
    share_cache_claims: bool = True
    claim_ttl_s: float = DEFAULT_CLAIM_TTL_S
    claim_poll_max_s: float = 1.0

    def window_for(self, capabilities: Capabilities) -> int:
        if self.max_concurrency is not None:
            return max(1, self.max_concurrency)
        known = capabilities.max_concurrency
        if known is None:
            return 64
        # Keep the server's waiting queue non-empty: a prompt-list call holds its slots until its
        # longest sequence ends, so some headroom above max_num_seqs keeps the batch full.
        return known if known <= 2 else known + known // 2 + self.max_batch_size


class _Item:
    """One queued request and the future its callers wait on."""

    __slots__ = (
        "attempts",
        "failing_since",
        "future",
        "key",
        "phase",
        "priority",
        "prompt",
        "rate_limited",
        "request",
        "solo",
    )

    def __init__(
        self,
        request: Request,
        key: bytes | None,
        prompt: str | None,
        future: asyncio.Future[Completion],
        priority: int,
        phase: str,
    ) -> None:
        self.request = request
        self.key = key
        self.prompt = prompt
        self.future = future
        self.priority = priority
        self.phase = phase
        self.attempts = 0
        self.rate_limited = 0
        self.solo = False
        self.failing_since: float | None = None


class RetryPolicy:
    """When a failed call is tried again, and after how long: one set of rules for every call
    the engine sends (generation and embeddings alike).

    - Credentials refused or a model the server does not serve condemn the endpoint (`fatal`).
    - Other errors that retrying cannot fix (`retryable` false) fail at once.
    - A 429 waits at least the server's `Retry-After`, plus up to half again as jitter so that a
      window of refused calls does not come back together; without it, and for every other
      error, exponential backoff with jitter. 429s have their own, larger bound on retries.

    Only decisions over an `EngineConfig` and a seeded random stream: no engine state.
    """

    def __init__(self, config: EngineConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng

    @staticmethod
    def is_fatal(error: BackendError) -> bool:
        """The endpoint itself is unusable: no later request can succeed either."""
        return isinstance(error, AuthenticationError | UnknownModel | Redirected)

    def spent(self, error: BackendError, attempts: int, rate_limited: int) -> bool:
        """Whether the retries are used up; `attempts` and `rate_limited` count this failure."""
        if isinstance(error, RateLimited):
            return rate_limited > self.config.max_rate_limited_retries
        return attempts > self.config.max_retries

    def delay(self, error: BackendError, earlier: int) -> float:
        """Seconds before the next try; `earlier`: failures of the same sort (429s or not)
        before this one."""
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        if retry_after is not None:
            return retry_after * (1.0 + 0.5 * self.rng.random())
        return self.backoff(earlier)

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: uniform in [c/2, c], c = min(max, base * 2**attempts).

        Jitter spreads the retries of a burst of failed calls; the lower half is cut off so that
        a retry never comes back almost at once to a server that just failed.
        """
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * (2**attempts))
        return self.rng.uniform(ceiling / 2, ceiling)


_QueueKey = tuple[int, SamplingParams, bool]


class Engine:
    """Answers requests through one backend under one scheduling policy."""

    def __init__(
        self,
        backend: Backend,
        config: EngineConfig | None = None,
        *,
        cache: ResponseCache | None = None,
        ledger: Ledger | None = None,
        owns_backend: bool = True,
    ) -> None:
        self.backend = backend
        self.config = config or EngineConfig()
        self.cache = cache
        self.ledger = ledger or Ledger()
        self._owns_backend = owns_backend
        capabilities = backend.capabilities
        self.capabilities = capabilities
        self.window = AdaptiveWindow(
            self.config.window_for(capabilities),
            self.config.min_concurrency,
            self.config.adaptive_concurrency,
        )
        self._use_lists = (
            self.config.prompt_lists and capabilities.prompt_lists and capabilities.completions
        )
        # Chats are rendered on the client only once the server agreed with the rendering.
        self._render: ChatRenderer | None = None
        if self.config.chat_template and capabilities.completions:
            self._render = ChatRenderer(self.config.chat_template, backend)
        self._identity = backend.identity
        self._model = backend.model
        self._rpm = (
            RequestRateLimiter(self.config.requests_per_minute, self.config.rate_window_s)
            if self.config.requests_per_minute
            else None
        )
        self._tpm = (
            TokenBucket(self.config.tokens_per_minute, self.config.rate_window_s)
            if self.config.tokens_per_minute
            else None
        )
        self._queues: dict[_QueueKey, deque[_Item]] = {}
        self._queued = 0
        self._in_flight = 0
        self._in_flight_by_key: dict[bytes, asyncio.Future[Completion]] = {}
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._paused_until = 0.0
        self._random = random.Random(self.config.seed)
        self._retry = RetryPolicy(self.config, self._random)
        self._closed = False
        self.http_calls = 0
        self._use_claims = cache is not None and self.config.share_cache_claims
        self._claimed: set[bytes] = set()
        self._to_release: list[bytes] = []
        self._parked: dict[bytes, list[_Item]] = {}
        self._parked_poller: asyncio.Task[None] | None = None
        self._fatal: RequestFailed | None = None
        self._reserved_tokens = 0.0
        self._reserved_usd = 0.0
        self._budget_stop: str | None = None
        self._last_success = float("-inf")

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._dispatcher is None:
            self._wakeup = asyncio.Event()
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def close(self) -> None:
        """Stop dispatching, fail what is still queued, wait for calls in flight, close."""
        if self._closed:
            return
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        if self._parked_poller is not None:
            self._parked_poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._parked_poller
        for queue in self._queues.values():
            for item in queue:
                self._fail(item, "the engine was closed before this request was sent", "closed")
        self._queues.clear()
        self._queued = 0
        for parked in self._parked.values():
            for item in parked:
                self._fail(item, "the engine was closed while another process answered", "closed")
        self._parked.clear()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        self._flush_releases()
        self.ledger.stop_clock()
        if self._owns_backend:
            await self.backend.close()

    # -- public API ----------------------------------------------------------------------------

    def budget_exhausted(self) -> str | None:
        """Why no new request may be sent, or None while the budget allows it."""
        if self._budget_stop is not None:
            return self._budget_stop
        config = self.config
        if config.budget_tokens is not None and self.ledger.spent_tokens >= config.budget_tokens:
            return f"token budget of {config.budget_tokens} spent"
        if config.budget_usd is not None and self.ledger.spent_usd() >= config.budget_usd:
            return f"dollar budget of ${config.budget_usd:g} spent"
        return None

    async def generate(
        self,
        request: Request,
        *,
        priority: int = Priority.SCORING,
        phase: str = "scoring",
    ) -> Completion:
        """The answer to `request`; raises `RequestFailed` or `BudgetExhausted`."""
        key = request_key(self._identity, request)
        if key is not None:
            if self.cache is not None:
                hit = self.cache.get(key)
                if hit is not None:
                    self.ledger.record_hit(
                        self._model, phase, hit.prompt_tokens, hit.completion_tokens
                    )
                    return hit
            shared = self._in_flight_by_key.get(key)
            if shared is not None and not shared.cancelled():
                self.ledger.record_dedup(self._model, phase)
                return await asyncio.shield(shared)
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise RequestFailed("the engine is closed", "closed", 0)
        if self.config.budget_usd is not None or self.config.budget_tokens is not None:
            reason = self._budget_stop or self.budget_exhausted()
            if reason is not None:
                raise BudgetExhausted(reason)
        if self._dispatcher is None:
            self.start()
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        prompt = request.prompt
        if request.messages is not None and self._render is not None:
            prompt = await self._render.prompt_for(request.messages)
        item = _Item(request, key, prompt, future, int(priority), phase)
        if key is not None:
            self._in_flight_by_key[key] = future
        self._enqueue(item)
        return await future

    async def generate_many(
        self,
        requests: Iterable[Request],
        *,
        priority: int = Priority.SCORING,
        phase: str = "scoring",
    ) -> list[Completion | RequestFailed]:
        """Answers in input order; a failed request's slot holds its `RequestFailed`.

        `requests` is consumed lazily and at most `max_pending` requests are awaited at once, so
        a generator of a million requests never becomes a million objects or coroutines: memory
        holds the answers and one window of pending work.
        """
        results: list[Completion | RequestFailed | None] = []
        feed = iter(requests)

        async def worker() -> None:
            for request in feed:
                index = len(results)
                results.append(None)
                try:
                    results[index] = await self.generate(request, priority=priority, phase=phase)
                except RequestFailed as failure:
                    results[index] = failure

        workers = self.config.max_pending
        if isinstance(requests, Sized):
            workers = min(workers, len(requests))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return results  # type: ignore[return-value]

    async def embed(
        self, texts: Sequence[str], *, model: str | None = None, phase: str = "embedding"
    ) -> Embeddings:
        """One `/v1/embeddings` call for `texts`, retried under the same `RetryPolicy` as
        generation calls (and paused by the same `Retry-After`); its usage goes to the ledger
        under `phase`. Raises `RequestFailed` (`fatal` for an endpoint failure, which stops the
        engine as it does for `generate`) or `BudgetExhausted`.

        Not queued, batched or cached here: a vector is not a `Completion`, so callers send one
        batch per call and keep their own vector cache (gpo's `CachedEmbedder` does).
        """
        backend = self.backend
        if not isinstance(backend, EmbeddingBackend):
            raise ConfigError(f"the endpoint {self._identity} does not serve embeddings")
        name = model or self._model
        loop = asyncio.get_running_loop()
        attempts = rate_limited = 0
        failing_since = loop.time()
        tokens = sum(len(text) for text in texts) / 4
        while True:  # bounded: every turn returns, raises or counts a failure towards the bound
            if self._fatal is not None:
                raise self._fatal
            if self._closed:
                raise RequestFailed("the engine is closed", "closed", attempts + rate_limited)
            reason = self.budget_exhausted()
            if reason is not None:
                raise BudgetExhausted(reason)
            pause = self._paused_until - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            if self._rpm is not None:
                await self._rpm.acquire()
            if self._tpm is not None:
                await self._tpm.acquire(tokens)
            started = loop.time()
            try:
                answer = await backend.embed(texts, model)
            except BackendError as error:
                if isinstance(error, RateLimited):
                    rate_limited += 1
                    if self._tpm is not None:
                        self._tpm.give_back(tokens)
                else:
                    attempts += 1
                outcome = self._after_embed_error(
                    error, attempts, rate_limited, failing_since, name, phase
                )
                if isinstance(outcome, RequestFailed):
                    raise outcome from error
                await asyncio.sleep(outcome)
                continue
            self._last_success = loop.time()
            self.http_calls += 1
            self.window.on_success(1)
            self.ledger.record_call(name, phase, self._last_success - started)
            self.ledger.record_answer(name, phase, answer.prompt_tokens, 0)
            return answer

    def _after_embed_error(
        self,
        error: BackendError,
        attempts: int,
        rate_limited: int,
        failing_since: float,
        model: str,
        phase: str,
    ) -> float | RequestFailed:
        """The seconds to wait before trying an embedding call again, or the failure to raise:
        the decisions `_on_error` makes for generation calls. `attempts` and `rate_limited`
        count this failure."""
        tries = attempts + rate_limited
        fatal = self._retry.is_fatal(error)
        spent = error.retryable and self._retry.spent(error, attempts, rate_limited)
        if spent and isinstance(error, ConnectionFailed) and self._last_success < failing_since:
            # Not one call got through while this one spent its retries: the endpoint is gone.
            error_reason, fatal = f"the endpoint is unreachable: {error}", True
        else:
            error_reason = str(error)
        if fatal:
            self._stop(RequestFailed(error_reason, error.kind, tries, fatal=True))
            self.ledger.record_failure(model, phase, error.kind)
            assert self._fatal is not None
            return self._fatal
        if not error.retryable or spent:
            self.ledger.record_failure(model, phase, error.kind)
            return RequestFailed(error_reason, error.kind, tries)
        self._on_congestion(error)
        rate_limited_now = isinstance(error, RateLimited)
        self.ledger.record_retry(model, phase, rate_limited_now)
        earlier = rate_limited - 1 if rate_limited_now else attempts - 1
        delay = self._retry.delay(error, earlier)
        logger.debug("retrying an embedding call in %.2f s after: %s", delay, error)
        return delay

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- scheduling ----------------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        params = item.request.params
        batchable = item.prompt is not None and self._use_lists and not item.solo
        queue_key = (item.priority, params, batchable)
        queue = self._queues.get(queue_key)
        if queue is None:
            queue = self._queues[queue_key] = deque()
        queue.append(item)
        self._queued += 1
        assert self._wakeup is not None
        self._wakeup.set()

    def _next_queue(self) -> tuple[_QueueKey, deque[_Item]] | None:
        best: tuple[_QueueKey, deque[_Item]] | None = None
        for queue_key, queue in self._queues.items():
            if queue and (best is None or queue_key[0] < best[0][0]):
                best = (queue_key, queue)
        return best

    async def _dispatch_loop(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        loop = asyncio.get_running_loop()
        while True:
            await wakeup.wait()
            wakeup.clear()
            while self._queued and self._in_flight < self.window.size:
                pause = self._paused_until - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                chosen = self._next_queue()
                if chosen is None:
                    break
                (_, params, batchable), queue = chosen
                room = self.window.size - self._in_flight
                take = min(room, self.config.max_batch_size, len(queue)) if batchable else 1
                items = [queue.popleft() for _ in range(max(1, take))]
                self._queued -= len(items)
                if not queue:
                    del self._queues[chosen[0]]
                if self._use_claims:
                    items = self._claim(items)
                    if not items:
                        continue
                reservation = (0.0, 0.0)
                if self.config.budget_usd is not None or self.config.budget_tokens is not None:
                    items, reservation = self._within_budget(items, params)
                    if not items:
                        continue
                self._in_flight += len(items)
                if self._rpm is not None:
                    await self._rpm.acquire()
                if self._tpm is not None:
                    await self._tpm.acquire(self._estimate_tokens(items, params))
                call = loop.create_task(self._send(items, params, reservation))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)

    # -- cross-process claims ------------------------------------------------------------------

    def _claim(self, items: list[_Item]) -> list[_Item]:
        """The items to send now: the others were answered meanwhile (resolved here) or are
        being answered by another process (parked until their answer is in the cache)."""
        assert self.cache is not None
        keys = [item.key for item in items if item.key is not None]
        if not keys:
            return items
        try:
            outcome = self.cache.claim_many(keys, self.config.claim_ttl_s)
        except Exception:  # claims save money; failing to take them must not lose work
            logger.exception("could not claim %d request(s) in the cache", len(keys))
            return items
        self._claimed.update(outcome.mine)
        if not outcome.answered and not outcome.elsewhere:
            return items
        elsewhere = set(outcome.elsewhere)
        send: list[_Item] = []
        for item in items:
            key = item.key
            if key is None:
                send.append(item)
            elif key in outcome.answered:
                self._resolve_from_cache(item, outcome.answered[key])
            elif key in elsewhere:
                self._parked.setdefault(key, []).append(item)
            else:
                send.append(item)
        if self._parked and (self._parked_poller is None or self._parked_poller.done()):
            self._parked_poller = asyncio.get_running_loop().create_task(self._poll_parked())
        return send

    def _resolve_from_cache(self, item: _Item, completion: Completion) -> None:
        self.ledger.record_hit(
            self._model, item.phase, completion.prompt_tokens, completion.completion_tokens
        )
        if item.key is not None:
            self._in_flight_by_key.pop(item.key, None)
        if not item.future.done():
            item.future.set_result(completion)

    async def _poll_parked(self) -> None:
        """Wait for answers other processes are computing; send what they gave up on."""
        assert self.cache is not None
        delay = 0.02
        while self._parked:
            await asyncio.sleep(delay)
            keys = list(self._parked)
            try:
                poll = self.cache.poll_claims(keys)
            except Exception:
                logger.exception("could not read claims; sending %d request(s) here", len(keys))
                poll = ClaimPoll(free=keys)
            for key, completion in poll.answered.items():
                for item in self._parked.pop(key, ()):
                    self._resolve_from_cache(item, completion)
            for key in poll.free:
                for item in self._parked.pop(key, ()):
                    self._enqueue(item)
            progressed = poll.answered or poll.free
            delay = 0.02 if progressed else min(delay * 2, self.config.claim_poll_max_s)

    def _flush_releases(self) -> None:
        """Give up the claims of requests that failed here, so others need not wait."""
        keys, self._to_release = self._to_release, []
        if keys and self.cache is not None:
            try:
                self.cache.release_many(keys)
            except Exception:  # the claims expire on their own
                logger.exception("could not release %d claim(s)", len(keys))

    def _estimate_tokens(self, items: Sequence[_Item], params: SamplingParams) -> float:
        return sum(sum(self._estimate(item, params)) for item in items)

    @staticmethod
    def _estimate(item: _Item, params: SamplingParams) -> tuple[float, float]:
        """(prompt tokens, most completion tokens) of one request, as hosted APIs count them."""
        if item.prompt is not None:
            chars = len(item.prompt)
        else:
            chars = sum(len(content) + 8 for _, content in item.request.messages or ())
        return chars / 4, float(params.max_tokens * params.n)

    # -- budgets -------------------------------------------------------------------------------

    def _within_budget(
        self, items: list[_Item], params: SamplingParams
    ) -> tuple[list[_Item], tuple[float, float]]:
        """The items that may still be sent, and their cost, reserved until their call returns.

        Spending counts what is in flight at its most (prompt + max_tokens), so a run stops at
        its cap, not a window of calls past it: items are accepted while spent + reserved is
        below the cap (the one that crosses it is the last), then spending stops for good and
        every later request fails with `BudgetExhausted`.
        """
        config = self.config
        reason = self._budget_stop
        accepted: list[_Item] = []
        tokens = usd = 0.0
        if reason is None:
            spent_tokens = self.ledger.spent_tokens + self._reserved_tokens
            spent_usd = 0.0
            price = None
            if config.budget_usd is not None:
                spent_usd = self.ledger.spent_usd() + self._reserved_usd
                price = self.ledger.prices.price(self._model)
            for item in items:
                if config.budget_tokens is not None and spent_tokens + tokens >= (
                    config.budget_tokens
                ):
                    reason = f"token budget of {config.budget_tokens} reached"
                elif config.budget_usd is not None and spent_usd + usd >= config.budget_usd:
                    reason = f"dollar budget of ${config.budget_usd:g} reached"
                if reason is not None:
                    break
                prompt_tokens, completion_tokens = self._estimate(item, params)
                accepted.append(item)
                tokens += prompt_tokens + completion_tokens
                usd += price.token_cost(prompt_tokens, completion_tokens) if price else 0.0
        if reason is not None:
            if self._budget_stop is None:
                self._budget_stop = reason
                logger.warning(
                    "%s: no new request is sent; %d request(s) in flight are still counted",
                    reason,
                    self._in_flight,
                )
            for item in items[len(accepted) :]:
                self._fail_with(item, BudgetExhausted(reason))
        self._reserved_tokens += tokens
        self._reserved_usd += usd
        return accepted, (tokens, usd)

    async def _call_backend(
        self, items: Sequence[_Item], params: SamplingParams
    ) -> list[Completion]:
        backend = self.backend
        if params.n > 1 and not self.capabilities.multiple_choices:
            return await self._call_one_choice_at_a_time(items, params)
        if items[0].prompt is not None:
            return await backend.complete([item.prompt for item in items], params)  # type: ignore[misc]
        return [await backend.chat(items[0].request.messages or (), params)]

    async def _call_one_choice_at_a_time(
        self, items: Sequence[_Item], params: SamplingParams
    ) -> list[Completion]:
        """For endpoints that ignore `n`: n calls of one choice each, merged."""
        merged: list[Completion] = []
        for item in items:
            texts: list[str] = []
            reasons: list[str] = []
            prompt_tokens = completion_tokens = 0
            for choice in range(params.n):
                seed = None if params.seed is None else params.seed + choice
                single = replace(params, n=1, seed=seed)
                if item.prompt is not None:
                    (answer,) = await self.backend.complete([item.prompt], single)
                else:
                    answer = await self.backend.chat(item.request.messages or (), single)
                texts.append(answer.text)
                reasons.extend(answer.finish_reasons)
                prompt_tokens += answer.prompt_tokens
                completion_tokens += answer.completion_tokens
            merged.append(
                Completion(tuple(texts), prompt_tokens, completion_tokens, tuple(reasons))
            )
        return merged

    async def _send(
        self, items: list[_Item], params: SamplingParams, reservation: tuple[float, float]
    ) -> None:
        try:
            await self._send_call(items, params)
        finally:
            self._reserved_tokens -= reservation[0]
            self._reserved_usd -= reservation[1]

    async def _send_call(self, items: list[_Item], params: SamplingParams) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            completions = await self._call_backend(items, params)
        except BackendError as error:
            self._in_flight -= len(items)
            self._on_error(items, error)
            self._wake()
            return
        except asyncio.CancelledError:
            self._in_flight -= len(items)
            for item in items:
                self._fail(item, "cancelled while in flight", "cancelled")
            raise
        except Exception as error:  # a bug or an unexpected library error: never hang callers
            self._in_flight -= len(items)
            logger.exception("unexpected error while sending %d request(s)", len(items))
            for item in items:
                self._fail(item, f"unexpected {type(error).__name__}: {error}", "internal")
            self._wake()
            return
        # Keys the run loaded never enter the cache, a record or a score, even if echoed.
        completions = redact_completions(completions)
        self._last_success = loop.time()
        latency = self._last_success - started
        self._in_flight -= len(items)
        self.http_calls += 1
        self.window.on_success(len(items))
        ledger = self.ledger
        model = self._model
        ledger.record_call(model, items[0].phase, latency)
        if self.cache is not None:
            entries = [
                (item.key, completion)
                for item, completion in zip(items, completions, strict=True)
                if item.key is not None
            ]
            try:
                self.cache.put_many(entries)
            except Exception as error:
                # These answers still reach their callers, but no further answer is bought that
                # could not be kept either.
                self._stop(
                    RequestFailed(
                        f"cannot save answers to the cache {self.cache.path}: {error}; stopped "
                        "sending requests so that no more paid answers are lost",
                        "cache",
                        1,
                        fatal=True,
                    )
                )
            if self._claimed:
                for key, _ in entries:
                    self._claimed.discard(key)
        by_key = self._in_flight_by_key
        for item, completion in zip(items, completions, strict=True):
            ledger.record_answer(
                model, item.phase, completion.prompt_tokens, completion.completion_tokens
            )
            if item.key is not None:
                by_key.pop(item.key, None)
            if not item.future.done():
                item.future.set_result(completion)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- failures ------------------------------------------------------------------------------

    def _on_error(self, items: list[_Item], error: BackendError) -> None:
        if self._retry.is_fatal(error):
            self._stop(RequestFailed(str(error), error.kind, 1, fatal=True), items)
            return
        if not error.retryable:
            if len(items) > 1:
                # One invalid prompt makes the whole list call fail: resend each on its own so
                # that only the bad one fails.
                for item in items:
                    item.solo = True
                    self._enqueue(item)
                return
            for item in items:
                self._fail(item, str(error), error.kind)
            return
        rate_limited = isinstance(error, RateLimited)
        self._on_congestion(error)
        loop = asyncio.get_running_loop()
        delay = self._retry.delay(
            error, max(item.rate_limited if rate_limited else item.attempts for item in items)
        )
        if rate_limited and self._tpm is not None:
            self._tpm.give_back(self._estimate_tokens(items, items[0].request.params))
        retry: list[_Item] = []
        now = loop.time()
        for item in items:
            if item.failing_since is None:
                item.failing_since = now
            # A 429 is the server pacing us, not the request failing: it has its own, larger
            # bound, so a long storm ends with answers while a broken server still ends.
            if rate_limited:
                item.rate_limited += 1
            else:
                item.attempts += 1
            exhausted = self._retry.spent(error, item.attempts, item.rate_limited)
            if (
                exhausted
                and isinstance(error, ConnectionFailed)
                and self._last_success < item.failing_since
            ):
                # Not one call got through while this request spent all its retries: the
                # endpoint is gone, not flapping.
                attempts = item.attempts + item.rate_limited
                reason = f"the endpoint is unreachable: {error}"
                self._stop(RequestFailed(reason, error.kind, attempts, fatal=True), items)
                return
            if exhausted:
                attempts = item.attempts + item.rate_limited
                self._fail_with(item, RequestFailed(str(error), error.kind, attempts))
            else:
                self.ledger.record_retry(self._model, item.phase, rate_limited)
                retry.append(item)
        if retry:
            logger.debug("retrying %d request(s) in %.2f s after: %s", len(retry), delay, error)
            asyncio.get_running_loop().call_later(delay, self._requeue, retry)

    def _requeue(self, items: list[_Item]) -> None:
        if self._fatal is not None:
            for item in items:
                self._fail_with(item, self._fatal)
            return
        if self._closed:
            for item in items:
                self._fail(
                    item, "the engine was closed while this request waited to retry", "closed"
                )
            return
        for item in items:
            self._enqueue(item)

    def _on_congestion(self, error: BackendError) -> None:
        """Shrink the window on a 429, or on a timeout; pause all calls until `Retry-After`."""
        if isinstance(error, RateLimited):
            self.window.on_congestion()
            if error.retry_after is not None:
                # The server said when: no call is sent before then.
                until = asyncio.get_running_loop().time() + error.retry_after
                self._paused_until = max(self._paused_until, until)
        elif isinstance(error, RequestTimeout) and self.window.size > self.window.maximum // 4:
            # A timeout is overload or a call the server dropped on the floor; the second is no
            # reason to starve the server, so timeouts alone keep a quarter of the window.
            self.window.on_congestion()

    def _stop(self, error: RequestFailed, items: Sequence[_Item] = ()) -> None:
        """The endpoint is unusable: fail `items`, everything queued or parked, and every later
        request with `error`; log it once."""
        if self._fatal is None:
            self._fatal = error
            logger.error("stopping: %s", error.reason)
        for item in items:
            self._fail_with(item, self._fatal)
        for queue in self._queues.values():
            for item in queue:
                self._fail_with(item, self._fatal)
        self._queues.clear()
        self._queued = 0
        for parked in self._parked.values():
            for item in parked:
                self._fail_with(item, self._fatal)
        self._parked.clear()

    @property
    def fatal_error(self) -> RequestFailed | None:
        """The endpoint failure that stopped this engine, if any."""
        return self._fatal

    def _fail(self, item: _Item, reason: str, kind: str) -> None:
        self._fail_with(item, RequestFailed(reason, kind, item.attempts + 1))

    def _fail_with(self, item: _Item, error: GpoError) -> None:
        kind = error.kind if isinstance(error, RequestFailed) else "budget"
        self.ledger.record_failure(self._model, item.phase, kind)
        if item.key is not None:
            self._in_flight_by_key.pop(item.key, None)
            if item.key in self._claimed:
                self._claimed.discard(item.key)
                self._to_release.append(item.key)
                if len(self._to_release) == 1 and not self._closed:
                    asyncio.get_running_loop().call_soon(self._flush_releases)
        if not item.future.done():
            item.future.set_exception(error)
            # Mark retrieved: a caller that was cancelled must not log "exception never retrieved".
            item.future.exception()

    def describe(self) -> dict[str, Any]:
        """The policy in effect, for run directories and logs (no credentials)."""
        return {
            "endpoint": self._identity,
            "window": self.window.maximum,
            "prompt_lists": self._use_lists,
            **(self._render.describe() if self._render else {"chat_template": None}),
            "max_batch_size": self.config.max_batch_size,
            "requests_per_minute": self.config.requests_per_minute,
            "tokens_per_minute": self.config.tokens_per_minute,
        }
