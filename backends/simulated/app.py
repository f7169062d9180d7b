"""The simulated server's HTTP routes and the state they share (one instance per server).

Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `POST /v1/embeddings`,
`GET /v1/models`, `GET /health`, `GET /metrics`, and two control routes for out-of-process use:
`POST /sim/down` (`{"seconds": N}`: crash now, listen again after N real seconds) and
`POST /sim/restart`. The Batch API's routes (`/v1/files`, `/v1/batches`) are in `batch_api.py`.

A generation request goes: API key (401) -> JSON body (400) -> validation (400/404, the
`X-GPO-Purpose` header included) -> rate limits (429, costs nothing) -> fault draw -> answers ->
the step model (unless zero-latency) -> response. The purpose header alone decides whether a
prompt is answered as an optimizer meta-prompt (see `answers.py`). Answers are computed when the
request arrives (they decide output lengths); the response is sent when the simulated GPU has
generated every sequence. A client that disconnects aborts its sequences, freeing their slots, as
vLLM does. HTTP statuses are counted per endpoint; 499 means no answer was sent (connection
dropped, client gone, or crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

import backends.simulated.faults as fault_delivery
from backends.errors import BackendError, ClientRequestError, ConnectionFailed
from backends.protocol import PURPOSE_HEADER, Purpose
from backends.simulated.answer_key import AnswerKey
from backends.simulated.answers import AnswerSynthesizer, GeneratedText
from backends.simulated.batch_api import BatchApi
from backends.simulated.batching import FINISHED, ContinuousBatcher, SequenceWork
from backends.simulated.config import SimulatedServerConfig
from backends.simulated.embeddings import embed_text
from backends.simulated.faults import FaultInjector, FaultKind
from backends.simulated.metrics import ServerCounters, render_metrics
from backends.simulated.openai_schema import (
    GenerationRequest,
    chat_body,
    completion_body,
    models_body,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
    render_chat_body,
    tokenize_body,
)
from backends.simulated.prefix_cache import PrefixCache
from backends.simulated.rate_limits import RateDecision, RateLimiter
from backends.simulated.step_loop import StepLoop
from backends.simulated.tokens import count_tokens, generated_block_hashes, prefix_block_hashes

logger = logging.getLogger(__name__)

NO_ANSWER_STATUS = 499
_JSON = "application/json"
_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}

ControlAction = Callable[[float | None], Awaitable[None]]


class _Ticket:
    """One HTTP request's sequences in the step model; its future resolves when all finish."""

    __slots__ = ("future", "remaining")

    def __init__(self, future: asyncio.Future[None], remaining: int) -> None:
        self.future = future
        self.remaining = remaining


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type=_JSON, headers=headers
    )


def error_response(
    message: str,
    status: int,
    *,
    code: int | str | None = None,
    error_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=fault_delivery.error_body(
            message,
            error_type or _ERROR_TYPES.get(status, "Error"),
            status if code is None else code,
        ),
        status=status,
        content_type=_JSON,
        headers=headers,
    )


def _purpose(request: web.Request) -> Purpose | None:
    """The request's `X-GPO-Purpose`, or None; an unknown value is the client's error (400)."""
    value = request.headers.get(PURPOSE_HEADER)
    if value is None:
        return None
    try:
        return Purpose(value.strip())
    except ValueError:
        known = ", ".join(purpose.value for purpose in Purpose)
        raise ClientRequestError(
            f"unknown {PURPOSE_HEADER} header {value[:40]!r}; known purposes: {known}", status=400
        ) from None


