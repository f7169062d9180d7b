"""Issue 17: servers' kinds and capabilities learned, a refused prompt list split once and lists
turned off, and the model behind a name in cache keys.

Fake servers imitate what each kind answers (checked against the real ones: vLLM 0.32's
`/v1/models` and `/version`, llama-cpp-python 0.3.36's `owned_by: "me"` and its HTTP 500 on a
list, llama-server's `/props`); the real llama-cpp-python server is in
tests/test_llamacpp_url.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Completion, Request, SamplingParams
from engine.cache import ResponseCache
from engine.endpoint_spec import EndpointSpec, EngineSetSpec
from engine.engine import Engine, EngineConfig
from engine.server_discovery import HOSTED, discover
from engine.server_identity import HASH_MEMO_ENV, file_digest, hash_memo_path
from gpo.endpoints import open_engines
from gpo.run_servers import read_servers
from tests.scripted_server import echo_completion

MODEL = "served-model"
EMPTY_500 = {"error": {"message": "", "type": "internal_server_error", "param": None}}


class FakeServer:
    """An OpenAI-compatible server that says what a given kind says about itself; echoes
    completions, refuses lists as llama-cpp-python does when `refuses_lists`, and refuses (400)
    any call holding one of the `invalid` prompts."""

    def __init__(
        self,
        entry: dict[str, Any],
        *,
        props: dict[str, Any] | None = None,
        version: str | None = None,
        headers: dict[str, str] | None = None,
        refuses_lists: bool = False,
        invalid: tuple[str, ...] = (),
    ) -> None:
        self.entry = {"id": MODEL, "object": "model", **entry}
        self.props = props
        self.version = version
        self.headers = headers or {}
        self.list_failures = 10**6 if refuses_lists else 0
        """How many more prompt-list calls fail with llama-cpp-python's HTTP 500."""
        self.invalid = invalid
        self.completions: list[dict[str, Any]] = []
        self.gets: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _models(self, request: web.Request) -> web.Response:
        self.gets.append(request.path)
        return web.json_response({"object": "list", "data": [self.entry]}, headers=self.headers)

    async def _props(self, request: web.Request) -> web.Response:
        self.gets.append(request.path)
        if self.props is None:
            raise web.HTTPNotFound()
        return web.json_response(self.props, headers=self.headers)

    async def _version(self, request: web.Request) -> web.Response:
        self.gets.append(request.path)
        if self.version is None:
            raise web.HTTPNotFound()
        return web.json_response({"version": self.version})

    async def _complete(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.completions.append(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) > 1 and self.list_failures > 0:
            self.list_failures -= 1
            return web.json_response(EMPTY_500, status=500)
        if set(prompt if isinstance(prompt, list) else [prompt]) & set(self.invalid):
            return web.json_response({"error": {"message": "invalid prompt"}}, status=400)
        return echo_completion(body)

    async def __aenter__(self) -> FakeServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_get("/version", self._version)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


LLAMA_CPP_PYTHON = {"owned_by": "me", "permissions": []}
VLLM_ENTRY = {"owned_by": "vllm", "root": "/models/a", "max_model_len": 8192}
LLAMA_SERVER = {"owned_by": "llamacpp", "meta": {"n_params": 134515008, "size": 90000000}}


def llama_props(template: str = "{{ messages }}", slots: int = 4) -> dict[str, Any]:
    return {
        "default_generation_settings": {"n_ctx": 4096},
        "total_slots": slots,
        "chat_template": template,
        "model_path": "/models/smol.gguf",
        "build_info": "b5000-abc",
    }


def prompts(count: int) -> list[Request]:
    return [Request(prompt=f"p{i}", params=SamplingParams(max_tokens=4)) for i in range(count)]


def url_spec(url: str, **fields: Any) -> EndpointSpec:
    return EndpointSpec(role="scorer", urls=(url,), model=MODEL, backoff_base_s=0.01, **fields)


# -- item 2: a list the server refuses is split once, and lists are turned off --------------------


async def test_a_refused_list_is_split_once_and_lists_are_turned_off(caplog) -> None:
    caplog.set_level(logging.WARNING)
    async with FakeServer({}, refuses_lists=True) as server:
        backend = OpenAICompatibleBackend(server.url, MODEL)
        config = EngineConfig(max_concurrency=4, max_batch_size=4, backoff_base_s=0.01)
        async with Engine(backend, config) as engine:
            first = await engine.generate_many(prompts(4))
            later = await engine.generate_many(prompts(12)[4:])
    assert all(isinstance(answer, Completion) for answer in first + later)
    lists = [body for body in server.completions if isinstance(body["prompt"], list)]
    assert len(lists) == 1  # one refused list, never sent again
    assert len(server.completions) == 1 + 12
    assert not engine.prompt_lists.enabled
    assert engine.describe()["prompt_lists"] is False
    notices = [r for r in caplog.records if "does not take prompt lists" in r.getMessage()]
    assert len(notices) == 1


async def test_a_refusal_learned_mid_run_is_kept_beside_the_servers(tmp_path) -> None:
    async with FakeServer({}, refuses_lists=True) as server:  # an unknown server: lists on
        spec = EngineSetSpec((url_spec(server.url, batch_size=4),), log_dir=tmp_path)
        async with open_engines(spec) as engines:
            answers = await engines["scorer"].generate_many(prompts(4))
    assert all(isinstance(answer, Completion) for answer in answers)
    started, learned = read_servers(tmp_path)
    assert started["server"]["kind"] == "unknown" and started["server"]["prompt_lists"]
    assert learned["role"] == "scorer" and learned["learned"] == "no prompt lists"
    assert "HTTP 500" in learned["reason"]


async def test_a_5xx_on_a_list_where_lists_worked_is_retried_not_split() -> None:
    async with FakeServer({}) as server:
        backend = OpenAICompatibleBackend(server.url, MODEL)
        config = EngineConfig(max_concurrency=4, max_batch_size=4, backoff_base_s=0.01)
        async with Engine(backend, config) as engine:
            await engine.generate_many(prompts(4))  # a list answered: lists work here
            server.list_failures = 1  # a transient fault: the next list fails once
            answers = await engine.generate_many(prompts(8)[4:])
    assert all(isinstance(answer, Completion) for answer in answers)
    assert [len(body["prompt"]) for body in server.completions] == [4, 4, 4]  # retried whole
    assert engine.prompt_lists.enabled and engine.prompt_lists.confirmed


async def test_one_bad_prompt_in_a_list_fails_alone_and_lists_stay_on() -> None:
    async with FakeServer({}, invalid=("bad",)) as server:
        backend = OpenAICompatibleBackend(server.url, MODEL)
        async with Engine(backend, EngineConfig(max_concurrency=4, max_batch_size=4)) as engine:
            batch = [*prompts(3), Request(prompt="bad", params=SamplingParams(max_tokens=4))]
            answers = await engine.generate_many(batch)
    failed = [answer for answer in answers if not isinstance(answer, Completion)]
    assert len(failed) == 1
    assert engine.prompt_lists.enabled


# -- item 1: kinds and capabilities ---------------------------------------------------------


async def test_llama_cpp_python_is_recognised_and_gets_no_lists_one_slot(tmp_path) -> None:
    async with FakeServer(LLAMA_CPP_PYTHON, refuses_lists=True) as server:
        spec = EngineSetSpec((url_spec(server.url),), log_dir=tmp_path)
        async with open_engines(spec) as engines:
            engine = engines["scorer"]
            answers = await engine.generate_many(prompts(6))
    assert all(isinstance(answer, Completion) for answer in answers)
    assert engine.capabilities == Capabilities(
        prompt_lists=False, multiple_choices=False, max_concurrency=1
    )
    assert engine.window.maximum == 1
    assert all(isinstance(body["prompt"], str) for body in server.completions)
    [record] = read_servers(tmp_path)
    assert record["server"]["kind"] == "llama-cpp-python"
    assert record["server"]["prompt_lists"] is False


async def test_llama_server_gets_its_slot_count_as_window_and_n_ignored() -> None:
    props = llama_props(slots=4)
    async with FakeServer(LLAMA_SERVER, props=props, headers={"server": "llama.cpp"}) as server:
        async with open_engines(EngineSetSpec((url_spec(server.url),))) as engines:
            engine = engines["scorer"]
    assert engine.capabilities.max_concurrency == 4
    assert not engine.capabilities.multiple_choices
    assert engine.backend.server_facts["kind"] == "llama.cpp"
    assert engine.backend.server_facts["version"] == "b5000-abc"


async def test_vllm_is_recognised_lists_confirmed_version_read() -> None:
    async with FakeServer(VLLM_ENTRY, version="0.32.0") as server:
        async with open_engines(EngineSetSpec((url_spec(server.url),))) as engines:
            engine = engines["scorer"]
    assert engine.capabilities == Capabilities(lists_confirmed=True)
    assert engine.backend.server_facts["kind"] == "vllm"
    assert engine.backend.server_facts["version"] == "0.32.0"
    assert server.gets == ["/v1/models", "/version"]  # nothing else was asked


async def test_declared_capabilities_win_over_discovered_ones() -> None:
    declared = Capabilities(max_concurrency=256)
    async with FakeServer(LLAMA_CPP_PYTHON) as server:
        spec = EngineSetSpec((url_spec(server.url, capabilities=declared),))
        async with open_engines(spec) as engines:
            engine = engines["scorer"]
    assert engine.capabilities == Capabilities(max_concurrency=256, lists_confirmed=True)


async def test_a_hosted_api_is_asked_nothing_beyond_its_model_list() -> None:
    backend = OpenAICompatibleBackend("https://api.example.com/v1", "gpt-x", api_key="sk-test")
    facts = await discover(backend, [{"id": "gpt-x", "owned_by": "openai"}], {}, 1.0)
    await backend.close()
    assert facts.kind == HOSTED
    assert facts.capabilities() == Capabilities()


# -- item 3: the model behind the name in cache keys ---------------------------------------------


async def answered_by_server(
    server: FakeServer, cache_path: Path, old_url: str, **fields: Any
) -> bool:
    """Whether a fixed request reaches `server` (a cache miss) when opened as a resumed run
    whose endpoint moved from `old_url` (so the URL itself never tells servers apart)."""
    before = len(server.completions)
    identity = f"openai-compatible|{old_url}"
    spec = EngineSetSpec((url_spec(server.url, identities=(identity,), **fields),),
                         cache_path=cache_path)  # fmt: skip
    async with open_engines(spec) as engines:
        await engines["scorer"].generate(prompts(1)[0])
    return len(server.completions) > before


@pytest.mark.parametrize(
    ("first", "second", "misses"),
    [
        (({**VLLM_ENTRY}, None), ({**VLLM_ENTRY}, None), False),
        (({**VLLM_ENTRY}, None), ({**VLLM_ENTRY, "root": "/models/b"}, None), True),
        (({**VLLM_ENTRY}, None), ({**VLLM_ENTRY, "max_model_len": 4096}, None), True),
        ((LLAMA_SERVER, llama_props("A")), (LLAMA_SERVER, llama_props("A", slots=8)), False),
        ((LLAMA_SERVER, llama_props("A")), (LLAMA_SERVER, llama_props("B")), True),
    ],
    ids=["same-vllm", "other-root", "other-length", "same-template", "other-template"],
)
async def test_another_model_under_the_same_name_misses_the_cache(
    tmp_path, first, second, misses
) -> None:
    cache = tmp_path / "cache.sqlite"
    old_url = "http://127.0.0.1:1/v1"
    async with FakeServer(first[0], props=first[1]) as server:
        assert await answered_by_server(server, cache, old_url)
    async with FakeServer(second[0], props=second[1]) as server:
        assert await answered_by_server(server, cache, old_url) is misses


async def test_a_managed_server_with_changed_weights_misses_the_cache(
    tmp_path, monkeypatch
) -> None:
    from engine.backend_kinds import open_http_backend

    monkeypatch.setenv(HASH_MEMO_ENV, str(tmp_path / "hashes.json"))
    weights = tmp_path / "model.gguf"
    cache = ResponseCache(tmp_path / "cache.sqlite")

    async def reaches_server() -> bool:
        async with FakeServer(LLAMA_CPP_PYTHON) as server:
            spec = url_spec(server.url)
            backend = await open_http_backend(
                spec, server.url, Capabilities(), identity="managed", managed=True, weights=weights
            )
            async with Engine(backend, cache=cache) as engine:
                await engine.generate(prompts(1)[0])
            return bool(server.completions)

    weights.write_bytes(b"GGUF weights one")
    assert await reaches_server()
    assert not await reaches_server()  # same weights, another server start: a hit
    weights.write_bytes(b"GGUF weights two, other")
    assert await reaches_server()
    weights.write_bytes(b"GGUF weights one")  # the first weights back (a new mtime): a hit
    assert not await reaches_server()
    cache.close()


def test_a_files_digest_is_remembered_by_path_size_and_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(HASH_MEMO_ENV, str(tmp_path / "hashes.json"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x" * 1000)
    digest = file_digest(weights)
    memo = orjson.loads(hash_memo_path().read_bytes())
    [key] = memo
    memo[key] = "remembered"
    hash_memo_path().write_bytes(orjson.dumps(memo))
    assert file_digest(weights) == "remembered"  # not read again
    weights.write_bytes(b"y" * 1001)
    assert file_digest(weights) not in (digest, "remembered")
