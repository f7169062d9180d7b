"""`--json` of `gpo optimize` and `gpo eval`: stdout is one JSON object with the documented
fields (scores, prompts, cost per phase, wall time, the run's folder, status, exit code), the
human summary goes to stderr, and the numbers agree with the files the run wrote."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from backends.simulated import SimulatedServerProcess, metric_total
from gpo.json_output import phase_costs
from tests.gpo_process import answered_server, eval_args, optimize_args, run_gpo, start_gpo

DEADLINE_S = 120.0

COST_FIELDS = {
    "calls",
    "http_calls",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "usd",
    "unpriced_models",
    "by_phase",
}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with answered_server(50.0) as handle:
        yield handle.url


def parse_stdout(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout  # one object, nothing else
    payload = orjson.loads(lines[0])
    assert isinstance(payload, dict)
    return payload


def test_optimize_json_is_the_summary_with_cost_per_phase(server, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_gpo(*optimize_args(f"{server}/v1", run_dir), "--json")
    assert done.returncode == 0, done.stderr
    payload = parse_stdout(done.stdout)
    assert "initial vs final prompt" in done.stderr  # the table moved to stderr
    assert payload["command"] == "optimize" and payload["status"] == "finished"
    assert payload["exit_code"] == 0 and Path(payload["run_dir"]) == run_dir.absolute()
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    (task,) = payload["tasks"]
    (stored,) = summary["tasks"]
    for field in ("final_prompt", "initial_prompt", "final_dev", "final_test", "initial_test"):
        assert task[field] == stored[field]
    assert task["steps_done"] == 2 and len(task["trajectory"]) == 3
    cost = payload["cost"]
    assert set(cost) >= COST_FIELDS and cost["sessions"] == 1
    assert set(cost["by_phase"]) == {"scoring", "optimizing"}
    assert cost["calls"] == sum(p["calls"] for p in cost["by_phase"].values()) > 0
    assert cost["total_tokens"] == summary["total_tokens"]
    assert payload["wall_time_s"] > 0 and payload["groups"]["final_test"]


def test_optimize_json_of_a_budget_stop_says_stopped_and_exit_3(server, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_gpo(*optimize_args(f"{server}/v1", run_dir, "--budget-tokens", "3000"), "--json")
    assert done.returncode == 3, done.stderr
    payload = parse_stdout(done.stdout)
    assert payload["status"] == "stopped" and payload["exit_code"] == 3
    assert payload["tasks"][0]["status"] == "stopped"


def test_eval_json_rows_scores_and_cost(server, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    done = run_gpo(*eval_args(server, out, "--prompt", "A", "--prompt", "B", "--json"))
    assert done.returncode == 0, done.stderr
    payload = parse_stdout(done.stdout)
    assert "Scores (mean over scored samples)" in done.stderr
    assert payload["command"] == "eval" and payload["status"] == "finished"
    assert payload["exit_code"] == 0 and Path(payload["out_dir"]) == out
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert [row["prompt"] for row in payload["rows"]] == ["A", "B"]
    assert [row["score"] for row in payload["rows"]] == [row["score"] for row in summary["rows"]]
    assert payload["samples"] == 16 and payload["failures"] == 0
    assert set(payload["cost"]) >= COST_FIELDS
    assert payload["cost"]["calls"] == summary["ledger"]["totals"]["requests"] > 0
    assert set(payload["cost"]["by_phase"]) == {"scoring"}


def test_phase_costs_sum_rows_across_models_and_sessions() -> None:
    row = {"phase": "scoring", "requests": 3, "prompt_tokens": 10, "completion_tokens": 5}
    other = {"phase": "optimizing", "requests": 1, "cost_usd": 0.25, "cache_hits": 2}
    phases = phase_costs([{"rows": [row, other]}, {"rows": [row]}])
    assert phases["scoring"]["calls"] == 6 and phases["scoring"]["total_tokens"] == 30
    assert phases["optimizing"]["usd"] == 0.25 and phases["optimizing"]["cache_hits"] == 2


def test_eval_json_of_a_sigterm_stop_says_interrupted_and_where(tmp_path: Path) -> None:
    """A slowed server (a turn takes seconds): SIGTERM lands mid-evaluation; stdout is still one
    object, saying interrupted, exit 143, and where the answers so far are."""
    out = tmp_path / "eval"
    with answered_server(0.05) as slow:
        process = start_gpo(*eval_args(slow.url, out, "--json", limit=16))
        try:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and process.poll() is None:
                if _running(slow) > 0:
                    break
                time.sleep(0.1)
            assert process.poll() is None, "the evaluation ended before it could be stopped"
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=DEADLINE_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 143, stderr
    payload = parse_stdout(stdout)
    assert payload == {
        "command": "eval",
        "status": "interrupted",
        "exit_code": 143,
        "out_dir": str(out),
    }


def _running(server: SimulatedServerProcess) -> float:
    try:
        return metric_total(server.metrics(), "vllm:num_requests_running")
    except OSError:  # a loaded machine may drop one probe; the next one decides
        return 0.0


def test_dry_run_json_gives_each_task_its_estimate(tmp_path: Path) -> None:
    done = run_gpo(
        *("optimize", "--task", "bbh/navigate", "--dry-run", "--json"),
        *("--scorer-url", "http://127.0.0.1:9/v1", "--run-dir", str(tmp_path / "run")),
    )
    assert done.returncode == 0, done.stderr
    payload = parse_stdout(done.stdout)
    assert payload["status"] == "dry_run" and payload["exit_code"] == 0
    estimate = payload["estimates"]["bbh/navigate"]
    assert estimate["scorer_calls"] > 0 and estimate["total_tokens"] > 0
    assert not (tmp_path / "run").exists()
