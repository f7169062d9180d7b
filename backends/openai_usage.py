"""The usage and answer arithmetic of OpenAI-compatible responses, apart from the transport.

`Retry-After` parsed to seconds, the cached and reasoning token counts of a `usage` object, one
answer made of several single-choice answers, and a call's total split across its prompts so
that per-prompt figures sum exactly to what the server reported.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from typing import Any

from backends.protocol import Completion


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def usage_details(usage: dict[str, Any]) -> tuple[int, int]:
    """(cached prompt tokens, reasoning tokens) of an OpenAI `usage` object: 0 where absent."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = int(prompt_details.get("cached_tokens") or 0)
    reasoning = int(completion_details.get("reasoning_tokens") or 0)
    return max(0, cached), max(0, reasoning)


def merge_choices(answers: Sequence[Completion]) -> Completion:
    """One answer of several choices from answers of one choice each: usage summed."""
    return Completion(
        tuple(text for answer in answers for text in answer.texts),
        sum(answer.prompt_tokens for answer in answers),
        sum(answer.completion_tokens for answer in answers),
        tuple(reason for answer in answers for reason in answer.finish_reasons),
        cached_prompt_tokens=sum(answer.cached_prompt_tokens for answer in answers),
        reasoning_tokens=sum(answer.reasoning_tokens for answer in answers),
    )


def split_total(total: int, weights: Sequence[int]) -> list[int]:
    """Divide an integer total in proportion to weights so that the parts sum exactly to it.

    A prompt-list call reports one `usage` for the whole call; the engine needs per-prompt
    figures for its cache and ledger, and the ledger's sums must stay equal to the server's.
    """
    if len(weights) == 1:
        return [total]
    weight_sum = sum(weights) or len(weights)
    if sum(weights) == 0:
        weights = [1] * len(weights)
    parts = [total * w // weight_sum for w in weights]
    remainder = total - sum(parts)
    for i in range(remainder):
        parts[i % len(parts)] += 1
    return parts
