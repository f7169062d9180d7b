"""The simulated server in its own process, so that a benchmark measures the client's CPU alone.

    with start_server_process(SimulatedServerConfig(time_scale=20)) as server:
        ...  # use server.url
        server.metrics()["sim_sequences_served_total"]

The child runs `python -m backends.simulated` with the config as JSON, the answer key in a
temporary file and the API key in its environment; it prints its URL when listening, which is
when `start_server_process` returns. Control (`take_down`, `restart`) goes through the server's
`/sim/*` routes; `cpu_seconds()` reads the child's CPU time from /proc (Linux).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import orjson

from backends.errors import BackendError
from backends.simulated.config import SimulatedServerConfig
from backends.simulated.metrics import parse_prometheus

API_KEY_ENV = "GPO_SIMULATED_API_KEY"
_CONTROL_TIMEOUT_S = 60.0
"""Generous: the child answers at once, but a loaded machine may not schedule it for a while."""
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SimulatedServerProcess:
    """Handle on a simulated server running in a child process."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, temp_dir: Path) -> None:
        self._process = process
        self.url = url
        self._temp_dir = temp_dir

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def metrics(self, timeout_s: float = 60.0) -> dict[str, float]:
        """The server's `/metrics` samples, as `metrics.parse_prometheus` returns them."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=timeout_s) as response:
            return parse_prometheus(response.read().decode("utf-8"))

    def take_down(self, seconds: float | None) -> None:
        """Crash the server; it listens again after `seconds` real seconds (None: never)."""
        self._post("/sim/down", {"seconds": seconds})

    def restart(self) -> None:
        """Crash the server and bring it straight back on the same port."""
        self._post("/sim/restart", {})

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the child has used (None where /proc is unavailable)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after `timeout_s`) and clean up."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        for path in self._temp_dir.glob("*"):
            path.unlink(missing_ok=True)
        self._temp_dir.rmdir()

    def __enter__(self) -> SimulatedServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _post(self, path: str, payload: dict[str, object]) -> None:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=orjson.dumps(payload),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=_CONTROL_TIMEOUT_S) as response:
            response.read()


def start_server_process(
    config: SimulatedServerConfig | None = None,
    *,
    answer_key: Mapping[str, object] | None = None,
    startup_timeout_s: float = 120.0,
    log_level: str = "WARNING",
) -> SimulatedServerProcess:
    """Start the server in a child process and return once it is listening.

    `answer_key` is `{question: gold}` (see `answer_key.AnswerKey`); it reaches the child
    through a temporary JSON file removed by `stop()`.
    """
    config = config or SimulatedServerConfig()
    temp_dir = Path(tempfile.mkdtemp(prefix="gpo-simulated-"))
    command = [
        sys.executable,
        "-m",
        "backends.simulated",
        "--config-json",
        orjson.dumps(config.to_dict()).decode(),
        "--log-level",
        log_level,
    ]
    if answer_key is not None:
        key_path = temp_dir / "answer_key.json"
        key_path.write_bytes(orjson.dumps(dict(answer_key)))
        command += ["--answer-key", str(key_path)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    if config.api_key is not None:
        env[API_KEY_ENV] = config.api_key
        command += ["--api-key-env", API_KEY_ENV]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=_PROJECT_ROOT)
    try:
        url = _read_url(process, startup_timeout_s)
    except BaseException:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        for path in temp_dir.glob("*"):
            path.unlink(missing_ok=True)
        temp_dir.rmdir()
        raise
    return SimulatedServerProcess(process, url, temp_dir)


def _read_url(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first line the child prints (its URL), waiting at most `timeout_s`."""
    stdout = process.stdout
    if stdout is None:
        raise BackendError("the simulated server's stdout is not captured")
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([stdout], [], [], max(0.0, remaining))
        if not ready:
            raise BackendError(f"simulated server did not start within {timeout_s} s")
        chunk = os.read(stdout.fileno(), 4096)
        if not chunk:
            code = process.wait()
            raise BackendError(
                f"simulated server process exited with code {code} before it was ready"
            )
        line += chunk
    return line.decode().strip().splitlines()[0]
