"""A run killed mid-step and resumed ends exactly like an uninterrupted run, re-sending nothing
that was answered; run directories that cannot be written are refused before any work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from backends.errors import ConfigError
from gpo.methods import config_for_method
from gpo.run_dir import RunDirectory, scrub_secrets
from tests.gpo_fakes import FakeOptimizer, FakeScorer
from tests.test_gpo_optimizer import SMALL, optimize, read_jsonl

REPO = Path(__file__).resolve().parents[1]
TASK_FILES = ("trajectory.jsonl", "candidates.jsonl", "scores.jsonl", "meta_prompts.jsonl")


@pytest.mark.parametrize("stall_after", [20, 70])
async def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, stall_after: int
) -> None:
    config = config_for_method("apo", **SMALL)
    whole, *_ = await optimize(tmp_path / "whole", config)

    killed_scorer, killed_optimizer = FakeScorer(), FakeOptimizer()
    killed_scorer.stall_after = stall_after  # 20: during the initial dev scoring; 70: mid-step
    run = asyncio.create_task(
        optimize(
            tmp_path / "killed",
            config,
            scorer_backend=killed_scorer,
            optimizer_backend=killed_optimizer,
        )
    )
    await asyncio.wait_for(killed_scorer.stalled.wait(), timeout=60)
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    state = orjson.loads((tmp_path / "killed" / "state.json").read_bytes())
    assert state["status"] == "interrupted"
    assert killed_scorer.answered  # some work was done and must not be paid for again

    scorer, optimizer = FakeScorer(), FakeOptimizer()
    resumed, *_ = await optimize(
        tmp_path / "killed",
        config,
        resume=True,
        scorer_backend=scorer,
        optimizer_backend=optimizer,
    )
    assert resumed["tasks"][0]["trajectory"] == whole["tasks"][0]["trajectory"]
    for key in ("final_prompt", "final_dev", "initial_test", "final_test", "status"):
        assert resumed["tasks"][0][key] == whole["tasks"][0][key]
    for name in TASK_FILES:
        killed_rows = read_jsonl(tmp_path / "killed" / "tasks" / "bbh__navigate" / name)
        whole_rows = read_jsonl(tmp_path / "whole" / "tasks" / "bbh__navigate" / name)
        assert killed_rows == whole_rows, name
    # Nothing answered before the kill was sent again: it came from the cache.
    assert not set(scorer.calls) & set(killed_scorer.answered)
    assert not set(optimizer.calls) & set(killed_optimizer.answered)
    answered_before = len(killed_scorer.answered) + len(killed_optimizer.answered)
    assert resumed["session_ledger"]["totals"]["cache_hits"] == answered_before
    assert resumed["run_totals"]["sessions"] == 2
    assert (tmp_path / "killed" / "ledger.session-1.json").exists()
    state = orjson.loads((tmp_path / "killed" / "state.json").read_bytes())
    assert state["status"] == "finished" and state["sessions"] == 2


async def test_resuming_a_finished_run_sends_nothing(tmp_path: Path) -> None:
    config = config_for_method("gpo", **SMALL, steps=1)
    first, *_ = await optimize(tmp_path / "run", config)
    scorer, optimizer = FakeScorer(), FakeOptimizer()
    again, *_ = await optimize(
        tmp_path / "run", config, resume=True, scorer_backend=scorer, optimizer_backend=optimizer
    )
    assert scorer.calls == [] and optimizer.calls == []
    assert again["tasks"] == first["tasks"]


def test_a_non_empty_directory_needs_resume(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="--resume"):
        RunDirectory.create(tmp_path)


def test_resume_needs_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        RunDirectory.open_existing(tmp_path)


def _create_run_dir_unprivileged(path: Path) -> subprocess.CompletedProcess[str]:
    """Try `RunDirectory.create(path)` as a user who may not write there: as nobody (through
    util-linux's setpriv) when the tests run as root, since root writes through permission bits.
    """
    code = (
        "import sys\n"
        "from backends.errors import ConfigError\n"
        "from gpo.run_dir import RunDirectory\n"
        "try:\n"
        f"    RunDirectory.create({str(path)!r})\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "    sys.exit(2)\n"
    )
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root, the test needs util-linux's setpriv to drop privileges"
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_read_only_directory_is_refused_up_front() -> None:
    base = Path(tempfile.mkdtemp(prefix="gpo-read-only-"))
    try:
        (base / "empty").mkdir()
        for folder in (base, base / "empty"):
            folder.chmod(0o755 if os.geteuid() == 0 else 0o555)
        missing = _create_run_dir_unprivileged(base / "run")
        assert missing.returncode == 2, missing.stderr
        assert "--run-dir" in missing.stdout and "cannot create it" in missing.stdout
        assert not (base / "run").exists()
        existing = _create_run_dir_unprivileged(base / "empty")
        assert existing.returncode == 2, existing.stderr
        assert "the run directory is not writable" in existing.stdout
    finally:
        for folder in (base, base / "empty"):
            folder.chmod(0o700)
        shutil.rmtree(base)


def test_a_run_directory_inside_a_file_is_refused_up_front(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--run-dir"):
        RunDirectory.create(blocker / "run")


def test_secrets_never_reach_the_run_config() -> None:
    config = {
        "scorer_api_key_env": "OPENAI_API_KEY",
        "api_key": "sk-live-123",
        "nested": {"token": "abc", "budget_tokens": 5, "url": "Bearer xyz"},
        "list": ["sk-abc", "fine"],
    }
    clean = scrub_secrets(config)
    assert clean == {
        "scorer_api_key_env": "OPENAI_API_KEY",
        "nested": {"budget_tokens": 5, "url": "<redacted>"},
        "list": ["<redacted>", "fine"],
    }
