"""Managed server subprocesses: start, readiness, logs, errors, stopping; and managed vLLM.

A small stdlib HTTP server script stands in for a model server (and, called as `vllm serve`, for
vLLM), so every lifecycle path runs against a real process on a real loopback port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from backends.argv_options import option_value, redact_argv, remove_options
from backends.errors import ConfigError
from backends.managed_process import ManagedServer, ServerStartFailed, _http_status
from backends.vllm_serve import (
    GpuInfo,
    ManagedVllmServer,
    VllmServeConfig,
    build_vllm_command,
    default_max_num_seqs,
    find_vllm_executable,
    max_num_seqs_from_args,
    parse_nvidia_smi,
)
from tests.scripted_server import raw_server
from tests.waiting import DEADLINE_S, wait_until, wait_until_async

FAKE_SERVER = textwrap.dedent(
    """\
    import json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    args = sys.argv[1:]
    vllm_style = bool(args) and args[0] == "serve"
    if vllm_style:
        model = args[1]
        args = args[2:]

    def option(name, default=None):
        return args[args.index(name) + 1] if name in args else default

    if vllm_style and os.environ.get("FAKE_VLLM_RECORD"):
        with open(os.environ["FAKE_VLLM_RECORD"], "w") as record:
            cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
            json.dump({"argv": sys.argv[1:], "cuda": cuda}, record)
    if not vllm_style:
        model = option("--model", "fake-model")
    served = option("--served-model-name", model)
    api_key = option("--api-key")
    print("fake server starting", flush=True)
    if "--die" in args:
        print("boom: cannot load the model", flush=True)
        sys.exit(int(option("--die")))
    if "--lose-port-once" in args and not os.path.exists(option("--lose-port-once")):
        open(option("--lose-port-once"), "w").close()
        print("OSError: [Errno 98] Address already in use", flush=True)
        sys.exit(1)
    if "--ignore-term" in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--child" in args:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(option("--child"), "w") as pid_file:
            pid_file.write(str(child.pid))
    time.sleep(float(option("--delay", "0")))
    if "--never-listen" in args:
        time.sleep(600)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health" and "--no-health" in args:
                return self.answer(404, {"detail": "Not Found"})
            if self.path == "/health":
                return self.answer(200, {})
            if self.path == "/v1/models":
                if api_key and self.headers.get("Authorization") != "Bearer " + api_key:
                    return self.answer(401, {"error": "unauthorized"})
                entry = {"id": served, "object": "model", "max_model_len": 4096}
                return self.answer(200, {"object": "list", "data": [entry]})
            self.answer(404, {"detail": "Not Found"})

        def answer(self, status, payload):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    address = (option("--host", "127.0.0.1"), int(option("--port")))
    ThreadingHTTPServer(address, Handler).serve_forever()
    """
)


@pytest.fixture
def fake_server(tmp_path: Path) -> Path:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return script


@pytest.fixture
def fake_vllm(tmp_path: Path, fake_server: Path) -> Path:
    executable = tmp_path / "bin" / "vllm"
    executable.parent.mkdir()
    executable.write_text(f"#!{sys.executable}\n" + FAKE_SERVER)
    executable.chmod(0o755)
    return executable


def fake_command(script: Path, *flags: str):
    return lambda port: [sys.executable, str(script), "--port", str(port), *flags]


def is_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (containers may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int) -> bool:
    return wait_until(lambda: not is_alive(pid))


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# ---- ManagedServer ---------------------------------------------------------------------


async def test_starts_on_a_free_loopback_port_and_stops(fake_server: Path) -> None:
    server = ManagedServer(fake_command(fake_server, "--no-health"), name="fake")
    async with server:
        pid = server.pid
        assert pid is not None and server.running
        assert server.root_url.startswith("http://127.0.0.1:")
        assert server.ready_path == "/v1/models"
        assert http_status(f"{server.root_url}/v1/models") == 200
        log_path = server.log_path
        assert log_path is not None
        assert "fake server starting" in log_path.read_text()
    assert wait_gone(pid)
    assert not server.running
    assert not log_path.exists(), "a temporary log is removed with its server"


async def test_health_is_preferred_when_the_server_has_it(fake_server: Path) -> None:
    async with ManagedServer(fake_command(fake_server), name="fake") as server:
        assert server.ready_path == "/health"


async def test_log_goes_to_the_given_file_and_stays(fake_server: Path, tmp_path: Path) -> None:
    log = tmp_path / "run" / "server.log"
    async with ManagedServer(fake_command(fake_server), name="fake", log_path=log):
        pass
    text = log.read_text()
    assert "starting:" in text and "fake server starting" in text


async def test_exit_before_ready_names_code_log_tail_and_hides_secrets(
    fake_server: Path,
) -> None:
    server = ManagedServer(
        fake_command(fake_server, "--api-key", "s3cret-value", "--die", "3"), name="fake"
    )
    with pytest.raises(ServerStartFailed) as caught:
        await server.start()
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "boom: cannot load the model" in message
    assert "s3cret-value" not in message and "[redacted]" in message
    assert not caught.value.retryable
    assert not server.running
    log_path = server.log_path
    assert log_path is not None and str(log_path) in message
    assert log_path.exists(), "the log of a failed start is kept for the user to read"
    log_path.unlink()


async def test_a_port_taken_before_the_server_binds_it_is_retried(
    fake_server: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "lost-once"
    async with ManagedServer(
        fake_command(fake_server, "--lose-port-once", str(marker)), name="fake"
    ) as server:
        assert marker.exists(), "the first launch failed"
        assert server.running
        log_path = server.log_path
        assert log_path is not None and "Address already in use" in log_path.read_text()
    assert not log_path.exists()


async def test_deadline_without_answer_stops_the_process(fake_server: Path, tmp_path: Path) -> None:
    server = ManagedServer(
        fake_command(fake_server, "--never-listen"),
        name="fake",
        startup_timeout_s=1.0,
        log_path=tmp_path / "server.log",
    )
    with pytest.raises(ServerStartFailed, match="did not answer /health or /v1/models"):
        await server.start()
    assert server.pid is None


async def test_a_server_ignoring_sigterm_is_killed(fake_server: Path) -> None:
    server = ManagedServer(
        fake_command(fake_server, "--ignore-term"), name="fake", stop_timeout_s=0.5
    )
    await server.start()
    pid = server.pid
    assert pid is not None
    await server.stop()
    assert wait_gone(pid)


async def test_children_of_the_server_are_stopped_too(fake_server: Path, tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    async with ManagedServer(fake_command(fake_server, "--child", str(child_pid_file)), name="f"):
        child_pid = int(child_pid_file.read_text())
        assert is_alive(child_pid)
    assert wait_gone(child_pid)


async def test_cancellation_during_startup_stops_the_process(fake_server: Path) -> None:
    server = ManagedServer(fake_command(fake_server, "--delay", "60"), name="fake")
    task = asyncio.create_task(server.start())
    assert await wait_until_async(lambda: server.pid is not None)
    pid = server.pid
    assert pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wait_gone(pid)


async def test_an_error_inside_the_block_stops_the_server(fake_server: Path) -> None:
    server = ManagedServer(fake_command(fake_server), name="fake")
    with pytest.raises(RuntimeError, match="work failed"):
        async with server:
            pid = server.pid
            raise RuntimeError("work failed")
    assert pid is not None and wait_gone(pid)


def test_sync_context_manager(fake_server: Path) -> None:
    with ManagedServer(fake_command(fake_server), name="fake") as server:
        pid = server.pid
        assert http_status(f"{server.root_url}/health") == 200
    assert pid is not None and wait_gone(pid)


def test_sync_start_failure_stops_the_process(fake_server: Path, tmp_path: Path) -> None:
    server = ManagedServer(
        fake_command(fake_server, "--die", "5"), name="fake", log_path=tmp_path / "server.log"
    )
    with pytest.raises(ServerStartFailed, match="exited with code 5"):
        server.start_sync()
    assert not server.running


def test_a_port_in_use_is_refused_before_launching(fake_server: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ManagedServer(fake_command(fake_server), name="fake", port=port)
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start_sync()
        assert server.pid is None


def test_a_missing_executable_is_a_clear_error() -> None:
    server = ManagedServer(lambda port: ["/nonexistent/llama-server", str(port)], name="fake")
    with pytest.raises(ServerStartFailed, match="cannot run /nonexistent/llama-server"):
        server.start_sync()
    assert server.log_path is None, "no log is left behind for a command that never ran"


def test_describe_exit_after_the_server_dies(fake_server: Path) -> None:
    server = ManagedServer(fake_command(fake_server), name="fake")
    server.start_sync()
    try:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not server.running)
        assert "was killed by signal 9" in server.describe_exit()
    finally:
        server.stop_sync()


def garbled_status_line(connection: socket.socket) -> None:
    """A server half up: it takes the request and answers no valid HTTP."""
    connection.recv(65536)
    connection.sendall(b"not http at all\r\n\r\n")
    connection.close()


def test_readiness_probe_treats_a_cut_or_garbled_answer_as_not_ready() -> None:
    with raw_server(garbled_status_line) as url:
        assert _http_status(f"{url}/health", timeout_s=DEADLINE_S) is None


def test_command_line_helpers() -> None:
    argv = ["--host", "0.0.0.0", "--port=9", "--max_num_seqs", "8", "--api-key", "k1", "--x", "-1"]
    assert redact_argv(argv)[6] == "[redacted]"
    assert redact_argv(["--hf-token=abc"]) == ["--hf-token=[redacted]"]
    assert option_value(argv, "--max-num-seqs") == "8"
    assert option_value(argv, "--port") == "9"
    assert option_value(argv, "--x") == "-1"
    assert option_value(argv, "--missing") is None
    assert remove_options(argv, "--host", "--port") == argv[3:]


# ---- managed vLLM ----------------------------------------------------------------------


def test_vllm_command_binds_loopback_and_replaces_host_and_port() -> None:
    argv = build_vllm_command(
        "vllm", "org/model", 8123, ["--host", "127.0.0.1", "--port", "9", "--dtype", "half"]
    )
    assert argv == [
        "vllm",
        "serve",
        "org/model",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--dtype",
        "half",
    ]


def test_vllm_args_may_not_expose_the_server() -> None:
    with pytest.raises(ConfigError, match=r"--host 0\.0\.0\.0 is not allowed"):
        build_vllm_command("vllm", "m", 8000, ["--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="--max-num-seqs"):
        ManagedVllmServer("m", extra_args=("--max-num-seqs", "lots"))


def test_max_num_seqs_from_args_and_vllm_defaults() -> None:
    assert max_num_seqs_from_args(["--max-num-seqs", "64"]) == 64
    assert max_num_seqs_from_args(["--max_num_seqs=32"]) == 32
    assert max_num_seqs_from_args(["--dtype", "half"]) is None
    assert default_max_num_seqs(GpuInfo("NVIDIA H100 80GB HBM3", 79.6)) == 1024
    assert default_max_num_seqs(GpuInfo("NVIDIA A100-SXM4-80GB", 80.0)) == 256
    assert default_max_num_seqs(GpuInfo("NVIDIA L4", 22.5)) == 256
    assert default_max_num_seqs(None) == 256
    gpus = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559\nNVIDIA L4, 23034\n")
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert gpus[0].memory_gib == pytest.approx(79.65, abs=0.01)


def test_missing_vllm_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("GPO_VLLM_HOME", str(tmp_path / "no-vllm-here"))  # no CPU build either
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        find_vllm_executable()
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        ManagedVllmServer("org/model").start_sync()
    with pytest.raises(ConfigError, match="not found"):
        find_vllm_executable(str(tmp_path / "no-such-vllm"))


async def test_managed_vllm_reads_model_and_window(fake_vllm: Path, tmp_path: Path) -> None:
    record = tmp_path / "argv.json"
    os.environ["FAKE_VLLM_RECORD"] = str(record)
    try:
        config = VllmServeConfig(
            model="org/model",
            extra_args=("--served-model-name", "served", "--max-num-seqs", "48"),
            executable=str(fake_vllm),
            gpus="1",
        )
        async with ManagedVllmServer(config, gpus=()) as server:
            assert server.model_name == "served"
            assert server.max_num_seqs == 48
            assert server.max_model_len == 4096
            assert server.capabilities.max_concurrency == 48
            assert server.capabilities.prompt_lists
            assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
            pid = server.process.pid
        recorded = orjson.loads(record.read_bytes())
    finally:
        del os.environ["FAKE_VLLM_RECORD"]
    assert recorded["argv"][:4] == ["serve", "org/model", "--host", "127.0.0.1"]
    assert recorded["cuda"] == "1"
    assert pid is not None and wait_gone(pid)


def test_managed_vllm_default_window_and_api_key(fake_vllm: Path) -> None:
    h100 = (GpuInfo("NVIDIA H100 80GB HBM3", 79.6),)
    server = ManagedVllmServer(
        VllmServeConfig("org/model", ("--api-key", "k-123"), executable=str(fake_vllm)),
        gpus=h100,
    )
    with server:
        assert server.model_name == "org/model"
        assert server.max_num_seqs == 1024
        assert "k-123" not in server.process.command_line
