"""`gpo runs` and `gpo compare` end to end, on real runs against the simulated server that knows
the answers: two evaluations of the same prompt cannot be told apart (the interval contains 0),
a good prompt against the empty prompt can (the interval excludes 0), and `gpo runs` lists the
runs with their status and cost."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gpo_process import (
    TASK,
    answered_server,
    eval_args,
    optimize_args,
    run_gpo,
    start_gpo,
)

GOOD = "Carefully check each step and give the final answer option."
SAMPLES = 40


def gpo(*args: str) -> subprocess.CompletedProcess[str]:
    return run_gpo(*args, timeout=300)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/: the good prompt evaluated twice, the empty prompt once, a small optimize run."""
    folder = tmp_path_factory.mktemp("runs") / "runs"
    with answered_server(50.0) as server:
        for name, prompt in (("good-1", GOOD), ("good-2", GOOD), ("empty", "")):
            arguments = eval_args(server.url, folder / name, "--prompt", prompt, limit=SAMPLES)
            done = gpo(*arguments)
            assert done.returncode == 0, done.stderr
        done = gpo(*optimize_args(f"{server.url}/v1", folder / "optimized", steps=1))
        assert done.returncode == 0, done.stderr
    return folder


def test_same_prompt_twice_gives_an_interval_containing_zero(runs: Path) -> None:
    comparison = as_json(gpo("compare", str(runs / "good-1"), str(runs / "good-2"), "--json"))
    (task,) = comparison["tasks"]
    assert task["task"] == TASK and task["samples"] == [SAMPLES, SAMPLES]
    baseline, difference = task["differences"]
    assert baseline is None
    assert difference["n_shared"] == SAMPLES
    assert difference["low"] <= 0.0 <= difference["high"]
    assert difference["excludes_zero"] is False
    assert comparison["bootstrap"]["resamples"] == 10_000

    text = gpo("compare", str(runs / "good-1"), str(runs / "good-2"))
    assert text.returncode == 0, text.stderr
    assert f"+0.0 [+0.0, +0.0] n={SAMPLES}" in text.stdout
    assert f"n={SAMPLES} *" not in text.stdout


def test_good_prompt_against_the_empty_prompt_excludes_zero(runs: Path) -> None:
    comparison = as_json(gpo("compare", str(runs / "empty"), str(runs / "good-1"), "--json"))
    (task,) = comparison["tasks"]
    empty, good = task["scores"]
    assert good - empty > 0.3  # the simulated scorer rewards the good prompt's words
    difference = task["differences"][1]
    assert difference["mean"] == pytest.approx(good - empty)
    assert 0.0 < difference["low"] <= difference["mean"] <= difference["high"]
    assert difference["excludes_zero"] is True
    assert comparison["runs"][0]["prompts"] == {TASK: ""}
    assert comparison["runs"][1]["cost"]["calls"] == 2 * SAMPLES  # two turns per sample

    text = gpo("compare", str(runs / "empty"), str(runs / "good-1"), "--seed", "5")
    assert text.returncode == 0, text.stderr
    assert f"n={SAMPLES} *" in text.stdout
    assert "seed 5" in text.stdout and "Cost of each run" in text.stdout


def test_optimize_run_compared_on_its_shared_test_samples(runs: Path) -> None:
    """The optimize run scored 8 test samples, the evaluation 40: compared on those shared."""
    comparison = as_json(gpo("compare", str(runs / "good-1"), str(runs / "optimized"), "--json"))
    (task,) = comparison["tasks"]
    summary = orjson.loads((runs / "optimized" / "summary.json").read_bytes())
    assert task["scores"][1] == pytest.approx(summary["tasks"][0]["final_test"])
    assert task["samples"][1] == 8
    assert 0 < task["differences"][1]["n_shared"] <= 8
    assert comparison["runs"][1]["prompts"][TASK] == summary["tasks"][0]["final_prompt"]


def test_no_shared_sample_is_refused_with_one_line(runs: Path) -> None:
    done = gpo("compare", str(runs / "good-1"), str(runs / "optimized"), "--split", "eval")
    assert done.returncode == 2
    assert "share no scored eval sample" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    stray = gpo("compare", str(runs / "good-1"), str(runs.parent))
    assert stray.returncode == 2 and "not a gpo run directory" in stray.stderr


def test_runs_lists_every_run_with_status_and_cost(runs: Path, tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    shutil.copytree(runs, folder)
    (folder / "notes").mkdir()
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text("{not json")
    listing = as_json(gpo("runs", str(folder), "--json"))
    rows = {row["name"]: row for row in listing["runs"]}
    assert set(rows) == {"good-1", "good-2", "empty", "optimized", "notes", "broken"}
    for name in ("good-1", "good-2", "empty"):
        row = rows[name]
        assert (row["kind"], row["status"], row["tasks"]) == ("eval", "finished", [TASK])
        assert row["cost"]["calls"] == 2 * SAMPLES and row["cost"]["tokens"] > 0
        assert row["started"] is not None and row["wall_time_s"] > 0
    assert rows["good-1"]["final_test"] > rows["empty"]["final_test"]
    optimized = rows["optimized"]
    assert (optimized["kind"], optimized["status"], optimized["method"]) == (
        "optimize",
        "finished",
        "gpo",
    )
    assert optimized["final_dev"] is not None and optimized["final_test"] is not None
    assert optimized["cost"]["calls"] > 0
    assert (rows["notes"]["status"], rows["broken"]["status"]) == ("foreign", "unreadable")
    started = [row["started"] for row in listing["runs"] if row["started"]]
    assert started == sorted(started)

    text = gpo("runs", str(folder))
    assert text.returncode == 0, text.stderr
    for word in ("good-1", "optimized", "finished", "unreadable", "foreign", "unpriced"):
        assert word in text.stdout


def test_runs_of_a_missing_folder_is_one_error_line(tmp_path: Path) -> None:
    done = gpo("runs", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "no such folder" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    listed = gpo("runs", str(empty))
    assert listed.returncode == 0 and "no runs under" in listed.stdout


def _status_of(folder: Path, name: str) -> str:
    listing = as_json(gpo("runs", str(folder), "--json"))
    return next(row["status"] for row in listing["runs"] if row["name"] == name)


def _started_and_locked(run_dir: Path) -> bool:
    """The run has written its state and holds its lock (the lock file names the holder)."""
    try:
        state = orjson.loads((run_dir / "state.json").read_bytes())
        return state.get("status") == "running" and bool((run_dir / "run.lock").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False


def test_a_live_run_is_running_and_a_killed_one_interrupted(tmp_path: Path) -> None:
    """Another process holds the run's lock: `gpo runs` says running without taking it; once
    that process is SIGKILLed (state.json still says running), interrupted."""
    run_dir = tmp_path / "runs" / "live"
    with answered_server(4.0) as server:
        process = start_gpo(*optimize_args(f"{server.url}/v1", run_dir, steps=3), capture=False)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                if _started_and_locked(run_dir):
                    break
                time.sleep(0.02)
            assert process.poll() is None, "the run ended before it could be looked at"
            process.send_signal(signal.SIGSTOP)  # it keeps its lock and cannot finish meanwhile
            assert _status_of(run_dir.parent, "live") == "running"
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    assert _status_of(run_dir.parent, "live") == "interrupted"
