"""One cache file shared by several processes at once: no "database is locked", no corrupt entry,
and every overlapping answer computed once (claims: cross-process in-flight de-duplication).

The claim protocol is tested on the cache alone (four processes racing on the same keys, a
killed owner, an expired claim), then end to end: four `gpo eval` processes scoring overlapping
prompts through one cache file against one simulated server, whose counters show that no
request was answered twice."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import orjson
import pytest

from backends.protocol import Completion
from backends.simulated import metric_total
from benchmarks import load_task
from engine.cache import ResponseCache
from tests.gpo_fakes import DATA_DIR
from tests.gpo_process import REPO, TASK, answered_server, start_gpo
from tests.waiting import DEADLINE_S

KEYS = [f"key-{i:04d}".encode() for i in range(600)]


def answer_for(key: bytes) -> Completion:
    return Completion((f"answer to {key.decode()}",), len(key), 7, ("stop",))


def _racing_worker(path: str, seed: int, start: ProcessBarrier, out: str) -> None:
    """Claim, answer and wait for the shared keys in a random order, like an engine would."""
    cache = ResponseCache(path)
    order = list(KEYS)
    random.Random(seed).shuffle(order)
    computed: list[str] = []
    waiting: list[bytes] = []
    start.wait(DEADLINE_S)  # all four begin together, however long each took to start

    def answer(keys: list[bytes]) -> None:
        time.sleep(0.002 * len(keys))  # the "HTTP call"
        cache.put_many([(key, answer_for(key)) for key in keys])
        computed.extend(key.decode() for key in keys)

    for begin in range(0, len(order), 16):
        outcome = cache.claim_many(order[begin : begin + 16], ttl_s=60)
        waiting.extend(outcome.elsewhere)
        answer(outcome.mine)
    deadline = time.monotonic() + DEADLINE_S
    while waiting and time.monotonic() < deadline:
        poll = cache.poll_claims(waiting)
        if poll.free:
            outcome = cache.claim_many(poll.free, ttl_s=60)
            answer(outcome.mine)
        settled = set(poll.answered) | set(poll.free)
        waiting = [key for key in waiting if key not in settled]
        time.sleep(0.01)
    cache.close()
    Path(out).write_bytes(orjson.dumps({"computed": computed, "unsettled": len(waiting)}))


def test_four_processes_racing_on_one_cache_answer_each_key_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    outs = [str(tmp_path / f"worker-{i}.json") for i in range(4)]
    workers = [
        context.Process(target=_racing_worker, args=(path, seed, start, out))
        for seed, out in enumerate(outs)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(2 * DEADLINE_S)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    reports = [orjson.loads(Path(out).read_bytes()) for out in outs]
    computed = [key for report in reports for key in report["computed"]]
    assert all(report["unsettled"] == 0 for report in reports)
    assert sorted(computed) == sorted(key.decode() for key in KEYS)  # each exactly once
    assert sum(1 for report in reports if report["computed"]) >= 2  # they really shared it

    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()
    assert claim_rows(path) == 0
    cache = ResponseCache(path)
    assert len(cache) == len(KEYS)
    for key in KEYS:
        hit = cache.get(key)
        assert hit is not None and hit.texts == answer_for(key).texts


def _claim_and_die(path: str) -> None:
    cache = ResponseCache(path)
    cache.claim_many(KEYS[:10], ttl_s=600)
    os.kill(os.getpid(), signal.SIGKILL)


def claim_rows(path: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT COUNT(*) FROM inflight_claims").fetchone()[0]
    finally:
        connection.close()


def test_claims_of_a_killed_process_are_ignored_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    cache = ResponseCache(path)
    context = multiprocessing.get_context("spawn")
    victim = context.Process(target=_claim_and_die, args=(path,))
    victim.start()
    victim.join(DEADLINE_S)
    assert victim.exitcode == -signal.SIGKILL
    assert claim_rows(path) == 10  # unexpired, but their owner is gone
    poll = cache.poll_claims(KEYS[:10])
    assert poll.free == KEYS[:10]
    outcome = cache.claim_many(KEYS[:10])
    assert outcome.mine == KEYS[:10] and not outcome.elsewhere
    cache.close()
    assert claim_rows(path) == 0


def test_opening_a_cache_forgets_the_claims_of_dead_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    context = multiprocessing.get_context("spawn")
    victim = context.Process(target=_claim_and_die, args=(path,))
    victim.start()
    victim.join(DEADLINE_S)
    assert claim_rows(path) == 10
    ResponseCache(path).close()
    assert claim_rows(path) == 0


def test_live_claims_are_respected_until_answered_released_or_expired(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    first, second = ResponseCache(path), ResponseCache(path)
    assert first.claim_many(KEYS[:6], ttl_s=600).mine == KEYS[:6]
    assert first.claim_many(KEYS[:6], ttl_s=600).mine == KEYS[:6]  # renewing one's own claim
    outcome = second.claim_many(KEYS[:8], ttl_s=600)
    assert outcome.elsewhere == KEYS[:6] and outcome.mine == KEYS[6:8]

    first.put_many([(key, answer_for(key)) for key in KEYS[:2]])
    first.release_many(KEYS[2:4])
    poll = second.poll_claims(KEYS[:6])
    assert sorted(poll.answered) == KEYS[:2]
    assert poll.answered[KEYS[0]].texts == answer_for(KEYS[0]).texts
    assert poll.free == KEYS[2:4]  # released: the waiter sends them itself
    assert first.claims_held() == 2

    again = second.claim_many(KEYS[:2])
    assert sorted(again.answered) == KEYS[:2] and not again.mine

    first.claim_many(KEYS[4:6], ttl_s=0.05)  # renew with a short life
    time.sleep(0.1)
    assert second.poll_claims(KEYS[4:6]).free == KEYS[4:6]
    first.close()
    second.close()


def test_opening_one_new_file_from_many_processes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite"
    script = (
        "import sys; from engine.cache import ResponseCache; from backends.protocol import "
        "Completion; c = ResponseCache(sys.argv[1]); "
        "c.put_many([(sys.argv[2].encode(), Completion(('x',), 1, 1))]); c.close()"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), f"k{i}"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 8, errors
    assert not any("locked" in error for error in errors)
    assert len(ResponseCache(path)) == 8


# -- end to end: four `gpo eval` processes on one cache file -------------------------------------

SHARED_PROMPTS = ("Let's think step by step.", "Check each move carefully, then answer.")


def gpo_eval(url: str, cache: Path, out: Path, own_prompt: str) -> subprocess.Popen[str]:
    arguments = ["eval", "--task", TASK, "--split", "eval", "--cache", str(cache)]
    for prompt in (*SHARED_PROMPTS, own_prompt):
        arguments += ["--prompt", prompt]
    arguments += ["--scorer-url", url, "--scorer-chat-template", "chatml", "--out", str(out)]
    return start_gpo(*arguments)


def scores(out: Path) -> dict[str, float]:
    summary = orjson.loads((out / "summary.json").read_bytes())
    return {row["prompt"]: row["score"] for row in summary["rows"]}


@pytest.mark.slow
def test_four_gpo_eval_processes_share_one_cache_and_pay_once(tmp_path: Path) -> None:
    task = load_task(TASK, DATA_DIR)
    cache = tmp_path / "shared.sqlite"
    # Slow enough (4x real time) that the four runs overlap for seconds.
    with answered_server(4.0) as server:
        url = f"{server.url}/v1"
        outs = [tmp_path / f"run-{i}" for i in range(4)]
        processes = [
            gpo_eval(url, cache, out, f"Answer with care, variant {i}.")
            for i, out in enumerate(outs)
        ]
        results = [process.communicate(timeout=240) for process in processes]
        metrics = server.metrics()
    for process, (_stdout, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
        assert "locked" not in stderr and "Traceback" not in stderr, stderr
    samples = len(task.split("eval"))
    distinct_requests = (len(SHARED_PROMPTS) + 4) * samples * 2  # two turns per sample
    served = metric_total(metrics, "sim_sequences_served_total")
    assert len(ResponseCache(cache)) == distinct_requests
    assert served == distinct_requests  # every overlapping answer was computed once
    ledgers = [orjson.loads((out / "summary.json").read_bytes())["ledger"] for out in outs]
    assert sum(ledger["totals"]["requests"] for ledger in ledgers) == distinct_requests
    assert all(ledger["totals"]["failures"] == 0 for ledger in ledgers)
    shared_scores = [{p: s for p, s in scores(out).items() if p in SHARED_PROMPTS} for out in outs]
    assert all(each == shared_scores[0] for each in shared_scores)
