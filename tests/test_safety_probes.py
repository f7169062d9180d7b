"""A server that accepts connections and never answers is reported promptly: the start-up probe
uses its own short timeout (`GPO_PROBE_TIMEOUT_S`), a bounded number of tries, says "waiting for
URL" on stderr meanwhile, and ends with one clear error naming the URL, instead of waiting the
600 s generation timeout three times in silence."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from backends.errors import ConfigError
from backends.openai_client import OpenAICompatibleBackend
from gpo.endpoints import PROBE_TIMEOUT_ENV, probe_timeout_s, served_models
from tests.gpo_process import TASK, gpo_environment, run_gpo

# Far below the 600 s request timeout, yet far above the time a loaded CPU needs to start.
DEADLINE_S = 150


class SilentServer:
    """Accepts every connection on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        deadline = time.monotonic() + 900  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                connection, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(connection)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for connection in self.accepted:
            connection.close()
        self._listener.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


def test_a_silent_server_is_reported_with_waiting_notices(silent, tmp_path) -> None:
    url = f"http://127.0.0.1:{silent.port}/v1"
    env = gpo_environment({PROBE_TIMEOUT_ENV: "2"})
    args = ["eval", "--task", TASK, "--limit", "2", "--scorer-url", url, "--out", str(tmp_path)]
    try:
        done = run_gpo(*args, env=env, timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gpo was still silent on a server that never answers after {DEADLINE_S} s")
    assert done.returncode == 2, done.stderr
    assert silent.accepted  # the probe did reach the server
    assert f"waiting for {url}" in done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, done.stderr
    assert f"--scorer-url {url}" in errors[0] and "cannot be reached" in errors[0]
    assert "Traceback" not in done.stderr


async def test_served_models_gives_up_on_a_silent_server(silent, capsys) -> None:
    url = f"http://127.0.0.1:{silent.port}/v1"
    backend = OpenAICompatibleBackend(url, "model", request_timeout_s=600.0)
    try:
        with pytest.raises(ConfigError, match="cannot be reached after 2 attempts") as caught:
            await served_models(backend, "scorer", attempts=2, timeout_s=0.5)
    finally:
        await backend.close()
    assert url in str(caught.value)
    assert f"waiting for {url}" in capsys.readouterr().err


def test_the_probe_timeout_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(PROBE_TIMEOUT_ENV, raising=False)
    assert 0 < probe_timeout_s() <= 30
    monkeypatch.setenv(PROBE_TIMEOUT_ENV, "2.5")
    assert probe_timeout_s() == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(PROBE_TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=PROBE_TIMEOUT_ENV):
            probe_timeout_s()
