"""Kill and resume: `gpo optimize` SIGKILLed at 20 random moments, each run resumed with
`--resume`, must end with the same final prompts and scores as an uninterrupted run and must not
send again any request answered before the kill.

A moment is a point of progress, not of time: the kill comes once the run's cache holds a number
of answers drawn between none and 90% of an uninterrupted run's, so the spread of moments does
not depend on how busy the machine is.

"Answered before the kill" is what the run had saved: the cache entries in its run directory
right after the kill. After the resume, the simulated server's count of sequences generated
during the resume must equal the sequences of the cache entries the resume added: one more
sequence would be an answered request paid for twice."""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.simulated import SimulatedServerProcess, metric_total
from tests.gpo_process import (
    answered_server,
    optimize_args,
    run_gpo,
    start_gpo,
)
from tests.waiting import CONNECTION_ERRORS, DEADLINE_S, wait_until

TRIALS = 20


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    # 10x real time: a run lasts about two seconds, long enough to be killed anywhere in it.
    with answered_server(10.0) as handle:
        yield handle


def outcome(run_dir: Path) -> dict[str, Any]:
    (task,) = orjson.loads((run_dir / "summary.json").read_bytes())["tasks"]
    keys = ("trajectory", "final_prompt", "final_dev", "final_test", "initial_dev", "initial_test")
    return {key: task[key] for key in keys}


def cached_sequences(cache: Path) -> dict[bytes, int]:
    """Request key -> sequences in its answer, for every answer the cache file holds."""
    if not cache.exists():
        return {}
    connection = sqlite3.connect(cache)
    try:
        rows = connection.execute("SELECT key, payload FROM responses").fetchall()
    finally:
        connection.close()
    return {key: len(orjson.loads(payload)[0]) for key, payload in rows}


def served(server: SimulatedServerProcess) -> float:
    return metric_total(server.metrics(), "sim_sequences_served_total")


def answers_saved(cache: Path) -> int | None:
    """How many answers a running run's cache holds now; None while it cannot be read yet."""
    if not cache.exists():
        return 0
    try:
        connection = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=DEADLINE_S)
        try:
            return connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:  # not created yet, or caught mid-creation
        return None


def busy_sequences(server: SimulatedServerProcess) -> float | None:
    try:
        metrics = server.metrics()
    except CONNECTION_ERRORS:
        return None
    return metric_total(metrics, "vllm:num_requests_running") + metric_total(
        metrics, "vllm:num_requests_waiting"
    )


def wait_until_idle(server: SimulatedServerProcess) -> None:
    """Until the server holds no sequence of the killed client (it aborts them on disconnect)."""
    if not wait_until(lambda: busy_sequences(server) == 0):
        raise AssertionError("the server stayed busy after the client was killed")


@dataclass
class Trial:
    target_answers: int
    answered_before_kill: int
    resent: int
    sent_by_resume: int
    same_result: bool


def kill_at(url: str, run_dir: Path, answers: int) -> bool:
    """Start a run, SIGKILL it once its cache holds `answers` answers (0: once its run directory
    exists); False if it finished first."""
    process = start_gpo(*optimize_args(url, run_dir), capture=False)
    cache = run_dir / "cache.sqlite"

    def due() -> bool:
        if process.poll() is not None:
            return True
        if not (run_dir / "config.json").exists():
            return False
        saved = answers_saved(cache)
        return saved is not None and saved >= answers

    try:
        assert wait_until(due, interval_s=0.005), "the run made no progress"
        if process.poll() is not None:
            return False
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=DEADLINE_S)
    return True


@pytest.fixture(scope="module")
def uninterrupted(server, tmp_path_factory) -> tuple[dict[str, Any], int]:
    """The uninterrupted run's outcome and the number of answers it saved."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    done = run_gpo(*optimize_args(f"{server.url}/v1", run_dir))
    assert done.returncode == 0, done.stderr
    return outcome(run_dir), len(cached_sequences(run_dir / "cache.sqlite"))


@pytest.mark.slow
def test_twenty_kills_at_random_moments_resume_to_the_same_result(
    server, uninterrupted, tmp_path
) -> None:
    reference, total_answers = uninterrupted
    url = f"{server.url}/v1"
    chooser = random.Random(20)
    trials: list[Trial] = []
    for index in range(TRIALS):
        run_dir = tmp_path / f"trial-{index:02d}"
        target = chooser.randint(0, int(0.9 * total_answers))
        for _ in range(8):
            if kill_at(url, run_dir, target):
                break
            shutil.rmtree(run_dir)  # it finished first: aim earlier
            target //= 2
        else:
            raise AssertionError(f"trial {index}: every run finished before it could be killed")
        wait_until_idle(server)
        before_kill = cached_sequences(run_dir / "cache.sqlite")
        served_before = served(server)

        resumed = run_gpo("optimize", "--resume", str(run_dir), "--no-progress")
        assert resumed.returncode == 0, (index, target, resumed.stderr)
        after = cached_sequences(run_dir / "cache.sqlite")
        added = {key: n for key, n in after.items() if key not in before_kill}
        sent = served(server) - served_before
        assert before_kill.keys() <= after.keys()
        trials.append(
            Trial(
                target_answers=target,
                answered_before_kill=len(before_kill),
                resent=int(sent - sum(added.values())),
                sent_by_resume=int(sent),
                same_result=outcome(run_dir) == reference,
            )
        )
    assert [t for t in trials if not t.same_result] == []
    assert [t for t in trials if t.resent != 0] == []
    # The moments were spread over the run: some kills before any answer, most after many.
    assert sum(1 for t in trials if t.answered_before_kill > 0) >= TRIALS // 2
    assert sum(1 for t in trials if t.sent_by_resume > 0) >= TRIALS // 2
