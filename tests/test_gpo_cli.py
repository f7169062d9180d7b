"""`gpo optimize` and `gpo report` end to end, against the simulated vLLM server as both scorer
and optimizer: a full run, a SIGKILLed run resumed, a budget-stopped run resumed, and the errors
a user can make."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gpo_process import (
    answered_server,
    gpo_environment,
    optimize_args,
    run_gpo,
    start_gpo,
)

SECRET = "sk-test-key-that-must-not-be-stored"


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A simulated server slow enough (4x real time) that a run can be killed mid-step."""
    with answered_server(4.0) as server:
        yield f"{server.url}/v1"


def small_run(url: str, run_dir: Path, *extra: str) -> list[str]:
    return optimize_args(url, run_dir, *extra, chat_template=None)


def environment() -> dict[str, str]:
    return gpo_environment({"OPENAI_API_KEY": SECRET})


def gpo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_gpo(*args, env=environment(), timeout=timeout)


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def task_outcome(run_dir: Path) -> dict[str, Any]:
    (task,) = load(run_dir / "summary.json")["tasks"]
    return {key: task[key] for key in ("trajectory", "final_prompt", "final_dev", "final_test")}


@pytest.fixture(scope="module")
def uninterrupted(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "whole"
    done = gpo(*small_run(server_url, run_dir))
    assert done.returncode == 0, done.stderr
    return run_dir


def test_full_two_step_run_and_report(uninterrupted: Path) -> None:
    summary = load(uninterrupted / "summary.json")
    (task,) = summary["tasks"]
    assert summary["status"] == "finished"
    assert task["steps_done"] == 2 and len(task["trajectory"]) == 3
    assert task["final_test"] is not None and task["initial_test"] is not None
    ledger = load(uninterrupted / "ledger.json")
    optimizing = [row for row in ledger["rows"] if row["phase"] == "optimizing"]
    assert sum(row["requests"] for row in optimizing) == 2  # one n=4 request per step
    for path in uninterrupted.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".log"):
            assert SECRET not in path.read_text(errors="replace"), path
    config = load(uninterrupted / "config.json")
    assert config["arguments"]["scorer_api_key_env"] == "OPENAI_API_KEY"
    assert "no embedding model configured" in config["embedder"]["description"]

    report = gpo("report", str(uninterrupted))
    assert report.returncode == 0, report.stderr
    assert (uninterrupted / "report.png").read_bytes().startswith(b"\x89PNG")
    markdown = (uninterrupted / "report.md").read_text()
    assert task["final_prompt"] in markdown
    assert "| Method | bbh |" in markdown


def test_summary_table_is_printed(server_url: str, tmp_path: Path) -> None:
    done = gpo(*small_run(server_url, tmp_path / "run", "--method", "cot"))
    assert done.returncode == 0, done.stderr
    assert "initial vs final prompt" in done.stdout
    assert "Let's think step by step." in done.stdout
    assert "run directory:" in done.stdout


def test_sigkilled_run_resumes_to_the_uninterrupted_result(
    server_url: str, uninterrupted: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "killed"
    process = start_gpo(*small_run(server_url, run_dir), env=environment(), capture=False)
    trajectory = run_dir / "tasks" / "bbh__navigate" / "trajectory.jsonl"
    deadline = time.monotonic() + 120
    try:
        # Kill once the first step is written: the second is then under way.
        while time.monotonic() < deadline and process.poll() is None:
            if trajectory.exists() and len(trajectory.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (run_dir / "summary.json").exists()

    resumed = gpo("optimize", "--resume", str(run_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert task_outcome(run_dir) == task_outcome(uninterrupted)
    ledger = load(run_dir / "ledger.json")["totals"]
    assert ledger["cache_hits"] > 0  # finished work came back from the cache
    assert load(run_dir / "state.json")["sessions"] == 2


def test_budget_stops_cleanly_and_a_bigger_budget_finishes_the_run(
    server_url: str, uninterrupted: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "budget"
    stopped = gpo(*small_run(server_url, run_dir, "--budget-tokens", "15000"))
    assert stopped.returncode == 3, stopped.stderr
    assert "ran out of budget" in stopped.stdout
    summary = load(run_dir / "summary.json")
    assert summary["status"] == "stopped"
    assert summary["tasks"][0]["steps_done"] < 2

    finished = gpo(
        "optimize", "--resume", str(run_dir), "--budget-tokens", "10000000", "--no-progress"
    )
    assert finished.returncode == 0, finished.stderr
    assert task_outcome(run_dir) == task_outcome(uninterrupted)


def test_resume_refuses_a_changed_flag(uninterrupted: Path) -> None:
    changed = gpo("optimize", "--resume", str(uninterrupted), "--candidates", "5")
    assert changed.returncode == 2
    assert "--candidates cannot change when resuming" in changed.stderr


def test_user_errors_name_what_and_where(server_url: str, tmp_path: Path) -> None:
    unknown = gpo(*small_run(server_url, tmp_path / "a", "--task", "bbh/navigat"))
    assert unknown.returncode == 2
    assert "bbh/navigat" in unknown.stderr
    bad_method = gpo(*small_run(server_url, tmp_path / "b", "--method", "adam"))
    assert bad_method.returncode == 2 and "--method" in bad_method.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    busy = gpo(*small_run(server_url, tmp_path / "busy"))
    assert busy.returncode == 2 and "--resume" in busy.stderr
    fixed = gpo(
        *small_run(server_url, tmp_path / "c", "--method", "empty", "--initial-prompt", "x")
    )
    assert fixed.returncode == 2 and "--initial-prompt" in fixed.stderr
    not_a_run = gpo("optimize", "--resume", str(tmp_path / "b"))
    assert not_a_run.returncode == 2 and "not a run directory" in not_a_run.stderr
    assert not (tmp_path / "a").exists()  # refused before a run directory was made
