"""How the evaluator starts its chain workers: in waves, every one awaited, errors not lost."""

from __future__ import annotations

import asyncio

import pytest

from engine.evaluator import run_in_waves


async def test_first_workers_run_before_later_waves_are_started():
    started = 0
    seen_by_first: list[int] = []

    async def worker() -> None:
        nonlocal started
        started += 1
        mine = started
        await asyncio.sleep(0)
        if mine == 1:
            seen_by_first.append(started)

    await run_in_waves(worker, 100, wave=10)
    assert started == 100
    # The first worker resumes while most workers do not exist yet: the loop got control between
    # waves (started all at once, it would see all 100).
    assert seen_by_first and seen_by_first[0] <= 20


async def test_every_worker_finishes_before_it_returns():
    finished = 0

    async def worker() -> None:
        nonlocal finished
        await asyncio.sleep(0.001)
        finished += 1

    await run_in_waves(worker, 37, wave=8)
    assert finished == 37
    await run_in_waves(worker, 3, wave=0)  # a wave of 0 still starts one at a time
    assert finished == 40


async def test_first_error_cancels_the_rest_and_is_raised_once_all_ended():
    states: list[str] = []
    gate = asyncio.Event()

    async def worker() -> None:
        index = len(states)
        states.append("running")
        try:
            if index in (2, 3):  # both wake in the same loop pass and both fail
                await gate.wait()
                states[index] = "failed"
                raise ValueError(f"chain {index} broke")
            if index == 4:
                gate.set()
            await asyncio.sleep(60)
            states[index] = "done"
        except asyncio.CancelledError:
            states[index] = "cancelled"
            raise

    with pytest.raises(ValueError, match="chain 2 broke"):
        await run_in_waves(worker, 12, wave=4)
    assert "running" not in states
    assert states.count("failed") == 2 and "done" not in states


async def test_cancelling_the_wait_cancels_the_workers():
    started = cancelled = 0
    all_started = asyncio.Event()

    async def worker() -> None:
        nonlocal started, cancelled
        started += 1
        if started == 9:
            all_started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            cancelled += 1
            raise

    waiting = asyncio.ensure_future(run_in_waves(worker, 9, wave=4))
    await asyncio.wait_for(all_started.wait(), 60)  # three waves: three passes of the loop
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0)
    assert cancelled == 9


async def test_nothing_to_run_returns_at_once():
    async def worker() -> None:  # pragma: no cover - never started
        raise AssertionError("no worker should start")

    await run_in_waves(worker, 0, wave=4)
