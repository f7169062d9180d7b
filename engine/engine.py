"""The engine: one bounded window of work in flight, shared by every caller.

`Engine.generate(request)` answers one request; callers await it concurrently and the engine
decides how the work reaches the server:

- Cache first (a hit costs nothing), then in-flight de-duplication (identical requests share one
  call), then a priority queue. Queues are kept per (priority, sampling settings) so that requests
  that can share a call sit together; the dispatcher always serves the most urgent queue first,
  oldest first among equals.
- One concurrency window counts sequences in flight, not calls and not candidates; it is sized for
  the server (a little above vLLM's `max_num_seqs`, so the server never waits for the client) and
  shrinks and regrows by AIMD on 429s and timeouts; when nobody gave its size, it is found by
  measurement (`engine.adaptive_window`, with vLLM's `/metrics` where there is one).
- Completion requests, and chats rendered with a known chat template, travel as prompt lists: up
  to `max_batch_size` prompts in one `/v1/completions` call (`engine.fan_out`, which also sends
  `n` as n calls to endpoints that ignore it). Per-call CPU is what limits a Python client, so
  this is the lever that keeps the client far below the server's capacity.
- Failures follow `engine.retry_policy` (exponential backoff with jitter, never sooner than
  `Retry-After`); a 429 pauses all dispatch until the server's reset. A call refused as invalid
  (4xx) is split so that one bad prompt cannot sink the others, and that prompt fails once,
  without retries; a list the server refuses as a list is split once and lists are turned off
  (`engine.list_fallback`). A request that finally fails raises `RequestFailed` with its reason;
  nothing is dropped silently.
- `Engine.embed(texts)` sends one `/v1/embeddings` call under the same rules (the same policy,
  the same pause on `Retry-After`, the same fatal errors, the same budget) and counts it in the
  ledger.
- Some failures condemn the endpoint, not one request: credentials refused, a model the server
  does not serve, a server that cannot be reached once retries are spent, answers that cannot be
  saved to the cache. The first one stops the engine: it is raised as a `RequestFailed` with
  `fatal=True`, once per waiting caller, no further call is sent, and callers can stop the run
  with one clear error instead of marking every remaining sample failed.
- A run's `Budget` (`engine.budget`), shared by its engines, reserves each call's estimated cost
  before it is sent; once spent, every engine sharing it refuses new requests with
  `BudgetExhausted`.
- `engine.batch` (a `engine.batch_api.BatchRunner`): cache misses go through the Batch API.
- Answers are committed to the cache as each call returns, before callers see them; processes
  sharing one cache file claim keys before sending them (`engine.cache_claims`), so none pays
  twice for an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable, Sequence, Sized
from typing import Any

from backends.errors import BackendError, ConfigError, GpoError, RateLimited
from backends.protocol import (
    Backend,
    Completion,
    EmbeddingBackend,
    Embeddings,
    Request,
    SamplingParams,
)
from backends.redaction import redact_completions
from engine.adaptive_window import MeasuredWindow
from engine.batch_api import BatchRunner
from engine.budget import NO_RESERVATION, Budget, BudgetExhausted, Reservation
from engine.cache import ResponseCache
from engine.cache_claims import CacheClaims
from engine.chat_render import ChatRenderer
from engine.config import EngineConfig
from engine.embedding_calls import EmbeddingCalls
from engine.fan_out import call_backend
from engine.ledger import Ledger
from engine.list_fallback import PromptListSupport
from engine.pacing import Pacing
from engine.queues import Priority, QueuedRequest, RequestQueues
from engine.rate_limits import AdaptiveWindow
from engine.request_key import request_key
from engine.retry_policy import Action, RequestFailed
from engine.server_identity import server_record, with_client_template
from engine.server_load import ServerLoadProbe
from engine.token_estimate import TokenEstimator

logger = logging.getLogger(__name__)

__all__ = ["BudgetExhausted", "Engine", "EngineConfig", "Priority", "RequestFailed"]


class Engine:
    """Answers requests through one backend under one scheduling policy.

    `ledger` and `budget` are usually the run's, shared by all its engines; a budget counts the
    spend of its own ledger, so it is the engine's ledger too (given alone, it supplies it).
    """

    def __init__(
        self,
        backend: Backend,
        config: EngineConfig | None = None,
        *,
        cache: ResponseCache | None = None,
        ledger: Ledger | None = None,
        budget: Budget | None = None,
        owns_backend: bool = True,
    ) -> None:
        if budget is not None and ledger is not None and budget.ledger is not ledger:
            raise ConfigError("a Budget counts its own ledger's spend: pass the same ledger")
        self.backend = backend
        self.config = config or EngineConfig()
        self.cache = cache
        self.ledger = ledger or (budget.ledger if budget is not None else Ledger())
        self.budget = budget
        self._owns_backend = owns_backend
        capabilities = backend.capabilities
        self.capabilities = capabilities
        self.pacing = Pacing(
            self._make_window(),
            requests_per_minute=self.config.requests_per_minute,
            tokens_per_minute=self.config.tokens_per_minute,
            rate_window_s=self.config.rate_window_s,
        )
        self.prompt_lists = PromptListSupport(
            self.config.prompt_lists and capabilities.prompt_lists and capabilities.completions,
            getattr(backend, "base_url", backend.identity),
            confirmed=capabilities.lists_confirmed,
        )
        # Chats are rendered on the client only once the server agreed with the rendering.
        self._render: ChatRenderer | None = None
        if self.config.chat_template and capabilities.completions:
            self._render = ChatRenderer(self.config.chat_template, backend)
        template = self._render.template if self._render is not None else None
        self._identity = with_client_template(backend.identity, template)  # keys see the model
        self._model = backend.model
        self._queues = RequestQueues()
        self._tokens = TokenEstimator()
        self._in_flight = 0
        self._in_flight_by_key: dict[bytes, asyncio.Future[Completion]] = {}
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._random = random.Random(self.config.seed)
        self._retry = self.config.retry_policy(self._random)
        self._closed = False
        self._claims: CacheClaims[QueuedRequest] | None = None
        if cache is not None and self.config.share_cache_claims:
            self._claims = CacheClaims(
                cache,
                on_answered=self._resolve_from_cache,
                on_free=self._enqueue,
                ttl_s=self.config.claim_ttl_s,
                poll_max_s=self.config.claim_poll_max_s,
            )
        self._fatal: RequestFailed | None = None
        self.batch: BatchRunner | None = None  # set (started) by callers: see engine.batch_api
        if hasattr(backend, "rate_limit_observer"):
            backend.rate_limit_observer = self.pacing.on_headers
        self._probe: ServerLoadProbe | None = None
        metrics = getattr(backend, "metrics_text", None)
        if isinstance(self.window, MeasuredWindow) and metrics is not None:
            self._probe = ServerLoadProbe(metrics, self.window, self.config.max_batch_size)

    def _make_window(self) -> AdaptiveWindow | MeasuredWindow:
        """A measured window when nobody gave its size, else AIMD under the known size."""
        config, capabilities = self.config, self.backend.capabilities
        if config.measures_window(capabilities):
            return MeasuredWindow(config.window_start, config.min_concurrency, config.window_limit)
        return AdaptiveWindow(
            config.window_for(capabilities), config.min_concurrency, config.adaptive_concurrency
        )

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
            if self._probe is not None:
                self._probe.start()

    async def close(self) -> None:
        """Stop dispatching, fail what is still queued, wait for calls in flight, close."""
        if self._closed:
            return
        self._closed = True
        if self._claims is not None:
            self._claims.begin_close()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        if self._probe is not None:
            await self._probe.stop()
        await self.batch.close() if self.batch is not None else None
        parked = await self._claims.close() if self._claims is not None else []
        for item in self._queues.drain():
            self._fail(item, "the engine was closed before this request was sent", "closed")
        for item in parked:
            self._fail(item, "the engine was closed while another process answered", "closed")
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        if self._claims is not None:
            self._claims.flush()
        self.ledger.stop_clock()
        if self._owns_backend:
            await self.backend.close()

    # -- public API ----------------------------------------------------------------------------

    def budget_exhausted(self) -> str | None:
        """Why the run's budget lets no new request be sent, or None while it allows them."""
        return self.budget.exhausted() if self.budget is not None else None

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
        self._check_open(0)
        if self.batch is not None and key is not None and self.batch.applies():
            return await self.batch.answer(key, request, phase)
        if self._dispatcher is None:
            self.start()
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        prompt = request.prompt
        if request.messages is not None and self._render is not None:
            prompt = await self._render.prompt_for(request.messages)
        item = QueuedRequest(request, key, prompt, future, int(priority), phase)
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
        calls = EmbeddingCalls(
            backend,
            pacing=self.pacing,
            retry=self._retry,
            ledger=self.ledger,
            check_open=self._check_open,
            stop=self._stop,
        )
        return await calls.embed(texts, model, model or self._model, phase)

    def _check_open(self, attempts: int) -> None:
        """Raise why no new call may be sent: the endpoint failed, the engine is closed, or
        the run's budget is spent."""
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise RequestFailed("the engine is closed", "closed", attempts)
        if self.budget is not None:
            self.budget.check()

    @property
    def window(self) -> AdaptiveWindow | MeasuredWindow:
        return self.pacing.window

    @property
    def http_calls(self) -> int:
        """Calls that got an answer (generation and embeddings)."""
        return self.pacing.http_calls

    @property
    def queued(self) -> int:
        return len(self._queues)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def fatal_error(self) -> RequestFailed | None:
        """The endpoint failure that stopped this engine, if any."""
        return self._fatal

    def describe(self) -> dict[str, Any]:
        """The policy in effect, for run directories and logs (no credentials)."""
        return {
            "endpoint": self._identity,
            **server_record(self.backend),
            "window": self.window.maximum,
            "window_measured": isinstance(self.window, MeasuredWindow),
            **self.prompt_lists.describe(),
            **(self._render.describe() if self._render else {"chat_template": None}),
            "max_batch_size": self.config.max_batch_size,
            "requests_per_minute": self.config.requests_per_minute,
            "tokens_per_minute": self.config.tokens_per_minute,
        }

    # -- scheduling ----------------------------------------------------------------------------

    def _enqueue(self, item: QueuedRequest) -> None:
        batchable = item.prompt is not None and self.prompt_lists.enabled and not item.solo
        self._queues.put(item, batchable)
        assert self._wakeup is not None
        self._wakeup.set()

    async def _dispatch_loop(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        loop = asyncio.get_running_loop()
        while True:
            await wakeup.wait()
            wakeup.clear()
            while self._queues and self._in_flight < self.window.size:
                pause = self.pacing.pause_left()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                room = self.window.size - self._in_flight
                batch = self.prompt_lists.max_batch(self.config.max_batch_size)
                params, items = self._queues.take(room, batch)
                if self._claims is not None:
                    items = self._claims.claim(items)
                    if not items:
                        continue
                reservation = NO_RESERVATION
                if self.budget is not None and self.budget.capped:
                    items, reservation = self._reserve(items, params)
                    if not items:
                        continue
                self._in_flight += len(items)
                tokens = self._tokens.call(items, params) if self.pacing.counts_tokens else 0.0
                await self.pacing.admit(tokens)
                call = loop.create_task(self._send(items, params, reservation))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)

    def _reserve(
        self, items: list[QueuedRequest], params: SamplingParams
    ) -> tuple[list[QueuedRequest], Reservation]:
        """The items the shared budget still lets through, and their reservation (held until
        their call returns); the others fail with `BudgetExhausted`."""
        assert self.budget is not None
        estimates = [self._tokens.request(item, params) for item in items]
        accepted, reservation = self.budget.reserve(self._model, estimates, self._in_flight)
        if accepted < len(items):
            stop = BudgetExhausted(self.budget.exhausted() or "budget spent")
            for item in items[accepted:]:
                self._fail_with(item, stop)
        return items[:accepted], reservation

    # -- calls ---------------------------------------------------------------------------------

    async def _send(
        self, items: list[QueuedRequest], params: SamplingParams, reservation: Reservation
    ) -> None:
        try:
            await self._send_call(items, params)
        finally:
            # An answer's usage is in the ledger by now (commit); a failure's never is.
            if self.budget is not None:
                self.budget.release(reservation)

    async def _send_call(self, items: list[QueuedRequest], params: SamplingParams) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A call is one prompt list or one chat (chats without a template never share a call).
        prompts = [item.prompt for item in items if item.prompt is not None] or None
        try:
            completions = await call_backend(
                self.backend,
                params,
                prompts,
                items[0].request.messages or (),
                honours_n=self.capabilities.multiple_choices,
            )
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
        answered = self.pacing.on_answer(len(items), started, self._in_flight)
        if self.pacing.counts_tokens:
            self._tokens.learn(items, completions)
        self.prompt_lists.answered(items)
        self._in_flight -= len(items)
        self.ledger.record_call(self._model, items[0].phase, answered - started)
        self._store(items, completions)
        self._deliver(items, completions)
        self._wake()

    def _store(self, items: Sequence[QueuedRequest], completions: Sequence[Completion]) -> None:
        """Commit a call's answers to the cache before any caller sees them."""
        if self.cache is None:
            return
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
        if self._claims is not None:
            self._claims.answered(key for key, _ in entries)

    def _deliver(self, items: Sequence[QueuedRequest], completions: Sequence[Completion]) -> None:
        """Count each answer in the ledger and hand it to its callers."""
        by_key = self._in_flight_by_key
        for item, completion in zip(items, completions, strict=True):
            self.ledger.record(self._model, item.phase, completion)
            if item.key is not None:
                by_key.pop(item.key, None)
            if not item.future.done():
                item.future.set_result(completion)

    def _resolve_from_cache(self, item: QueuedRequest, completion: Completion) -> None:
        """Another process answered `item` meanwhile: its answer, from the cache, at no cost."""
        self.ledger.record_hit(
            self._model, item.phase, completion.prompt_tokens, completion.completion_tokens
        )
        if item.key is not None:
            self._in_flight_by_key.pop(item.key, None)
        if not item.future.done():
            item.future.set_result(completion)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- failures ------------------------------------------------------------------------------

    def _on_error(self, items: list[QueuedRequest], error: BackendError) -> None:
        if not error.retryable:
            if self._retry.is_fatal(error):
                self._stop(RequestFailed(str(error), error.kind, 1, fatal=True), items)
            elif not self._split(items, error):
                for item in items:
                    self._fail(item, str(error), error.kind)
            return
        if self._split(items, error):
            return
        rate_limited = isinstance(error, RateLimited)
        self.pacing.on_congestion(error)
        delay = self._retry.delay(error, max(item.history.earlier(error) for item in items))
        if rate_limited:
            self.pacing.give_back(self._tokens.call(items, items[0].request.params))
        retry: list[QueuedRequest] = []
        now = asyncio.get_running_loop().time()
        for item in items:
            # A 429 is the server pacing us, not the request failing: it counts apart, with its
            # own, larger bound, so a long storm ends with answers while a broken server ends.
            item.history = item.history.after(error, now)
            verdict = self._retry.decide(error, item.history, self.pacing.last_success)
            if verdict.action is Action.STOP:
                failure = RequestFailed(verdict.reason, error.kind, item.history.tries, fatal=True)
                self._stop(failure, items)
                return
            if verdict.action is Action.FAIL:
                failure = RequestFailed(verdict.reason, error.kind, item.history.tries)
                self._fail_with(item, failure)
            else:
                self.ledger.record_retry(self._model, item.phase, rate_limited)
                retry.append(item)
        if retry:
            logger.debug("retrying %d request(s) in %.2f s after: %s", len(retry), delay, error)
            asyncio.get_running_loop().call_later(delay, self._requeue, retry)

    def _split(self, items: list[QueuedRequest], error: BackendError) -> bool:
        """Resend a failed list prompt by prompt when the list may be the cause (an invalid
        prompt, or a server that refuses lists: `engine.list_fallback`); True if it was split."""
        if not self.prompt_lists.should_split(len(items), error):
            return False
        self.prompt_lists.split(items, error)
        for item in items:
            self._enqueue(item)
        return True

    def _requeue(self, items: list[QueuedRequest]) -> None:
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

    def _stop(self, error: RequestFailed, items: Sequence[QueuedRequest] = ()) -> RequestFailed:
        """The endpoint is unusable: fail `items`, everything queued or parked, and every later
        request with `error`; log it once. Returns the failure that stopped the engine."""
        if self._fatal is None:
            self._fatal = error
            logger.error("stopping: %s", error.reason)
        for item in items:
            self._fail_with(item, self._fatal)
        for item in self._queues.drain():
            self._fail_with(item, self._fatal)
        for item in self._claims.take_parked() if self._claims is not None else ():
            self._fail_with(item, self._fatal)
        return self._fatal

    def _fail(self, item: QueuedRequest, reason: str, kind: str) -> None:
        self._fail_with(item, RequestFailed(reason, kind, item.history.attempts + 1))

    def _fail_with(self, item: QueuedRequest, error: GpoError) -> None:
        kind = error.kind if isinstance(error, RequestFailed) else "budget"
        self.ledger.record_failure(self._model, item.phase, kind)
        if item.key is not None:
            self._in_flight_by_key.pop(item.key, None)
            if self._claims is not None:
                self._claims.give_up(item.key)
        if not item.future.done():
            item.future.set_exception(error)
            # Mark retrieved: a caller that was cancelled must not log "exception never retrieved".
            item.future.exception()
