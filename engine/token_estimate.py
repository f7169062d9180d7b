"""Token estimates of requests before they are sent, as hosted APIs count them against limits.

A call's cost against a tokens-per-minute limit is its prompt tokens plus `max_tokens x n`
(what OpenAI charges when the call is admitted). The prompt's tokens are not known before the
server counts them: they are estimated as characters / 4 (plus 8 characters per chat message),
scaled by what the server has reported so far. Each answer's `usage.prompt_tokens` is compared
with the raw estimate of its prompt, and the ratio of the sums (both decayed, so it follows a
change of prompts) scales later estimates: a server whose tokenizer or chat template counts 7%
more than characters / 4 gets estimates 7% higher, and pacing by a token budget neither
overshoots it (429s) nor undershoots it (idle budget).
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.protocol import Completion, SamplingParams
from engine.queues import QueuedRequest

_DECAY = 0.98
_RATIO_BOUNDS = (0.25, 4.0)


def raw_prompt_tokens(item: QueuedRequest) -> float:
    """Characters / 4 of the prompt (or of the messages, 8 characters each for the roles)."""
    if item.prompt is not None:
        return len(item.prompt) / 4
    return sum(len(content) + 8 for _, content in item.request.messages or ()) / 4


class TokenEstimator:
    """Estimates of (prompt, most completion) tokens, calibrated by the server's counts."""

    __slots__ = ("_estimated", "_reported", "ratio")

    def __init__(self) -> None:
        self.ratio = 1.0
        self._estimated = 0.0
        self._reported = 0.0

    def request(self, item: QueuedRequest, params: SamplingParams) -> tuple[float, float]:
        """(prompt tokens, most completion tokens) of one request."""
        return raw_prompt_tokens(item) * self.ratio, float(params.max_tokens * params.n)

    def call(self, items: Sequence[QueuedRequest], params: SamplingParams) -> float:
        """Every token of a call of `items`, as a rate limit counts it."""
        return sum(sum(self.request(item, params)) for item in items)

    def learn(self, items: Sequence[QueuedRequest], completions: Sequence[Completion]) -> None:
        """The server's counts for a call's prompts: recalibrate (no usage: nothing learnt)."""
        reported = sum(completion.prompt_tokens for completion in completions)
        if reported <= 0:
            return
        estimated = sum(raw_prompt_tokens(item) for item in items)
        if estimated <= 0:
            return
        self._estimated = self._estimated * _DECAY + estimated
        self._reported = self._reported * _DECAY + reported
        low, high = _RATIO_BOUNDS
        self.ratio = min(high, max(low, self._reported / self._estimated))
