"""Cache claims on their own, without an engine or a socket: keys are claimed before a call,
answered keys resolve from the cache, keys another owner claims are parked until their answer
arrives or their claim is given up, failures give claims up, and a cache that cannot take
claims never holds work back. Another process is a second `ResponseCache` on the same file (a
cache object is one claim owner)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.protocol import Completion
from engine.cache import ResponseCache
from engine.cache_claims import CacheClaims

DEADLINE_S = 60.0


class Item:
    def __init__(self, key: bytes | None) -> None:
        self.key = key


def answer(text: str) -> Completion:
    return Completion((text,), 3, 4, ("stop",))


class Recorder:
    def __init__(self) -> None:
        self.answered: dict[bytes | None, str] = {}
        self.freed: list[bytes | None] = []

    def on_answered(self, item: Item, completion: Completion) -> None:
        self.answered[item.key] = completion.text

    def on_free(self, item: Item) -> None:
        self.freed.append(item.key)


@pytest.fixture
def caches(tmp_path: Path):
    ours, theirs = ResponseCache(tmp_path / "c.sqlite"), ResponseCache(tmp_path / "c.sqlite")
    yield ours, theirs
    ours.close()
    theirs.close()


def claims_over(cache: ResponseCache, recorder: Recorder) -> CacheClaims[Item]:
    return CacheClaims(
        cache, on_answered=recorder.on_answered, on_free=recorder.on_free, poll_max_s=0.05
    )


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`, polling, up to a generous deadline (the poller sleeps between
    reads of the cache)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_fresh_keys_are_claimed_and_sent(caches) -> None:
    ours, theirs = caches
    claims = claims_over(ours, Recorder())
    items = [Item(b"a"), Item(b"b"), Item(None)]
    assert claims.claim(items) == items
    assert claims.held == {b"a", b"b"}
    assert theirs.claim_many([b"a"]).elsewhere == [b"a"]  # the other owner sees our claim
    ours.put_many([(b"a", answer("A"))])
    claims.answered([b"a"])
    assert claims.held == {b"b"}
    await claims.close()


async def test_a_key_answered_meanwhile_resolves_from_the_cache(caches) -> None:
    ours, theirs = caches
    theirs.put_many([(b"a", answer("theirs"))])
    recorder = Recorder()
    claims = claims_over(ours, recorder)
    sent = claims.claim([Item(b"a"), Item(b"b")])
    assert [item.key for item in sent] == [b"b"]
    assert recorder.answered == {b"a": "theirs"}
    await claims.close()


async def test_a_key_claimed_elsewhere_waits_for_its_answer(caches) -> None:
    ours, theirs = caches
    assert theirs.claim_many([b"a", b"b"]).mine == [b"a", b"b"]
    recorder = Recorder()
    claims = claims_over(ours, recorder)
    assert claims.claim([Item(b"a"), Item(b"b")]) == []
    assert claims.parked == 2
    theirs.put_many([(b"a", answer("A"))])
    await until(lambda: b"a" in recorder.answered)
    assert recorder.answered == {b"a": "A"} and claims.parked == 1
    theirs.release_many([b"b"])  # they gave up: we send it ourselves
    await until(lambda: recorder.freed == [b"b"])
    assert claims.parked == 0
    await claims.close()


async def test_a_failed_request_gives_its_claim_up_for_others(caches) -> None:
    ours, theirs = caches
    claims = claims_over(ours, Recorder())
    claims.claim([Item(b"a")])
    assert theirs.claim_many([b"a"]).elsewhere == [b"a"]
    claims.give_up(b"a")
    claims.give_up(b"never-claimed")  # nothing to release
    await until(lambda: ours.claims_held() == 0)  # released on the next loop turn
    assert theirs.claim_many([b"a"]).mine == [b"a"]
    await claims.close()


async def test_closing_hands_back_what_is_still_parked(caches) -> None:
    ours, theirs = caches
    theirs.claim_many([b"a"])
    claims = claims_over(ours, Recorder())
    parked = Item(b"a")
    assert claims.claim([parked]) == []
    assert await claims.close() == [parked]
    assert claims.parked == 0
    claims.give_up(b"a")  # not held: a no-op even after close


async def test_a_cache_that_cannot_take_claims_sends_everything(caches) -> None:
    ours, _ = caches

    class Broken:
        path = ours.path

        def claim_many(self, keys, ttl_s):
            raise OSError("disk full")

    claims = CacheClaims(Broken(), on_answered=Recorder().on_answered, on_free=print)  # type: ignore[arg-type]
    items = [Item(b"a"), Item(b"b")]
    assert claims.claim(items) == items
    assert claims.held == frozenset()
    await claims.close()
