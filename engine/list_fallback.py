"""Whether an endpoint takes prompt lists, learned from its answers: a list that fails is split.

Some OpenAI-compatible servers refuse a `/v1/completions` call whose `prompt` is a list of more
than one: llama-cpp-python 0.3.x answers HTTP 500 with an empty message (an `assert
len(body.prompt) <= 1` inside the server), others a 4xx. Retrying the same list can never
succeed, so a list call that fails is split into one call per prompt when the failure may be the
list's:

- a 4xx (not retryable, not fatal): always split, so that one invalid prompt fails alone;
- a 5xx: split only while no list call of this endpoint has been answered (`confirmed`). Once a
  list went through, lists work there and a 5xx is the server's trouble: it is retried as usual.

When every prompt of a split list is then answered on its own, the list itself was the cause:
the endpoint is remembered as refusing lists (`enabled` turns false for the rest of the engine's
life), that is said once (a warning on the log, and each `on_refused` listener is told, which is
how a run records it beside its servers), and no further list is sent. One prompt of the split
failing on its own shows the failure was that prompt's, and lists stay on.

Each list is split at most once (its prompts travel alone from then on), so a refused list costs
one failed call and never a retry loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from backends.errors import BackendError, ServerError

logger = logging.getLogger(__name__)


class SplitList:
    """The prompts of one failed list call, now travelling alone; counts those answered."""

    __slots__ = ("answered", "error", "size")

    def __init__(self, size: int, error: BackendError) -> None:
        self.size = size
        self.answered = 0
        self.error = error


class PromptListSupport:
    """One endpoint's prompt-list capability, as configured and as its answers showed it."""

    def __init__(self, enabled: bool, endpoint: str, *, confirmed: bool = False) -> None:
        self.enabled = enabled
        self.confirmed = confirmed
        """A list call was answered (or the server is known to take lists): a failure of a
        later list is not the list's."""
        self.refused: str | None = None
        """Why lists were turned off after the endpoint refused them (None: they were not)."""
        self._endpoint = endpoint
        self._listeners: list[Callable[[str], None]] = []

    def on_refused(self, listener: Callable[[str], None]) -> None:
        """Call `listener(reason)` once if the endpoint turns out to refuse prompt lists."""
        self._listeners.append(listener)

    def max_batch(self, configured: int) -> int:
        """The most prompts one call may carry now."""
        return configured if self.enabled else 1

    def should_split(self, size: int, error: BackendError) -> bool:
        """Whether a call of `size` prompts that failed with `error` is resent prompt by prompt
        (fatal errors are decided before: they stop the engine)."""
        if size < 2:
            return False
        if not error.retryable:
            return True
        return isinstance(error, ServerError) and not self.confirmed

    def split(self, items: Sequence[Any], error: BackendError) -> None:
        """Mark `items` (queued requests of one failed list) to travel alone from now on."""
        group = SplitList(len(items), error)
        for item in items:
            item.solo = True
            item.split = group

    def answered(self, items: Sequence[Any]) -> None:
        """A call carrying `items` was answered."""
        if len(items) > 1:
            self.confirmed = True
            return
        group: SplitList | None = items[0].split
        if group is None:
            return
        items[0].split = None
        group.answered += 1
        if group.answered == group.size and self.enabled and not self.confirmed:
            self._refuse(group)

    def _refuse(self, group: SplitList) -> None:
        self.enabled = False
        self.refused = (
            f"a list of {group.size} prompts failed ({group.error}) and each prompt alone "
            "was answered"
        )
        logger.warning(
            "%s does not take prompt lists: %s; prompts go one per call from now on",
            self._endpoint,
            self.refused,
        )
        for listener in self._listeners:
            listener(self.refused)

    def describe(self) -> dict[str, Any]:
        """For run records: whether lists are used, and why not when the endpoint refused."""
        record: dict[str, Any] = {"prompt_lists": self.enabled}
        if self.refused is not None:
            record["prompt_lists_refused"] = self.refused
        return record
