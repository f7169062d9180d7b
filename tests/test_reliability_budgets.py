"""Budgets: `--budget-tokens` and `--budget-usd` stop a run at its cap, save everything and say
so; requests in flight when the cap is reached are counted (the ledger equals what the server
generated, token for token), and a stopped optimisation resumed with a larger budget ends as an
uninterrupted run does, without paying again for what it had."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.simulated import SimulatedServerProcess, metric_total
from tests.gpo_process import TASK, answered_server, optimize_args, run_gpo

MODEL = "simulated-llama-2-7b-chat"
PRICE_IN, PRICE_OUT = 10.0, 30.0  # dollars per million tokens


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    with answered_server(20.0) as handle:
        yield handle


@pytest.fixture(scope="module")
def prices(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    path.write_bytes(
        orjson.dumps({MODEL: {"input_per_mtok": PRICE_IN, "output_per_mtok": PRICE_OUT}})
    )
    return path


def served_tokens(server: SimulatedServerProcess) -> tuple[float, float]:
    metrics = server.metrics()
    return (
        metric_total(metrics, "sim_prompt_tokens_served_total"),
        metric_total(metrics, "sim_completion_tokens_served_total"),
    )


def cache_rows(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    finally:
        connection.close()


def eval_args(url: str, out: Path, *extra: str) -> list[str]:
    arguments = ["eval", "--task", TASK, "--scorer-url", f"{url}/v1"]
    arguments += ["--scorer-chat-template", "chatml", "--out", str(out)]
    for index in range(3):
        arguments += ["--prompt", f"Think step by step, variant {index}."]
    return [*arguments, *extra]


def cost(prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * PRICE_IN + completion_tokens * PRICE_OUT) / 1e6


@pytest.mark.parametrize("budget", ["tokens", "usd"])
def test_an_evaluation_stops_at_its_budget_and_counts_every_answer(
    server, prices, tmp_path, budget
) -> None:
    out = tmp_path / "out"
    cap = ["--budget-tokens", "30000"] if budget == "tokens" else ["--budget-usd", "0.5"]
    before = served_tokens(server)
    done = run_gpo(*eval_args(server.url, out, "--prices", str(prices), *cap))
    after = served_tokens(server)
    assert done.returncode == 3, done.stderr  # stopped by its budget, as `gpo optimize` says
    assert "stopped" in done.stdout and "budget" in done.stdout
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["stopped_by_budget"]
    totals = summary["ledger"]["totals"]
    generated_prompt = after[0] - before[0]
    generated_completion = after[1] - before[1]
    # Every token the server generated for this run is on the ledger, in flight at the cap or not.
    assert totals["prompt_tokens"] == generated_prompt > 0
    assert totals["completion_tokens"] == generated_completion > 0
    if budget == "tokens":
        assert totals["total_tokens"] <= 30000
    else:
        assert totals["cost_usd"] == pytest.approx(cost(generated_prompt, generated_completion))
        assert totals["cost_usd"] <= 0.5
    assert summary["failures"] > 0  # the samples it did not get to are counted, not dropped
    assert cache_rows(out / "cache.sqlite") == totals["requests"]  # every answer was kept
    records = [orjson.loads(line) for line in (out / "records.jsonl").read_bytes().splitlines()]
    assert all(r["failure"] is None or "budget" in r["failure"] for r in records)


def outcome(run_dir: Path) -> dict[str, Any]:
    (task,) = orjson.loads((run_dir / "summary.json").read_bytes())["tasks"]
    return {key: task[key] for key in ("trajectory", "final_prompt", "final_dev", "final_test")}


def test_an_optimisation_stops_at_its_dollar_cap_and_resumes_to_the_same_result(
    server, prices, tmp_path
) -> None:
    url = f"{server.url}/v1"
    whole = tmp_path / "whole"
    uninterrupted = run_gpo(*optimize_args(url, whole, "--prices", str(prices), steps=3))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    full_cost = orjson.loads((whole / "summary.json").read_bytes())["cost_usd"]
    cap = round(full_cost / 2, 4)

    run_dir = tmp_path / "capped"
    before = served_tokens(server)
    stopped = run_gpo(
        *optimize_args(url, run_dir, "--prices", str(prices), "--budget-usd", str(cap), steps=3)
    )
    after = served_tokens(server)
    assert stopped.returncode == 3, stopped.stderr
    assert "ran out of budget" in stopped.stdout and "--resume" in stopped.stdout
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "stopped" and summary["tasks"][0]["steps_done"] < 3
    ledger = orjson.loads((run_dir / "ledger.json").read_bytes())["totals"]
    assert ledger["prompt_tokens"] == after[0] - before[0]
    assert ledger["completion_tokens"] == after[1] - before[1]
    assert ledger["cost_usd"] <= cap
    assert orjson.loads((run_dir / "state.json").read_bytes())["status"] == "stopped"
    kept = cache_rows(run_dir / "cache.sqlite")
    assert kept == ledger["requests"]

    before = served_tokens(server)
    resumed = run_gpo("optimize", "--resume", str(run_dir), "--budget-usd", "100", "--no-progress")
    after = served_tokens(server)
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run_dir) == outcome(whole)
    resumed_ledger = orjson.loads((run_dir / "ledger.json").read_bytes())["totals"]
    assert resumed_ledger["cache_hits"] >= kept  # what the capped session bought was reused
    assert resumed_ledger["prompt_tokens"] == after[0] - before[0]
    # The two sessions together paid what one uninterrupted run pays, not more.
    whole_ledger = orjson.loads((whole / "ledger.json").read_bytes())["totals"]
    assert ledger["total_tokens"] + resumed_ledger["total_tokens"] == whole_ledger["total_tokens"]
