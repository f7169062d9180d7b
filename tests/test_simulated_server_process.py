"""The simulated server in a child process and from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from backends.simulated import (
    OutputLengths,
    SimulatedServerConfig,
    SimulatedServerProcess,
    metric_total,
    start_server_process,
)
from tests.waiting import CONNECTION_ERRORS, DEADLINE_S, wait_until, wait_until_refused

ROOT = Path(__file__).resolve().parents[1]


def post_json(url: str, payload: dict, headers: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(
        url,
        data=orjson.dumps(payload),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
        return orjson.loads(response.read())


def restarts(server: SimulatedServerProcess) -> float | None:
    """The child's restart count, or None while it does not answer."""
    try:
        return server.metrics()["sim_restarts_total"]
    except CONNECTION_ERRORS:
        return None


def test_child_process_serves_reports_counters_and_stops():
    config = SimulatedServerConfig(
        time_scale=200.0, output_lengths=OutputLengths("fixed", mean=10), api_key="sk-child"
    )
    answer_key = {"What is 2 + 2?": "4"}
    with start_server_process(config, answer_key=answer_key) as server:
        assert server.url.startswith("http://127.0.0.1:")
        body = post_json(
            f"{server.url}/v1/completions",
            {"prompt": ["What is 2 + 2?\nThink.", "Hello"], "max_tokens": 32},
            headers={"Authorization": "Bearer sk-child"},
        )
        assert len(body["choices"]) == 2
        assert "So the answer is" in body["choices"][0]["text"]
        samples = server.metrics()
        assert metric_total(samples, "sim_sequences_served_total") == 2
        assert metric_total(samples, "sim_max_num_seqs") == config.max_num_seqs
        cpu = server.cpu_seconds()
        assert cpu is not None and cpu > 0
        # The control routes act after their answer: wait on what they change, not on a clock.
        server.restart()
        assert wait_until(lambda: restarts(server) == 1)
        down_for_s = 1.0
        asked = time.monotonic()
        server.take_down(down_for_s)
        # Unreadable while down; the first read that sees the crash is made after the comeback.
        assert wait_until(lambda: restarts(server) == 2)
        assert time.monotonic() - asked >= down_for_s
        server.take_down(None)  # down until stopped
        assert wait_until_refused(server.url)
        pid = server.pid
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_command_line_prints_its_url_and_exits_cleanly_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "backends.simulated",
        "--port",
        "0",
        "--max-num-seqs",
        "64",
        "--zero-latency",
        "--output-lengths",
        "fixed:12",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:")
        body = post_json(f"{url}/v1/completions", {"prompt": "Hi", "max_tokens": 50})
        assert body["usage"]["completion_tokens"] == 12
        with urllib.request.urlopen(f"{url}/metrics", timeout=DEADLINE_S) as response:
            assert "sim_max_num_seqs 64" in response.read().decode()
    finally:
        process.terminate()
        assert process.wait(DEADLINE_S) == 0
        process.stdout.close()


def test_command_line_rejects_a_bad_flag_value_with_a_clear_message():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "backends.simulated", "--output-lengths", "gaussian:3"],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 2
    assert b"--output-lengths" in result.stderr
