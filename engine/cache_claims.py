"""Cross-process claims beside the response cache: "this process is computing this key".

Processes sharing one cache file do not pay twice for an answer. Before a call is sent, its
keys are claimed in the cache (`ResponseCache.claim_many`, one transaction per call):

- a key answered meanwhile is resolved from the cache at once (`on_answered`);
- a key another live process has claimed is parked, and its answer awaited from the cache,
  polled with backoff (from 20 ms, doubling up to `poll_max_s` while nothing changes); a key
  whose claim was given up, or expired, is handed back to be sent here (`on_free`);
- every other key is now this process's claim, and its request is sent.

Storing an answer drops its claim in the same transaction (`ResponseCache.put_many`); a request
that finally fails gives its claim up (`give_up`), in one transaction per loop turn, so that
waiting processes send it themselves without waiting for the expiry. Claims only save money:
a cache that cannot take or read them never loses work (the requests are sent here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from backends.protocol import Completion
from engine.cache import DEFAULT_CLAIM_TTL_S, ClaimPoll, ResponseCache

logger = logging.getLogger(__name__)

_FIRST_POLL_S = 0.02


class Keyed(Protocol):
    """A queued request: its cache key, or None for a request that is never cached."""

    key: bytes | None


ItemT = TypeVar("ItemT", bound=Keyed)


class CacheClaims(Generic[ItemT]):
    """One engine's claims in a shared cache, and its requests parked on other processes'."""

    def __init__(
        self,
        cache: ResponseCache,
        *,
        on_answered: Callable[[ItemT, Completion], None],
        on_free: Callable[[ItemT], None],
        ttl_s: float = DEFAULT_CLAIM_TTL_S,
        poll_max_s: float = 1.0,
    ) -> None:
        self.cache = cache
        self.ttl_s = ttl_s
        self.poll_max_s = poll_max_s
        self._on_answered = on_answered
        self._on_free = on_free
        self._claimed: set[bytes] = set()
        self._to_release: list[bytes] = []
        self._parked: dict[bytes, list[ItemT]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def held(self) -> frozenset[bytes]:
        """The keys this engine has claimed and not yet answered or given up."""
        return frozenset(self._claimed)

    @property
    def parked(self) -> int:
        return sum(len(items) for items in self._parked.values())

    def claim(self, items: list[ItemT]) -> list[ItemT]:
        """The items to send now: the others were answered meanwhile (resolved here) or are
        being answered by another process (parked until their answer is in the cache)."""
        keys = [item.key for item in items if item.key is not None]
        if not keys:
            return items
        try:
            outcome = self.cache.claim_many(keys, self.ttl_s)
        except Exception as error:  # claims save money; failing to take them must not lose work
            # One line, no traceback: a full disk here is the user's to fix, and the write that
            # follows reports it as the run's error.
            logger.warning("could not claim %d request(s) in the cache: %s", len(keys), error)
            return items
        self._claimed.update(outcome.mine)
        if not outcome.answered and not outcome.elsewhere:
            return items
        elsewhere = set(outcome.elsewhere)
        send: list[ItemT] = []
        for item in items:
            key = item.key
            if key is None:
                send.append(item)
            elif key in outcome.answered:
                self._on_answered(item, outcome.answered[key])
            elif key in elsewhere:
                self._parked.setdefault(key, []).append(item)
            else:
                send.append(item)
        if self._parked and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll_parked())
        return send

    def answered(self, keys: Iterable[bytes]) -> None:
        """The answers of `keys` are stored: the cache dropped their claims with them."""
        if self._claimed:
            for key in keys:
                self._claimed.discard(key)

    def give_up(self, key: bytes | None) -> None:
        """The request of `key` failed here: release its claim, if held, soon."""
        if key is None or key not in self._claimed:
            return
        self._claimed.discard(key)
        self._to_release.append(key)
        if len(self._to_release) == 1 and not self._closing:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Give up the claims of requests that failed here, so others need not wait."""
        keys, self._to_release = self._to_release, []
        if keys:
            try:
                self.cache.release_many(keys)
            except Exception:  # the claims expire on their own
                logger.exception("could not release %d claim(s)", len(keys))

    def take_parked(self) -> list[ItemT]:
        """Every parked item, no longer parked (the caller fails them)."""
        items = [item for parked in self._parked.values() for item in parked]
        self._parked.clear()
        return items

    def begin_close(self) -> None:
        """From now on, claims given up wait for the caller's last `flush`."""
        self._closing = True

    async def close(self) -> list[ItemT]:
        """Stop polling; the items still parked, for the caller to fail. Claims given up from
        now on are released by the caller's last `flush`."""
        self.begin_close()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        return self.take_parked()

    async def _poll_parked(self) -> None:
        """Wait for answers other processes are computing; send what they gave up on."""
        delay = _FIRST_POLL_S
        while self._parked:  # bounded: each claim expires, then its key comes back free
            await asyncio.sleep(delay)
            keys = list(self._parked)
            try:
                poll = self.cache.poll_claims(keys)
            except Exception:
                logger.exception("could not read claims; sending %d request(s) here", len(keys))
                poll = ClaimPoll(free=keys)
            for key, completion in poll.answered.items():
                for item in self._parked.pop(key, ()):
                    self._on_answered(item, completion)
            for key in poll.free:
                for item in self._parked.pop(key, ()):
                    self._on_free(item)
            progressed = poll.answered or poll.free
            delay = _FIRST_POLL_S if progressed else min(delay * 2, self.poll_max_s)
