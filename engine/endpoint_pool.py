"""Several endpoints of one role (one vLLM per GPU, replicas behind no router) seen as one Backend.

Routing (`routing`): "affinity" (the default) sends a call to the replica that holds its
prompt's prefix in its KV cache, else to its consistent-hash replica, within a bounded load
(`engine.prefix_affinity`, whose docstring has the algorithm and its math); a prompt list is
split by the replica each prompt routes to, one call per replica, so every prompt meets its own
prefix. "least-loaded" sends each call to the available endpoint with the least outstanding
work relative to its capacity,
`outstanding sequences / max_concurrency` (prompts x n; capacity 1 when unknown); ties go to the
endpoint chosen least recently, so equal endpoints take turns. Least-loaded is for replicas
behind a router that already routes by prefix (vLLM's router, production-stack).

Failures: a retryable failure (5xx, timeout, lost connection, malformed answer) counts against
the endpoint; after `failures_before_cooldown` in a row it is dropped for a cool-down that
doubles with each further failure, `cooldown_s * 2**k`, capped at `max_cooldown_s`. Calls
already in flight that fail during a cool-down do not lengthen it: one outage is one failure.
A 429 drops it for its `Retry-After` (or `cooldown_s`). When a cool-down ends the endpoint is
half-open: it gets one call at a time until one succeeds, so a still-broken server fails one
request, not a whole window of them. Errors that are the request's fault (4xx) say nothing
about the endpoint. If every endpoint is cooling down, the one that recovers first is used
rather than failing.

Draining: a call that fails retryably on one endpoint (a replica killed mid-call: lost
connection, 5xx, timeout, 429) is re-sent at once to another available endpoint not yet tried
for it, up to once per endpoint, so a replica that dies loses no request; the dead replica is
cooling down, so new calls and its affinity keys go elsewhere (`engine.prefix_affinity`: the next
replica on the ring) until it answers again. Only when every endpoint has failed the call does
the error go up to the engine, whose retry policy (backoff, `Retry-After`) takes over
(`resend=False`: every failure goes up at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from backends.errors import BackendError, ConfigError, RateLimited
from backends.protocol import Backend, Capabilities, Completion, Message, SamplingParams
from engine.prefix_affinity import (
    DEFAULT_BALANCE,
    ROUTINGS,
    AffinityRouter,
    prefix_keys,
    render_messages,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One endpoint's state at a moment, for logs and reports."""

    identity: str
    outstanding_sequences: int
    requests: int
    failures: int
    consecutive_failures: int
    cooldown_left_s: float
    resent: int = 0


