"""One process per run directory, SIGTERM as a clean stop, and a killed session's spend kept.

- A run holds a lock on its run directory: a second `gpo optimize` there (a `--resume` of the
  same run) is refused with the holder named, and the first run ends as if alone. A lock left by
  a SIGKILLed run is taken over by the resume, which writes itself in as the holder.
- SIGTERM stops a run as Ctrl-C does: exit 143, a message, state "interrupted", the session's
  spend on the ledger and the lock released.
- The ledger is written as the run goes, not only at step ends: a session SIGKILLed before its
  first step ended keeps what it spent, and the resumed run counts it.

The server runs at half real speed so that a run lasts long enough to be watched: a step takes
several seconds, far more than the ledger's one-second write interval.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.errors import ConfigError
from backends.simulated import SimulatedServerProcess, metric_total
from gpo.run_lock import LOCK_FILE, RunLock
from tests.gpo_process import REPO, answered_server, optimize_args, run_gpo, start_gpo

DEADLINE_S = 120.0
TASK_DIR = Path("tasks") / "bbh__navigate"


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    with answered_server(0.5) as handle:
        yield handle


def read(path: Path) -> Any:
    """A JSON file's content, or None while it does not exist (or is being replaced)."""
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def ledger_tokens(run_dir: Path) -> int:
    ledger = read(run_dir / "ledger.json")
    return int(ledger["totals"]["total_tokens"]) if ledger else 0


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str]) -> bool:
    """Poll `condition` until it holds (True) or `process` ends or the deadline passes (False)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(0.05)
    return False


@contextmanager
def gpo(*arguments: str, capture: bool = True) -> Iterator[subprocess.Popen[str]]:
    """`gpo ARGUMENTS` started; SIGKILLed on the way out if it still runs."""
    process = start_gpo(*arguments, capture=capture)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=DEADLINE_S)


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for `process` and return its stdout and stderr."""
    try:
        return process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def served_tokens(server: SimulatedServerProcess) -> float:
    metrics = server.metrics()
    return metric_total(metrics, "sim_prompt_tokens_served_total") + metric_total(
        metrics, "sim_completion_tokens_served_total"
    )


def _run_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run directory but its lock, with its bytes."""
    return {
        str(path.relative_to(run_dir)): path.read_bytes()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


def test_a_second_process_is_refused_while_a_run_holds_its_directory(server, tmp_path) -> None:
    run_dir = tmp_path / "run"
    with gpo(*optimize_args(f"{server.url}/v1", run_dir, steps=1)) as first:
        assert wait_until(lambda: (run_dir / "state.json").exists(), first)
        # Frozen (it keeps its lock), so the race cannot depend on how loaded the machine is.
        os.kill(first.pid, signal.SIGSTOP)
        try:
            assert first.poll() is None, "the run ended before the test could race it"
            files_before = _run_files(run_dir)
            second = run_gpo("optimize", "--resume", str(run_dir), "--no-progress")
            # Refused before it wrote anything: config.json and every other file as they were.
            assert _run_files(run_dir) == files_before
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, err = finish(first)
    assert second.returncode == 2, (second.stdout, second.stderr)
    (error,) = [line for line in second.stderr.splitlines() if "error" in line]
    assert "in use by another gpo process" in error and f"pid {first.pid}" in error
    assert "gpo optimize" in error and str(run_dir) in error
    # The first run was not disturbed: one trajectory line per step and the initial prompt.
    assert first.returncode == 0, err
    assert len((run_dir / TASK_DIR / "trajectory.jsonl").read_bytes().splitlines()) == 2
    assert read(run_dir / "state.json")["sessions"] == 1
    assert (run_dir / LOCK_FILE).read_bytes() == b""  # released: nobody holds it


def test_a_lock_left_by_a_killed_run_is_taken_over_by_the_resume(server, tmp_path) -> None:
    run_dir = tmp_path / "run"
    with gpo(*optimize_args(f"{server.url}/v1", run_dir, steps=1), capture=False) as killed:
        assert wait_until(lambda: (run_dir / "state.json").exists(), killed)
        assert killed.poll() is None, "the run ended before it could be killed"
    stale = read(run_dir / LOCK_FILE)
    assert stale is not None and stale["pid"] == killed.pid  # left behind by the SIGKILL

    with gpo("optimize", "--resume", str(run_dir), "--no-progress") as resumed:
        took_over = wait_until(
            lambda: (read(run_dir / LOCK_FILE) or {}).get("pid") == resumed.pid, resumed
        )
        details = read(run_dir / LOCK_FILE)
        _, err = finish(resumed)
    assert took_over, details
    assert details["command"].startswith("gpo optimize --resume") and details["started"]
    assert resumed.returncode == 0, err
    assert read(run_dir / "summary.json")["status"] == "finished"


def test_sigterm_stops_a_run_cleanly_with_its_spend_saved(server, tmp_path) -> None:
    run_dir = tmp_path / "run"
    with gpo(*optimize_args(f"{server.url}/v1", run_dir, steps=2)) as process:
        assert wait_until(lambda: ledger_tokens(run_dir) > 0, process)
        assert process.poll() is None, "the run ended before SIGTERM could be sent"
        process.send_signal(signal.SIGTERM)
        _, err = finish(process)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and f"--resume {run_dir}" in err
    assert "Traceback" not in err
    state = read(run_dir / "state.json")
    assert state["status"] == "interrupted"
    assert ledger_tokens(run_dir) > 0
    assert (run_dir / LOCK_FILE).read_bytes() == b""


def test_a_sigkilled_sessions_spend_is_kept_and_counted_on_resume(server, tmp_path) -> None:
    run_dir = tmp_path / "run"
    candidates = run_dir / TASK_DIR / "candidates.jsonl"
    before = served_tokens(server)
    seen: dict[str, int] = {}

    def spent_before_the_first_step_ended() -> bool:
        tokens = ledger_tokens(run_dir)  # read first: a step's end writes candidates, then ledger
        if candidates.exists() and candidates.stat().st_size > 0:
            raise AssertionError("the first step ended before the ledger recorded any spend")
        seen["tokens"] = tokens
        return tokens > 0

    with gpo(*optimize_args(f"{server.url}/v1", run_dir, steps=1), capture=False) as process:
        assert wait_until(spent_before_the_first_step_ended, process)
        process.kill()
    killed = read(run_dir / "ledger.json")["totals"]
    assert killed["total_tokens"] >= seen["tokens"] > 0
    assert killed["total_tokens"] <= served_tokens(server) - before

    report = run_gpo("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    assert f"Total: {killed['total_tokens']:,} tokens" in (run_dir / "report.md").read_text()

    resumed = run_gpo("optimize", "--resume", str(run_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert read(run_dir / "ledger.session-1.json")["totals"] == killed
    session = read(run_dir / "ledger.json")["totals"]
    totals = read(run_dir / "summary.json")["run_totals"]
    assert totals["sessions"] == 2
    assert totals["total_tokens"] == killed["total_tokens"] + session["total_tokens"]


def test_the_lock_names_its_holder_and_passes_on_when_the_holder_dies(tmp_path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from gpo.run_lock import RunLock\n"
            f"lock = RunLock({str(tmp_path)!r}).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}") as refused:
            RunLock(tmp_path, flag="--resume").acquire()
        assert str(refused.value).startswith(f"--resume {tmp_path}: the run directory is in use")
    finally:
        holder.kill()
        holder.wait(timeout=DEADLINE_S)
    with RunLock(tmp_path) as lock:  # the dead holder's lock is taken over
        details = read(lock.path)
        assert details["pid"] != holder.pid and details["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).read_bytes() == b""
