"""Secrets found by the red-team pass stay secret: keys in a URL (userinfo or a query parameter),
keys given by mistake as the *name* of a key variable or the *path* of a key file, keys behind
an abbreviated flag, keys a server echoes back inside its answers, and keys a redirect would
carry to another host.

Each test runs `gpo` as a user does (a subprocess, at DEBUG) and looks for the key in every file
of the run and in everything printed."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from backends.simulated import SimulatedServerProcess
from gpo.cli import build_parser
from tests.gpo_process import TASK, answered_server, gpo_environment
from tests.gpo_process import run_gpo as gpo_subprocess

SECRET = "sk-fake-url-7c1e9a3b5d-DO-NOT-LEAK-0123456789"
OTHER_SECRET = "sk-fake-query-2b4d6f8a0c-NEVER-PRINT-9876543210"
HEX_KEY = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0"  # a key with no well-known prefix
ALL_SECRETS = (SECRET, OTHER_SECRET, HEX_KEY)


def run_gpo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`gpo` at DEBUG (the most a log ever says), no API key inherited, `env` added."""
    return gpo_subprocess("--log-level", "DEBUG", *args, env=gpo_environment(env), timeout=400)


def leaks(folder: Path, *texts: str) -> list[str]:
    """Every file under `folder` (bytes: SQLite pages and WAL too) and text holding a secret."""
    found = []
    for secret in ALL_SECRETS:
        needle = secret.encode()
        if folder.exists():
            for path in folder.rglob("*"):
                if path.is_file() and needle in path.read_bytes():
                    found.append(f"{secret[:14]}... in {path}")
        for index, text in enumerate(texts):
            if secret in text:
                found.append(f"{secret[:14]}... in output {index}")
    return found


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if ": error: " in line]


@pytest.fixture(scope="module")
def sim_server() -> Iterator[SimulatedServerProcess]:
    with answered_server(50.0) as server:
        yield server


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def small_optimize(scorer_url: str, optimizer_url: str, run_dir: Path, *extra: str) -> list[str]:
    arguments = ["optimize", "--task", TASK, "--steps", "1", "--candidates", "2"]
    arguments += ["--train-size", "8", "--dev-size", "4", "--test-size", "4"]
    arguments += ["--scorer-url", scorer_url, "--scorer-chat-template", "chatml"]
    arguments += ["--optimizer-url", optimizer_url, "--run-dir", str(run_dir), "--no-progress"]
    return [*arguments, *extra]


# -- keys inside URLs ------------------------------------------------------------------------


def test_keys_in_url_userinfo_and_query_reach_no_file_and_no_output(sim_server, tmp_path) -> None:
    host = sim_server.url.split("://", 1)[1]
    scorer_url = f"http://user:{SECRET}@{host}/v1"
    optimizer_url = f"http://{host}/v1?api_key={OTHER_SECRET}"
    run_dir = tmp_path / "run"
    done = run_gpo(*small_optimize(scorer_url, optimizer_url, run_dir))
    assert done.returncode == 0, done.stderr
    assert (run_dir / "summary.json").is_file()
    config = orjson.loads((run_dir / "config.json").read_bytes())
    assert config["arguments"]["scorer_url"] == [f"http://{host}/v1"]
    assert config["arguments"]["optimizer_url"] == [f"http://{host}/v1?api_key=[redacted]"]
    assert leaks(run_dir, done.stdout, done.stderr) == []


def test_an_unreachable_url_is_named_without_its_query_key(refusing_port, tmp_path) -> None:
    url = f"http://127.0.0.1:{refusing_port}/v1?api_key={OTHER_SECRET}&token={HEX_KEY}"
    out = tmp_path / "eval"
    done = run_gpo("eval", "--task", TASK, "--limit", "2", "--scorer-url", url, "--out", str(out))
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert f"127.0.0.1:{refusing_port}" in line and "cannot be reached" in line
    assert leaks(out, done.stdout, done.stderr) == []


# -- keys given where a name or a path belongs -----------------------------------------------


@pytest.mark.parametrize("key", [SECRET, HEX_KEY])
def test_a_key_given_as_the_key_variable_name_is_refused_unechoed(key, tmp_path) -> None:
    run_dir = tmp_path / "run"
    url = "http://127.0.0.1:9/v1"
    done = run_gpo(*small_optimize(url, url, run_dir, "--optimizer-api-key-env", key))
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert "--optimizer-api-key-env" in line and "environment variable" in line
    assert not run_dir.exists()
    assert leaks(tmp_path, done.stdout, done.stderr) == []


@pytest.mark.parametrize("key", [SECRET, HEX_KEY])
def test_a_key_given_as_the_key_file_is_refused_unechoed(key, tmp_path) -> None:
    run_dir = tmp_path / "run"
    url = "http://127.0.0.1:9/v1"
    done = run_gpo(*small_optimize(url, url, run_dir, "--scorer-api-key-file", key))
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert "--scorer-api-key-file" in line
    assert not run_dir.exists()
    assert leaks(tmp_path, done.stdout, done.stderr) == []