class _Endpoint:
    __slots__ = (
        "available_at",
        "backend",
        "capacity",
        "consecutive_failures",
        "failures",
        "last_chosen",
        "outstanding",
        "requests",
        "resent",
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.capacity = max(1, backend.capabilities.max_concurrency or 1)
        self.outstanding = 0
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.available_at = 0.0
        self.last_chosen = 0
        self.resent = 0


class EndpointPool:
    """A `backends.protocol.Backend` spreading calls over `backends` that serve one model."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        cooldown_s: float = 30.0,
        max_cooldown_s: float = 300.0,
        failures_before_cooldown: int = 1,
        identity: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        routing: str = "affinity",
        balance: float = DEFAULT_BALANCE,
        resend: bool = True,
    ) -> None:
        if not backends:
            raise ConfigError("an endpoint pool needs at least one endpoint")
        if cooldown_s < 0 or max_cooldown_s < cooldown_s:
            raise ConfigError(
                f"endpoint pool: need 0 <= cooldown_s ({cooldown_s}) <= max_cooldown_s "
                f"({max_cooldown_s})"
            )
        if failures_before_cooldown < 1:
            raise ConfigError("endpoint pool: failures_before_cooldown must be at least 1")
        if routing not in ROUTINGS:
            raise ConfigError(f"endpoint pool: routing {routing!r} is not one of {ROUTINGS}")
        models = {backend.model for backend in backends if backend.model}
        if len(models) > 1:
            served = ", ".join(f"{b.identity} serves {b.model!r}" for b in backends)
            raise ConfigError(f"endpoints of one role must serve one model: {served}")
        self._model = models.pop() if models else ""
        self._endpoints = [_Endpoint(backend) for backend in backends]
        self._cooldown_s = cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._failures_before_cooldown = failures_before_cooldown
        self._clock = clock
        self._choices = 0
        self.routing = routing
        self._resend = resend
        self._router = (
            AffinityRouter([e.capacity for e in self._endpoints], balance=balance)
            if routing == "affinity" and len(self._endpoints) > 1
            else None
        )
        if identity is not None:
            self._identity = identity
        elif len(backends) == 1:
            self._identity = backends[0].identity
        else:
            self._identity = "pool[" + ",".join(sorted(b.identity for b in backends)) + "]"

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def model(self) -> str:
        return self._model

    @property
    def capabilities(self) -> Capabilities:
        """What every endpoint accepts; the window is the sum of theirs when all are known."""
        each = [endpoint.backend.capabilities for endpoint in self._endpoints]
        limits = [c.max_concurrency for c in each]
        return Capabilities(
            prompt_lists=all(c.prompt_lists for c in each),
            multiple_choices=all(c.multiple_choices for c in each),
            chat=all(c.chat for c in each),
            completions=all(c.completions for c in each),
            max_concurrency=None if None in limits else sum(limit or 0 for limit in limits),
            lists_confirmed=all(c.lists_confirmed for c in each),
        )

    @property
    def rendering_backend(self) -> Backend:
        """The endpoint asked how the server renders chats (`engine.chat_render`): the first
        one; every endpoint of a pool serves the same model."""
        return self._endpoints[0].backend

    def status(self) -> tuple[EndpointStatus, ...]:
        now = self._clock()
        return tuple(
            EndpointStatus(
                identity=e.backend.identity,
                outstanding_sequences=e.outstanding,
                requests=e.requests,
                failures=e.failures,
                consecutive_failures=e.consecutive_failures,
                cooldown_left_s=max(0.0, e.available_at - now),
                resent=e.resent,
            )
            for e in self._endpoints
        )

    def _usable(self, endpoint: _Endpoint, now: float) -> bool:
        if endpoint.available_at > now:
            return False
        half_open = endpoint.consecutive_failures >= self._failures_before_cooldown
        return not half_open or endpoint.outstanding == 0

    def _choose(
        self,
        sequences: int,
        text: str | None,
        tried: Sequence[_Endpoint] = (),
        pending: Sequence[float] | None = None,
    ) -> _Endpoint:
        now = self._clock()
        usable = [self._usable(e, now) and e not in tried for e in self._endpoints]
        if self._router is not None and text is not None and any(usable):
            loads = [float(e.outstanding) for e in self._endpoints]
            if pending is not None:  # prompts of the same list already placed
                loads = [load + more for load, more in zip(loads, pending, strict=True)]
            index = self._router.choose(prefix_keys(text), loads, usable, float(sequences))
            chosen = self._endpoints[index]
        elif any(usable):
            candidates = [e for e, ok in zip(self._endpoints, usable, strict=True) if ok]
            chosen = min(
                candidates,
                key=lambda e: (e.outstanding / e.capacity, e.outstanding, e.last_chosen),
            )
        else:
            untried = [e for e in self._endpoints if e not in tried] or self._endpoints
            chosen = min(untried, key=lambda e: (e.available_at, e.outstanding))
            logger.debug("every endpoint is cooling down; using %s", chosen.backend.identity)
        self._choices += 1
        chosen.last_chosen = self._choices
        return chosen

    async def _call(
        self,
        sequences: int,
        text: str | None,
        send: Callable[[Backend], Awaitable[T]],
        first: _Endpoint | None = None,
    ) -> T:
        """Send on `first` (else the chosen endpoint); on a retryable failure re-send on an
        untried one."""
        tried: list[_Endpoint] = []
        while True:
            endpoint = first if first is not None and not tried else None
            endpoint = endpoint or self._choose(sequences, text, tried)
            tried.append(endpoint)
            endpoint.outstanding += sequences
            endpoint.requests += 1
            try:
                result = await send(endpoint.backend)
            except BackendError as error:
                self._record_failure(endpoint, error)
                if not (self._resend and error.retryable) or len(tried) >= len(self._endpoints):
                    raise
                endpoint.resent += 1
                logger.info(
                    "call failed on %s (%s); re-sending it elsewhere",
                    endpoint.backend.identity,
                    error.kind,
                )
                continue
            finally:
                endpoint.outstanding -= sequences
            self._record_success(endpoint)
            return result

    def _record_success(self, endpoint: _Endpoint) -> None:
        if endpoint.consecutive_failures >= self._failures_before_cooldown:
            logger.info("endpoint %s answers again", endpoint.backend.identity)
        endpoint.consecutive_failures = 0

    def _record_failure(self, endpoint: _Endpoint, error: BackendError) -> None:
        if not error.retryable:
            return
        endpoint.failures += 1
        now = self._clock()
        if isinstance(error, RateLimited):
            pause = error.retry_after if error.retry_after is not None else self._cooldown_s
            endpoint.available_at = max(endpoint.available_at, now + pause)
            return
        if endpoint.available_at > now:
            return  # calls sent before the endpoint was dropped; their failure is no news
        endpoint.consecutive_failures += 1
        beyond = endpoint.consecutive_failures - self._failures_before_cooldown
        if beyond < 0:
            return
        pause = min(self._max_cooldown_s, self._cooldown_s * 2**beyond)
        endpoint.available_at = now + pause
        logger.warning(
            "endpoint %s failed (%s); not used for %.0f s",
            endpoint.backend.identity,
            error.kind,
            pause,
        )

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        """One call, or with affinity one call per replica that the list's prompts route to
        (each prompt to its own prefix's replica), answers put back in the list's order."""
        if self._router is None or len(prompts) < 2:
            text = prompts[0] if prompts else None
            return await self._call(
                len(prompts) * params.n, text, lambda backend: backend.complete(prompts, params)
            )
        pending = [0.0] * len(self._endpoints)
        groups: dict[int, list[int]] = {}
        for position, prompt in enumerate(prompts):
            endpoint = self._choose(params.n, prompt, pending=pending)
            index = self._endpoints.index(endpoint)
            pending[index] += params.n
            groups.setdefault(index, []).append(position)

        async def send_group(index: int, members: list[int]) -> list[Completion]:
            part = [prompts[position] for position in members]
            return await self._call(
                len(part) * params.n,
                part[0],
                lambda backend: backend.complete(part, params),
                first=self._endpoints[index],
            )

        parts = await asyncio.gather(*(send_group(i, m) for i, m in groups.items()))
        answers: list[Completion | None] = [None] * len(prompts)
        for members, part in zip(groups.values(), parts, strict=True):
            for position, answer in zip(members, part, strict=True):
                answers[position] = answer
        return [answer for answer in answers if answer is not None]

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        text = render_messages(messages)
        return await self._call(params.n, text, lambda backend: backend.chat(messages, params))

    async def close(self) -> None:
        results = await asyncio.gather(
            *(e.backend.close() for e in self._endpoints), return_exceptions=True
        )
        for endpoint, result in zip(self._endpoints, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("closing %s failed: %s", endpoint.backend.identity, result)
