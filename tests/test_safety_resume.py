"""Resume is a continuation, not a straitjacket: `gpo optimize --resume RUN_DIR` takes a server
back on another port, a longer timeout or more concurrency (recorded in config.json and noted on
stderr), still refuses any flag that changes what the run computes, naming it, and works from any
working directory because the run directory records absolute paths and its data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.errors import ConfigError
from backends.simulated import SimulatedServerProcess, metric_total
from gpo.cli_optimize import build_optimize_parser, resumed_arguments, stored_arguments
from gpo.resume import reopen_run
from tests.gpo_fakes import DATA_DIR
from tests.gpo_process import REPO, answered_server, gpo_environment, optimize_args, run_gpo

STOP_TOKENS = "15000"  # about 40% of the run below: it stops mid-run, with answers cached


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SimulatedServerProcess, SimulatedServerProcess]]:
    """Two simulated servers that know the answers: the run's first one and where it moved."""
    with answered_server(50.0) as first, answered_server(50.0) as second:
        yield first, second


def read(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def outcome(run_dir: Path) -> dict[str, Any]:
    (task,) = read(run_dir / "summary.json")["tasks"]
    keys = ("trajectory", "final_prompt", "final_dev", "final_test", "status")
    return {key: task[key] for key in keys}


def served(server: SimulatedServerProcess) -> float:
    return metric_total(server.metrics(), "sim_sequences_served_total")


def test_a_run_resumes_on_a_moved_server_with_new_operational_settings(servers, tmp_path) -> None:
    first, second = servers
    old_url, new_url = f"{first.url}/v1", f"{second.url}/v1"
    whole = run_gpo(*optimize_args(old_url, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    run_dir = tmp_path / "run"
    stopped = run_gpo(*optimize_args(old_url, run_dir, "--budget-tokens", STOP_TOKENS))
    assert stopped.returncode == 3, stopped.stderr
    config_before = read(run_dir / "config.json")

    refused = run_gpo("optimize", "--resume", str(run_dir), "--candidates", "8", "--no-progress")
    assert refused.returncode == 2
    assert "--candidates cannot change" in refused.stderr and "--ROLE-url" in refused.stderr
    assert read(run_dir / "config.json") == config_before  # a refused resume records nothing

    first_before, second_before = served(first), served(second)
    moved = ["--scorer-url", new_url, "--optimizer-url", new_url]
    settings = ["--request-timeout", "120", "--scorer-concurrency", "4", "--max-retries", "3"]
    resumed = run_gpo(
        "optimize", "--resume", str(run_dir), *moved, *settings, "--budget-tokens", "10000000"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert served(first) == first_before and served(second) > second_before
    assert outcome(run_dir) == outcome(tmp_path / "whole")
    # What the first session bought is replayed from the cache, although the URL changed.
    assert read(run_dir / "ledger.json")["totals"]["cache_hits"] > 0

    notices = [line for line in resumed.stderr.splitlines() if "changed settings" in line]
    assert len(notices) == 1
    for flag in ("--scorer-url", "--optimizer-url", "--request-timeout", "--scorer-concurrency"):
        assert flag in notices[0]
    config = read(run_dir / "config.json")
    (session,) = config["sessions"]
    changes = {change["flag"]: change for change in session["changes"]}
    assert changes["--scorer-url"] == {"flag": "--scorer-url", "from": [old_url], "to": [new_url]}
    assert changes["--request-timeout"]["from"] == 600.0
    assert changes["--request-timeout"]["to"] == 120.0
    assert {"--optimizer-url", "--scorer-concurrency", "--max-retries", "--budget-tokens"} <= set(
        changes
    )
    assert config["arguments"]["scorer_url"] == [new_url]  # the next resume starts from here
    assert config["arguments"]["candidates"] == config_before["arguments"]["candidates"]


@pytest.mark.parametrize(
    "flags",
    [
        ("--method", "ape"),
        ("--task", "bbh/snarks"),
        ("--candidates", "8"),
        ("--steps", "3"),
        ("--seed", "5"),
        ("--scorer-model", "another-model"),
        ("--scorer-chat-template", "llama3"),
        ("--max-tokens", "64"),
        ("--direction", "recency"),
    ],
)
def test_a_change_of_meaning_is_refused_naming_the_flag(tmp_path, flags) -> None:
    parser = build_optimize_parser()
    original = parser.parse_args(
        ["--task", "bbh/navigate", "--candidates", "4", "--steps", "2", "--run-dir", str(tmp_path)]
    )
    again = parser.parse_args(["--resume", str(tmp_path), *flags])
    with pytest.raises(ConfigError) as refused:
        resumed_arguments(again, stored_arguments(original), parser)
    message = str(refused.value)
    assert message.startswith(f"{flags[0]} cannot change when resuming")
    assert "--ROLE-url" in message and "--request-timeout" in message


@pytest.mark.parametrize(
    ("flags", "key", "value"),
    [
        (("--scorer-url", "http://127.0.0.1:9/v1"), "scorer_url", ["http://127.0.0.1:9/v1"]),
        (("--optimizer-url", "http://127.0.0.1:9/v1"), "optimizer_url", ["http://127.0.0.1:9/v1"]),
        (("--request-timeout", "30"), "request_timeout", 30.0),
        (("--scorer-concurrency", "7"), "scorer_concurrency", 7),
        (("--optimizer-batch-size", "4"), "optimizer_batch_size", 4),
        (("--max-retries", "2"), "max_retries", 2),
        (("--scorer-rpm", "600"), "scorer_rpm", 600.0),
        (("--tasks-at-once", "2"), "tasks_at_once", 2),
        (("--no-cache",), "no_cache", True),
        (("--scorer-api-key-env", "OTHER_KEY"), "scorer_api_key_env", "OTHER_KEY"),
    ],
)
def test_operational_flags_may_change(tmp_path, flags, key, value) -> None:
    parser = build_optimize_parser()
    original = parser.parse_args(
        ["--task", "bbh/navigate", "--scorer-url", "http://127.0.0.1:8/v1", "--run-dir", "r"]
    )
    again = parser.parse_args(["--resume", str(tmp_path), *flags])
    merged = resumed_arguments(again, stored_arguments(original), parser)
    assert getattr(merged, key) == value
    assert merged.task == ["bbh/navigate"]


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in gpo_environment().items() if k != "GPO_DATA_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    return {**env, **extra}


def _gpo_in(cwd: Path, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m gpo ARGS` run from `cwd`, not from the repository."""
    return subprocess.run(
        [sys.executable, "-m", "gpo", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_run_resumes_from_another_working_directory(servers, tmp_path) -> None:
    first, _ = servers
    (tmp_path / "data").symlink_to(DATA_DIR)
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere" / "deeper"
    start.mkdir()
    elsewhere.mkdir(parents=True)
    env = _environment()
    arguments = optimize_args(f"{first.url}/v1", Path("run"), "--budget-tokens", STOP_TOKENS)
    relative = ["--data-dir", "../data", "--cache", "../cache.sqlite"]
    stopped = _gpo_in(start, *arguments, *relative, env=env)
    assert stopped.returncode == 3, stopped.stderr
    run_dir = start / "run"
    config = read(run_dir / "config.json")
    assert config["data_dir"] == str(DATA_DIR.resolve())
    assert config["arguments"]["run_dir"] == str(run_dir)
    assert config["arguments"]["cache"] == str(tmp_path / "cache.sqlite")

    more = ["--budget-tokens", "10000000", "--no-progress"]
    resumed = _gpo_in(elsewhere, "optimize", "--resume", str(run_dir), *more, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert read(run_dir / "summary.json")["status"] == "finished"
    assert read(run_dir / "ledger.json")["totals"]["cache_hits"] > 0  # the same cache file
    assert not any(elsewhere.parent.rglob("*.sqlite"))
    (session,) = read(run_dir / "config.json")["sessions"]
    assert [change["flag"] for change in session["changes"]] == ["--budget-tokens"]


def _run_with_data(tmp_path: Path, data_dir: Path) -> Path:
    parser = build_optimize_parser()
    args = parser.parse_args(["--task", "bbh/navigate", "--run-dir", str(tmp_path / "run")])
    args.data_dir = str(data_dir)
    (tmp_path / "run").mkdir()
    config = {"data_dir": str(data_dir), "arguments": stored_arguments(args)}
    (tmp_path / "run" / "config.json").write_bytes(orjson.dumps(config))
    return tmp_path / "run"


def test_resume_reads_the_recorded_data_unless_told_otherwise(tmp_path, monkeypatch) -> None:
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    run_dir = _run_with_data(tmp_path, recorded)
    parser = build_optimize_parser()
    monkeypatch.delenv("GPO_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path / "recorded")
    again = parser.parse_args(["--resume", str(run_dir)])
    assert reopen_run(again, parser).arguments.data_dir == str(recorded.resolve())
    explicit = parser.parse_args(["--resume", str(run_dir), "--data-dir", str(DATA_DIR)])
    reopened = reopen_run(explicit, parser)
    assert reopened.arguments.data_dir == str(DATA_DIR.resolve())
    assert {"flag": "--data-dir", "from": str(recorded), "to": str(DATA_DIR.resolve())} in (
        reopened.record_session()
    )
    monkeypatch.setenv("GPO_DATA_DIR", str(DATA_DIR))
    again = parser.parse_args(["--resume", str(run_dir)])
    assert reopen_run(again, parser).arguments.data_dir == str(DATA_DIR.resolve())


def test_resume_names_a_data_directory_that_is_gone(tmp_path, monkeypatch) -> None:
    run_dir = _run_with_data(tmp_path, tmp_path / "moved-away")
    parser = build_optimize_parser()
    monkeypatch.delenv("GPO_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="--data-dir"):
        reopen_run(parser.parse_args(["--resume", str(run_dir)]), parser)
