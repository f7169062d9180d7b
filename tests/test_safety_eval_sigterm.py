"""`gpo eval` stopped by SIGTERM stops as Ctrl-C does: exit 143, one line saying where the answers
so far are and how to continue, no traceback, and no summary claiming a finished evaluation.

The simulated server runs at a twentieth of real speed, so a turn takes seconds: once the server
reports sequences running, the evaluation cannot have finished before the signal lands.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.simulated import SimulatedServerProcess, metric_total
from tests.gpo_process import answered_server, eval_args, start_gpo

DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def slow_server() -> Iterator[SimulatedServerProcess]:
    with answered_server(0.05) as handle:
        yield handle


def _running(server: SimulatedServerProcess) -> float:
    try:
        return metric_total(server.metrics(), "vllm:num_requests_running")
    except OSError:  # a loaded machine may drop one probe; the next one decides
        return 0.0


def test_sigterm_stops_an_evaluation_cleanly(slow_server, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    process = start_gpo(*eval_args(slow_server.url, out, limit=16))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and process.poll() is None:
            if _running(slow_server) > 0:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the evaluation ended before it could be stopped"
        assert _running(slow_server) > 0, "the server never saw the evaluation's requests"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE_S)
    assert process.returncode == 143, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "SIGTERM" in line]
    assert str(out) in line and "--overwrite" in line
    assert not (out / "summary.json").exists()  # nothing claims the evaluation finished
