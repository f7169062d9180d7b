"""API keys stay secret: read from the environment or a file, never from argv; never in a log (at
DEBUG), a cache entry, a run directory file or an error message; and servers started here listen
on 127.0.0.1 only.

Jobs run against the simulated server in API mode (a required key, rate limits), once with the
key right and once wrong, plus against a hostile server that echoes the Authorization header in
its error bodies."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from backends.simulated import (
    FaultRates,
    RateLimits,
    SimulatedServer,
    SimulatedServerConfig,
    SimulatedServerProcess,
)
from tests.gpo_process import TASK, answered_server, gpo_environment
from tests.gpo_process import eval_args as shared_eval_args
from tests.gpo_process import run_gpo as gpo_subprocess

SECRET = "sk-fake-4f9c2b7e1d-DO-NOT-LEAK-0123456789abcdef"
OTHER_SECRET = "sk-fake-optimizer-key-5e6d7c8b9a-NEVER-LOG"
KEY_ENV = "GPO_TEST_SCORER_KEY"


@pytest.fixture(scope="module")
def api_server() -> Iterator[SimulatedServerProcess]:
    # Some 5xx answers, so that retries (and their DEBUG logs, with the error text) happen.
    with answered_server(
        50.0,
        api_key=SECRET,
        rate_limits=RateLimits(requests_per_minute=100_000, tokens_per_minute=50_000_000),
        faults=FaultRates(server_error=0.3, seed=1),
    ) as server:
        yield server


def run_gpo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`gpo` at DEBUG (the most a log ever says), no API key inherited, `env` added."""
    return gpo_subprocess("--log-level", "DEBUG", *args, env=gpo_environment(env))


def leaks(
    folder: Path, *texts: str, secrets: tuple[str, ...] = (SECRET, OTHER_SECRET)
) -> list[str]:
    """Every file under `folder` (bytes, so SQLite pages and WAL too) and text holding a secret."""
    found = []
    for secret in secrets:
        needle = secret.encode()
        for path in folder.rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                found.append(f"{secret[:12]}... in {path}")
        for index, text in enumerate(texts):
            if secret in text:
                found.append(f"{secret[:12]}... in output {index}")
    return found


def eval_args(url: str, out: Path, *extra: str) -> list[str]:
    return shared_eval_args(url, out, *extra, limit=6)


def test_eval_with_the_key_in_the_environment_leaks_it_nowhere(api_server, tmp_path) -> None:
    out = tmp_path / "eval"
    done = run_gpo(
        *eval_args(api_server.url, out, "--scorer-api-key-env", KEY_ENV), env={KEY_ENV: SECRET}
    )
    assert done.returncode == 0, done.stderr
    assert "DEBUG" in done.stderr and "retrying" in done.stderr  # real debug logs are scanned
    assert (out / "cache.sqlite").stat().st_size > 0 and (out / "records.jsonl").read_text()
    assert leaks(out, done.stdout, done.stderr) == []


def test_eval_with_the_key_in_a_file_leaks_it_nowhere(api_server, tmp_path) -> None:
    key_file = tmp_path / "secrets" / "scorer.key"
    key_file.parent.mkdir()
    key_file.write_text(SECRET + "\n")
    out = tmp_path / "eval"
    done = run_gpo(*eval_args(api_server.url, out, "--scorer-api-key-file", str(key_file)))
    assert done.returncode == 0, done.stderr
    assert leaks(out, done.stdout, done.stderr) == []


def test_a_refused_key_is_reported_without_the_key(api_server, tmp_path) -> None:
    out = tmp_path / "eval"
    done = run_gpo(
        *eval_args(api_server.url, out, "--max-retries", "1"), env={"OPENAI_API_KEY": OTHER_SECRET}
    )
    assert done.returncode != 0
    assert "refused the credentials" in done.stderr or "401" in done.stderr
    assert leaks(out, done.stdout, done.stderr) == []


def test_the_key_cannot_be_given_on_the_command_line(api_server, tmp_path) -> None:
    for flag in ("--scorer-api-key", "--api-key"):
        done = run_gpo(*eval_args(api_server.url, tmp_path / "eval", flag, SECRET))
        assert done.returncode == 2
        assert SECRET not in done.stderr and SECRET not in done.stdout
    assert not (tmp_path / "eval").exists()
    help_text = run_gpo("eval", "--help").stdout
    assert "--scorer-api-key-env" in help_text and "--scorer-api-key-file" in help_text


def test_optimize_in_api_mode_leaks_no_key(api_server, tmp_path) -> None:
    # One server, one accepted key: the scorer reads it from the environment, the optimizer
    # from a file.
    key_file = tmp_path / "optimizer.key"
    key_file.write_text(SECRET)
    run_dir = tmp_path / "run"
    url = f"{api_server.url}/v1"
    done = run_gpo(
        "optimize",
        "--task",
        TASK,
        "--steps",
        "1",
        "--candidates",
        "2",
        "--train-size",
        "8",
        "--dev-size",
        "4",
        "--test-size",
        "4",
        "--scorer-url",
        url,
        "--scorer-chat-template",
        "chatml",
        "--scorer-api-key-env",
        KEY_ENV,
        "--optimizer-url",
        url,
        "--optimizer-api-key-file",
        str(key_file),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        env={KEY_ENV: SECRET},
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "summary.json").is_file() and (run_dir / "cache.sqlite").is_file()
    assert leaks(run_dir, done.stdout, done.stderr) == []


async def echo_authorization(request: web.Request) -> web.Response:
    """A hostile server: every error body repeats the caller's Authorization header."""
    header = request.headers.get("Authorization", "")
    if request.path.endswith("/models"):
        return web.json_response({"data": [{"id": "echo-model"}]})
    status = 500 if "retry" in request.query else 400
    return web.json_response(
        {"error": {"message": f"bad request from {header} ({header.split()[-1]})"}}, status=status
    )


@pytest.fixture
async def echo_server() -> Iterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo_authorization)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_error_bodies_that_echo_the_key_are_redacted(echo_server, tmp_path) -> None:
    out = tmp_path / "eval"
    done = await asyncio.to_thread(
        run_gpo,
        "eval",
        "--task",
        TASK,
        "--limit",
        "3",
        "--scorer-url",
        f"{echo_server}/v1",
        "--max-retries",
        "1",
        "--out",
        str(out),
        env={"OPENAI_API_KEY": SECRET},
    )
    assert "bad request from" in done.stdout + done.stderr + _records_text(out)
    assert leaks(out, done.stdout, done.stderr) == []


def _records_text(out: Path) -> str:
    path = out / "records.jsonl"
    return path.read_text() if path.exists() else ""


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_simulated_servers_listen_on_loopback_only(api_server) -> None:
    port = int(api_server.url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as server:
        assert listening_addresses(server.port) == {"127.0.0.1"}
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(OSError), socket.create_connection((other, server.port), 2):
                pass


def test_managed_servers_are_told_to_bind_loopback() -> None:
    from backends.errors import ConfigError
    from backends.llamacpp import LlamaServerConfig, build_llama_server_command
    from backends.vllm_serve import build_vllm_command, check_vllm_args

    llama = build_llama_server_command(LlamaServerConfig(), 8123, Path("model.gguf"))
    assert llama[llama.index("--host") + 1] == "127.0.0.1"
    vllm = build_vllm_command("vllm", "some/model", 8124, ["--host", "localhost", "--port", "9"])
    assert vllm[vllm.index("--host") + 1] == "127.0.0.1" and "localhost" not in vllm
    assert vllm[vllm.index("--port") + 1] == "8124"
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0"):
        check_vllm_args(["--host", "0.0.0.0"])