@pytest.mark.parametrize(
    "flag", ["--scorer-api-key-f", "--scorer-api-key-fi", "--scorer-api-key-e", "--scorer-api"]
)
@pytest.mark.parametrize("key", [SECRET, HEX_KEY])
def test_an_abbreviated_key_flag_is_refused_unechoed(flag, key, tmp_path) -> None:
    run_dir = tmp_path / "run"
    url = "http://127.0.0.1:9/v1"
    done = run_gpo(*small_optimize(url, url, run_dir, flag, key))
    assert done.returncode == 2, done.stderr
    assert "not accepted on the command line" in done.stderr
    assert not run_dir.exists()
    assert leaks(tmp_path, done.stdout, done.stderr) == []


def test_no_parser_accepts_abbreviated_flags() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--task", TASK, "--lim", "3"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-lev", "DEBUG", "eval", "--task", TASK])
    with pytest.raises(SystemExit):
        parser.parse_args(["optimize", "--task", TASK, "--scorer-api-key-f", "key.txt"])
    args = parser.parse_args(["eval", "--task", TASK, "--limit", "3"])
    assert args.limit == 3


# -- servers that echo the key, servers that redirect -----------------------------------------


def _prompts(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        return [body["messages"][-1]["content"]]
    prompt = body.get("prompt")
    return [prompt] if isinstance(prompt, str) else list(prompt or [])


class HostileServers:
    """Two loopback servers: `main` echoes the Authorization header into every answer (or, when
    told, redirects), `elsewhere` counts the requests that reach it."""

    def __init__(self) -> None:
        self.redirect_paths: set[str] = set()
        self.requests: dict[str, list[str]] = {"main": [], "elsewhere": []}
        self.main = ""
        self.elsewhere = ""
        self._runners: list[web.AppRunner] = []

    async def _main(self, request: web.Request) -> web.StreamResponse:
        self.requests["main"].append(request.path)
        tail = request.path.removeprefix("/v1")
        if tail in self.redirect_paths:
            target = f"{self.elsewhere}{tail}?api_key={OTHER_SECRET}"
            raise web.HTTPTemporaryRedirect(target)
        if tail == "/models":
            return web.json_response({"data": [{"id": "echo-model"}]})
        header = request.headers.get("Authorization", "")
        body = await request.json()
        choices = []
        for index, _ in enumerate(_prompts(body)):
            text = f"The answer is (A). Sent with {header}; key {header.split()[-1]}."
            if "messages" in body:
                entry = {"index": index, "message": {"role": "assistant", "content": text}}
            else:
                entry = {"index": index, "text": text}
            choices.append({**entry, "finish_reason": "stop"})
        usage = {"prompt_tokens": 10, "completion_tokens": 10}
        return web.json_response({"choices": choices, "usage": usage})

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.requests["elsewhere"].append(request.headers.get("Authorization", ""))
        return web.json_response({"data": [{"id": "elsewhere-model"}]})

    async def _serve(self, handler: Any) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def start(self) -> None:
        self.main = await self._serve(self._main)
        self.elsewhere = await self._serve(self._elsewhere) + "/v1"

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServers]:
    servers = HostileServers()
    await servers.start()
    try:
        yield servers
    finally:
        await servers.stop()


def _eval_hostile(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_gpo(
        "eval",
        "--task",
        TASK,
        "--limit",
        "4",
        "--scorer-url",
        f"{url}/v1",
        "--out",
        str(out),
        *extra,
        env={"OPENAI_API_KEY": SECRET},
    )


@pytest.mark.parametrize("chat_template", [None, "chatml"])
async def test_a_key_echoed_in_answers_is_redacted_before_cache_and_records(
    hostile, tmp_path, chat_template
) -> None:
    out = tmp_path / "eval"
    extra = ("--scorer-chat-template", chat_template) if chat_template else ()
    done = await asyncio.to_thread(_eval_hostile, hostile.main, out, *extra)
    assert done.returncode == 0, done.stderr
    records = (out / "records.jsonl").read_text()
    assert "Sent with Bearer [redacted]" in records  # the answers themselves are kept
    assert (out / "cache.sqlite").stat().st_size > 0
    assert leaks(out, done.stdout, done.stderr) == []


async def test_a_redirected_probe_is_not_followed(hostile, tmp_path) -> None:
    hostile.redirect_paths = {"/models"}
    out = tmp_path / "eval"
    done = await asyncio.to_thread(_eval_hostile, hostile.main, out)
    assert done.returncode == 2, done.stderr
    (line,) = error_lines(done)
    assert "redirect" in line and hostile.elsewhere in line and "api_key=[redacted]" in line
    assert hostile.requests["elsewhere"] == []
    assert leaks(out, done.stdout, done.stderr) == []


async def test_redirected_answers_stop_the_run_without_retries(hostile, tmp_path) -> None:
    hostile.redirect_paths = {"/chat/completions", "/completions"}
    out = tmp_path / "eval"
    done = await asyncio.to_thread(_eval_hostile, hostile.main, out, "--max-retries", "5")
    assert done.returncode != 0, done.stderr
    assert "redirect" in done.stderr and hostile.elsewhere in done.stderr
    assert hostile.requests["elsewhere"] == []
    answers = [path for path in hostile.requests["main"] if "completions" in path]
    assert 1 <= len(answers) <= 4  # at most one call per sample: a redirect is never retried
    assert leaks(out, done.stdout, done.stderr) == []
