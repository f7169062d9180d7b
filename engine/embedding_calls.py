"""`Engine.embed`: one `/v1/embeddings` call, sent and retried under the engine's own rules.

The call waits out the endpoint's `Retry-After` pause and takes its request and token rates
(`Pacing`), is retried, failed or stops the engine as `RetryPolicy` decides (the same fatal
errors as generation calls, the same backoff, the same unreachable-endpoint rule, the history
starting when the call was first asked for), checks before each try that the engine is still
open and the run's budget not spent, and counts its usage, retries and failures in the ledger
under its phase. Not queued, batched or cached: a vector is not a `Completion`, so callers send
one batch per call and keep their own vector cache (gpo's `CachedEmbedder` does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from backends.errors import BackendError, RateLimited
from backends.protocol import EmbeddingBackend, Embeddings
from engine.ledger import Ledger
from engine.pacing import Pacing
from engine.retry_policy import Action, RequestFailed, RetryHistory, RetryPolicy

logger = logging.getLogger(__name__)


class EmbeddingCalls:
    """Embedding calls to `backend` under an engine's pacing, policy and ledger.

    `check_open(tries)` raises when no call may be sent (the engine stopped or closed, or the
    budget spent); `stop(failure)` stops the engine on an endpoint failure and returns the
    failure that stopped it.
    """

    def __init__(
        self,
        backend: EmbeddingBackend,
        *,
        pacing: Pacing,
        retry: RetryPolicy,
        ledger: Ledger,
        check_open: Callable[[int], None],
        stop: Callable[[RequestFailed], RequestFailed],
    ) -> None:
        self.backend = backend
        self.pacing = pacing
        self.retry = retry
        self.ledger = ledger
        self._check_open = check_open
        self._stop = stop

    async def embed(
        self, texts: Sequence[str], model: str | None, name: str, phase: str
    ) -> Embeddings:
        """The vectors of `texts` (`model` as sent; `name` as the ledger counts it)."""
        pacing = self.pacing
        loop = asyncio.get_running_loop()
        history = RetryHistory(failing_since=loop.time())
        tokens = sum(len(text) for text in texts) / 4
        while True:  # bounded: every turn returns, raises or counts a failure towards the bound
            self._check_open(history.tries)
            pause = pacing.pause_left()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            await pacing.admit(tokens)
            started = loop.time()
            try:
                answer = await self.backend.embed(texts, model)
            except BackendError as error:
                history = history.after(error, loop.time())
                if isinstance(error, RateLimited):
                    pacing.give_back(tokens)
                await asyncio.sleep(self._after_error(error, history, name, phase))
                continue
            answered = pacing.on_answer(1)
            self.ledger.record_call(name, phase, answered - started)
            self.ledger.record_answer(name, phase, answer.prompt_tokens, 0)
            return answer

    def _after_error(
        self, error: BackendError, history: RetryHistory, model: str, phase: str
    ) -> float:
        """The seconds to wait before trying again; raises the failure when the policy says
        fail or stop. `history` counts this failure."""
        verdict = self.retry.decide(error, history, self.pacing.last_success)
        if verdict.action is not Action.RETRY:
            self.ledger.record_failure(model, phase, error.kind)
            failure = RequestFailed(verdict.reason, error.kind, history.tries)
            if verdict.action is Action.STOP:
                failure.fatal = True
                failure = self._stop(failure)
            raise failure from error
        self.pacing.on_congestion(error)
        self.ledger.record_retry(model, phase, isinstance(error, RateLimited))
        delay = self.retry.delay(error, history.earlier(error) - 1)
        logger.debug("retrying an embedding call in %.2f s after: %s", delay, error)
        return delay