class SimulatedApp:
    """Request handlers plus the simulated model's state (step model, caches, limits, faults)."""

    def __init__(
        self,
        config: SimulatedServerConfig,
        answer_key: AnswerKey | None,
        *,
        take_down: ControlAction,
        restart: ControlAction,
    ) -> None:
        self.config = config
        self.counters = ServerCounters()
        self.synthesizer = AnswerSynthesizer(config.output_lengths, answer_key)
        self.limiter = (
            RateLimiter(config.rate_limits, config.time_scale)
            if config.rate_limits.enabled
            else None
        )
        self.faults = FaultInjector(config.faults)
        self.prefix_cache: PrefixCache | None = None
        self.batcher: ContinuousBatcher | None = None
        self.step_loop: StepLoop | None = None
        if not config.zero_latency:
            if config.enable_prefix_caching:
                self.prefix_cache = PrefixCache(config.kv_cache_blocks, config.block_size)
            self.batcher = ContinuousBatcher(config, self.prefix_cache)
            self.step_loop = StepLoop(self.batcher, config.time_scale, self._sequence_finished)
        self._tickets: set[_Ticket] = set()
        self._crashed = asyncio.Event()
        self._request_ids = itertools.count(1)
        self._take_down = take_down
        self._restart = restart
        self._control_tasks: set[asyncio.Task[None]] = set()
        self.batch_api = BatchApi(config, self._answers)
        self.application = self._build_application()

    def _build_application(self) -> web.Application:
        app = web.Application(middlewares=[self._count_requests], client_max_size=64 * 1024**2)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/apply-template", self.apply_template)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/sim/down", self.control_down)
        app.router.add_post("/sim/restart", self.control_restart)
        self.batch_api.add_routes(app)
        return app

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.step_loop is not None:
            self.step_loop.start()

    async def close(self) -> None:
        self.crash()
        for task in list(self._control_tasks):
            task.cancel()
        await self.batch_api.close()
        if self.step_loop is not None:
            await self.step_loop.stop()

    def crash(self) -> None:
        """Lose all work in progress, as a killed server does; caches and limits start over."""
        if self.batcher is not None:
            self.counters.sequences_aborted += len(self.batcher.drop_all())
        error = ConnectionFailed("the simulated server went down")
        for ticket in self._tickets:
            if not ticket.future.done():
                ticket.future.set_exception(error)
        self._tickets.clear()
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        if self.limiter is not None:
            self.limiter.reset()
        self._crashed.set()
        self._crashed = asyncio.Event()

    # -- middleware and small routes ---------------------------------------------------------

    @web.middleware
    async def _count_requests(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource
        endpoint = route.canonical if route is not None else "other"
        status = NO_ANSWER_STATUS
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.counters.http_requests[(endpoint, status)] += 1

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        text = render_metrics(
            model=self.config.model,
            max_num_seqs=self.config.max_num_seqs,
            counters=self.counters,
            batcher=self.batcher,
            prefix_cache=self.prefix_cache,
            simulated_s=self.step_loop.simulated_s if self.step_loop else 0.0,
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def models(self, request: web.Request) -> web.Response:
        if (denied := self._check_api_key(request)) is not None:
            return denied
        return json_response(models_body(self.config, int(time.time())))

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's `/tokenize`, for chats (its ChatML rendering) or prompts."""
        if (denied := self._check_api_key(request)) is not None:
            return denied
        try:
            return json_response(tokenize_body(await self._read_json(request), self.config))
        except BackendError as exc:
            return error_response(str(exc), exc.status or 400)

    async def apply_template(self, request: web.Request) -> web.Response:
        """llama.cpp's `/apply-template`: the prompt text a chat is rendered to."""
        if (denied := self._check_api_key(request)) is not None:
            return denied
        try:
            data = await self._read_json(request)
            prompt = render_chat_body(data if isinstance(data, dict) else {})
        except BackendError as exc:
            return error_response(str(exc), exc.status or 400)
        return json_response({"prompt": prompt})

    async def control_down(self, request: web.Request) -> web.Response:
        seconds: float | None = None
        raw = await request.read()
        if raw:
            try:
                seconds = orjson.loads(raw).get("seconds")
            except (orjson.JSONDecodeError, AttributeError):
                return error_response('body must be a JSON object like {"seconds": 2}', 400)
        self._after_answer(self._take_down, seconds)
        return json_response({"down_for_seconds": seconds}, status=202)

    async def control_restart(self, request: web.Request) -> web.Response:
        self._after_answer(self._restart, None)
        return json_response({"restarting": True}, status=202)

    def _after_answer(self, action: ControlAction, seconds: float | None) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)  # let the 202 reach the client first
            await action(seconds)

        task = asyncio.get_running_loop().create_task(later())
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    # -- generation ----------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_completion_request, completion_body)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_chat_request, chat_body)

    def _check_api_key(self, request: web.Request) -> web.Response | None:
        expected = self.config.api_key
        if expected is None:
            return None
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return None
        return error_response(
            "Incorrect API key provided." if given else "Missing API key (Authorization: Bearer).",
            401,
            code="invalid_api_key",
            error_type="invalid_request_error",
        )

    async def _read_json(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ClientRequestError(
                f"the request body is not valid JSON: {exc}", status=400
            ) from exc

    def _rate_limit(self, tokens: int) -> RateDecision | None:
        if self.limiter is None:
            return None
        decision = self.limiter.acquire(tokens)
        if not decision.allowed:
            self.counters.rate_limited += 1
        return decision

    @staticmethod
    def _rate_limited_response(decision: RateDecision) -> web.Response:
        headers = dict(decision.headers)
        if decision.retry_after_s is not None:
            headers["Retry-After"] = f"{decision.retry_after_s:.3f}"
            headers["retry-after-ms"] = str(max(1, round(decision.retry_after_s * 1000)))
        return error_response(
            decision.message,
            429,
            code="rate_limit_exceeded",
            error_type="requests" if "requests" in decision.message else "tokens",
            headers=headers,
        )

    async def _generate(
        self,
        request: web.Request,
        parse: Callable[[object, SimulatedServerConfig], GenerationRequest],
        build: Callable[..., dict[str, Any]],
    ) -> web.StreamResponse:
        if (denied := self._check_api_key(request)) is not None:
            return denied
        try:
            generation = parse(await self._read_json(request), self.config)
            purpose = _purpose(request)
        except BackendError as exc:
            return error_response(str(exc), exc.status or 400)
        decision = self._rate_limit(generation.rate_limit_tokens)
        headers = decision.headers if decision is not None else None
        if decision is not None and not decision.allowed:
            return self._rate_limited_response(decision)
        fault = self.faults.draw()
        if fault is not None and fault is not FaultKind.SLOW_BODY:
            self.counters.faults[fault.value] += 1
            return await self._deliver_fault(request, fault)
        outputs = self._answers(generation, purpose)
        cached_tokens = 0
        if self.step_loop is not None:
            try:
                cached_tokens = await self._run_on_gpu(self.step_loop, generation, outputs)
            except ConnectionFailed:
                fault_delivery.reset_connection(request)
                raise asyncio.CancelledError from None
        body = orjson.dumps(
            build(
                generation,
                outputs,
                model=self.config.model,
                request_id=f"{next(self._request_ids):x}",
                created=int(time.time()),
                cached_tokens=cached_tokens,
            )
        )
        self._count_served(generation, outputs)
        self.counters.cached_prompt_tokens_served += min(
            cached_tokens, sum(generation.prompt_tokens)
        )
        self.counters.purposes[purpose.value if purpose is not None else "none"] += 1
        if fault is FaultKind.SLOW_BODY:
            self.counters.faults[fault.value] += 1
            return await fault_delivery.write_slowly(
                request, body, self.config.faults.slow_body_seconds, headers
            )
        return web.Response(body=body, content_type=_JSON, headers=headers)

    def _answers(
        self, generation: GenerationRequest, purpose: Purpose | None = None
    ) -> list[GeneratedText]:
        synthesizer = self.synthesizer
        outputs: list[GeneratedText] = []
        for prompt in generation.prompts:
            plan = synthesizer.plan(prompt, purpose)
            if generation.temperature <= 0:
                first = synthesizer.generate(
                    plan,
                    temperature=0.0,
                    seed=generation.seed,
                    choice=0,
                    max_tokens=generation.max_tokens,
                    stop=generation.stop,
                )
                outputs.extend([first] * generation.n)
                continue
            for choice in range(generation.n):
                outputs.append(
                    synthesizer.generate(
                        plan,
                        temperature=generation.temperature,
                        seed=generation.seed,
                        choice=choice,
                        max_tokens=generation.max_tokens,
                        stop=generation.stop,
                    )
                )
        return outputs

    def _count_served(self, generation: GenerationRequest, outputs: list[GeneratedText]) -> None:
        counters = self.counters
        counters.generation_requests_served += 1
        counters.sequences_served += len(outputs)
        counters.prompt_tokens_served += sum(generation.prompt_tokens)
        counters.completion_tokens_served += sum(o.completion_tokens for o in outputs)
        for output in outputs:
            counters.finish_reasons[output.finish_reason] += 1

    async def _run_on_gpu(
        self, step_loop: StepLoop, generation: GenerationRequest, outputs: list[GeneratedText]
    ) -> int:
        """Runs the sequences through the step model; the prompt tokens its prefix cache served
        (each prompt's first choice, as vLLM reports `prompt_tokens_details.cached_tokens`)."""
        loop = asyncio.get_running_loop()
        ticket = _Ticket(loop.create_future(), len(outputs))
        sequences: list[SequenceWork] = []
        caching = self.prefix_cache is not None
        block_size = self.config.block_size
        position = 0
        for prompt, tokens in zip(generation.prompts, generation.prompt_tokens, strict=True):
            keys = prefix_block_hashes(prompt, block_size) if caching else ()
            for _ in range(generation.n):
                output = outputs[position]
                generated = (
                    generated_block_hashes(prompt, output.text, block_size, keys) if caching else ()
                )
                sequences.append(
                    SequenceWork(
                        tokens,
                        max(1, output.completion_tokens),
                        keys,
                        owner=ticket,
                        generated_block_keys=generated,
                    )
                )
                position += 1
        self._tickets.add(ticket)
        step_loop.submit(sequences)
        try:
            await ticket.future
            firsts = sequences[:: max(1, generation.n)]
            return sum(seq.cached_tokens or 0 for seq in firsts)
        except asyncio.CancelledError:
            unfinished = [s for s in sequences if s.state < FINISHED]
            self.counters.sequences_aborted += len(unfinished)
            step_loop.cancel(unfinished)
            raise
        finally:
            self._tickets.discard(ticket)

    def _sequence_finished(self, seq: SequenceWork) -> None:
        ticket: _Ticket = seq.owner
        ticket.remaining -= 1
        if ticket.remaining == 0 and not ticket.future.done():
            ticket.future.set_result(None)

    async def _deliver_fault(self, request: web.Request, fault: FaultKind) -> web.StreamResponse:
        settings = self.config.faults
        if fault is FaultKind.SERVER_ERROR:
            return fault_delivery.server_error_response(self.faults.server_error_status())
        if fault is FaultKind.MALFORMED_JSON:
            return fault_delivery.malformed_json_response()
        if fault is FaultKind.TRUNCATED_BODY:
            body = orjson.dumps({"id": "cmpl-truncated", "choices": [{"text": "x" * 256}]})
            await fault_delivery.send_truncated(request, body)
            raise asyncio.CancelledError
        if fault is FaultKind.HANG:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._crashed.wait(), settings.hang_seconds)
        fault_delivery.reset_connection(request)
        raise asyncio.CancelledError

    # -- embeddings ----------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.Response:
        if (denied := self._check_api_key(request)) is not None:
            return denied
        try:
            inputs = parse_embedding_request(await self._read_json(request), self.config)
        except BackendError as exc:
            return error_response(str(exc), exc.status or 400)
        tokens = sum(count_tokens(text) for text in inputs)
        decision = self._rate_limit(tokens)
        if decision is not None and not decision.allowed:
            return self._rate_limited_response(decision)
        dim = self.config.embedding_dim
        data = [
            {"object": "embedding", "index": i, "embedding": embed_text(text, dim).tolist()}
            for i, text in enumerate(inputs)
        ]
        payload = {
            "object": "list",
            "data": data,
            "model": self.config.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json_response(payload, headers=decision.headers if decision else None)
