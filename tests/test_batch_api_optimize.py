"""`gpo optimize --batch-api` and `gpo reproduce --batch-api`: the test evaluations (nothing
waits on them) go through the Batch API at the batch price; the steps' train and dev scoring stay
on the ordinary route, and the results equal those of a run without the flag."""

from __future__ import annotations

import urllib.request

import orjson

from tests.gpo_process import answered_server, optimize_args, run_gpo
from tests.waiting import DEADLINE_S

KEYS = ("initial_test", "final_test", "final_prompt", "trajectory")


def test_optimize_batch_api_sends_only_test_evaluations_as_batches(tmp_path):
    with answered_server(100.0, batch_delay_s=1.0) as server:
        url = f"{server.url}/v1"
        plain = run_gpo(*optimize_args(url, tmp_path / "plain", steps=1), timeout=600)
        assert plain.returncode == 0, plain.stderr[-3000:]
        arguments = optimize_args(url, tmp_path / "batch", "--batch-api", steps=1)
        batched = run_gpo(
            *arguments,
            "--batch-poll-max",
            "0.2",
            "--cache",
            str(tmp_path / "c.sqlite"),
            timeout=600,
        )
        assert batched.returncode == 0, batched.stderr[-3000:]
        with urllib.request.urlopen(f"{server.url}/sim/batches", timeout=DEADLINE_S) as answer:
            batches = orjson.loads(answer.read())
    summaries = [
        orjson.loads((tmp_path / name / "summary.json").read_bytes()) for name in ("plain", "batch")
    ]
    (plain_task,), (batch_task,) = (summary["tasks"] for summary in summaries)
    assert {k: plain_task[k] for k in KEYS} == {k: batch_task[k] for k in KEYS}
    lines = sum(batch["request_counts"]["total"] for batch in batches.values())
    # 8 test samples x (initial, final) prompts x (first turn, answer turn), at most
    assert 0 < lines <= 32
    rows = orjson.loads((tmp_path / "batch" / "ledger.json").read_bytes())["rows"]
    assert sum(row.get("batch_requests", 0) for row in rows) == lines
    scoring = [row for row in rows if row["phase"] == "scoring"]
    assert sum(row["http_calls"] for row in scoring) > 0  # train and dev scoring did not wait


def test_reproduce_batch_api_sends_the_cells_test_evaluations_as_batches(tmp_path):
    def sweep(url: str, name: str, *extra: str) -> list[str]:
        arguments = ["reproduce", "--seeds", "1", "--steps", "1", "--candidates", "2"]
        arguments += ["--task", "bbh/navigate", "--method", "gpo"]
        arguments += ["--train-size", "16", "--dev-size", "8", "--test-size", "8"]
        arguments += ["--scorer-url", url, "--optimizer-url", url]
        return [*arguments, "--sweep-dir", str(tmp_path / name), "--no-progress", *extra]

    with answered_server(100.0, batch_delay_s=1.0) as server:
        url = f"{server.url}/v1"
        plain = run_gpo(*sweep(url, "plain"), timeout=600)
        assert plain.returncode == 0, plain.stderr[-3000:]
        extra = ("--batch-api", "--batch-poll-max", "0.2", "--cache", str(tmp_path / "c.sqlite"))
        batched = run_gpo(*sweep(url, "batch", *extra), timeout=600)
        assert batched.returncode == 0, batched.stderr[-3000:]
        with urllib.request.urlopen(f"{server.url}/sim/batches", timeout=DEADLINE_S) as answer:
            batches = orjson.loads(answer.read())
    results = []
    for name in ("plain", "batch"):
        (cell,) = sorted((tmp_path / name / "cells").iterdir())
        (task,) = orjson.loads((cell / "summary.json").read_bytes())["tasks"]
        results.append({key: task[key] for key in KEYS})
    assert results[0] == results[1]
    assert 0 < sum(batch["request_counts"]["total"] for batch in batches.values()) <= 32
    entries = orjson.loads((tmp_path / "batch" / "batches.json").read_bytes())["batches"]
    assert entries and all(entry["state"] == "collected" for entry in entries)
