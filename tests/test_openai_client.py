"""The OpenAI-compatible client against a scripted loopback server: shapes, usage, typed errors."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from backends.errors import (
    AuthenticationError,
    ClientRequestError,
    ConfigError,
    ConnectionFailed,
    ContextLengthExceeded,
    MalformedResponse,
    RateLimited,
    RequestTimeout,
    ServerError,
    UnknownModel,
)
from backends.openai_client import OpenAICompatibleBackend, parse_retry_after, redact_url
from backends.protocol import SamplingParams
from tests.scripted_server import ScriptedServer, free_port


@pytest.fixture
async def server():
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


@pytest.fixture
async def client(server):
    backend = OpenAICompatibleBackend(server.url, "scripted-model", api_key="sk-test-secret-123")
    yield backend
    await backend.close()


async def test_prompt_list_in_one_call_with_exact_usage_split(server, client):
    prompts = ["a", "bbbb", "cc"]
    answers = await client.complete(prompts, SamplingParams(max_tokens=5))
    assert [a.text for a in answers] == ["echo:a", "echo:bbbb", "echo:cc"]
    assert len(server.bodies) == 1 and server.bodies[0]["prompt"] == prompts
    assert sum(a.prompt_tokens for a in answers) == 7
    assert sum(a.completion_tokens for a in answers) == sum(len(a.text) for a in answers)


async def test_n_choices_are_grouped_per_prompt(client):
    answers = await client.complete(["x", "y"], SamplingParams(n=2, temperature=1.0))
    assert answers[0].texts == ("echo:x#0", "echo:x#1")
    assert answers[1].texts == ("echo:y#0", "echo:y#1")


async def test_chat_sends_messages_and_key(server, client):
    answer = await client.chat([("system", "s"), ("user", "hello")], SamplingParams())
    assert answer.text == "echo:hello"
    assert server.bodies[0]["messages"][1] == {"role": "user", "content": "hello"}
    assert server.headers[0]["Authorization"] == "Bearer sk-test-secret-123"
    assert await client.list_models() == ["scripted-model"]


def _status(status: int, body: bytes = b'{"error": {"message": "nope"}}', headers=None):
    return lambda _: web.Response(status=status, body=body, headers=headers or {})


@pytest.mark.parametrize(
    ("responder", "error_type"),
    [
        (_status(500), ServerError),
        (_status(503), ServerError),
        (_status(401), AuthenticationError),
        (_status(404, b'{"error": {"message": "The model `x` does not exist."}}'), UnknownModel),
        (
            _status(400, b'{"error": {"message": "maximum context length is 2048 tokens"}}'),
            ContextLengthExceeded,
        ),
        (_status(422), ClientRequestError),
        (
            lambda _: web.Response(body=b"{not json", content_type="application/json"),
            MalformedResponse,
        ),
        (lambda _: web.json_response({"choices": []}), MalformedResponse),
        (lambda _: web.json_response({"unexpected": 1}), MalformedResponse),
    ],
)
async def test_failures_are_typed(server, client, responder, error_type):
    server.script.append(responder)
    with pytest.raises(error_type) as caught:
        await client.complete(["p"], SamplingParams())
    assert "sk-test-secret-123" not in str(caught.value)
    assert not (error_type is ServerError and not caught.value.retryable)


async def test_429_reads_retry_after_and_ratelimit_headers(server, client):
    headers = {"Retry-After": "3", "x-ratelimit-remaining-requests": "0"}
    server.script.append(_status(429, headers=headers))
    with pytest.raises(RateLimited) as caught:
        await client.complete(["p"], SamplingParams())
    assert caught.value.retry_after == 3.0
    assert caught.value.limits["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.retryable


async def test_timeout_is_typed(server):
    async def hang(_body):
        await asyncio.sleep(5)

    server.script.append(hang)
    slow = OpenAICompatibleBackend(server.url, "m", request_timeout_s=0.2)
    with pytest.raises(RequestTimeout):
        await slow.complete(["p"], SamplingParams())
    await slow.close()


async def test_unreachable_endpoint_is_a_connection_error():
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}/v1", "m")
    with pytest.raises(ConnectionFailed) as caught:
        await backend.complete(["p"], SamplingParams())
    assert "cannot connect" in str(caught.value)
    await backend.close()


def test_hosted_endpoint_without_key_is_refused_before_any_work(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        OpenAICompatibleBackend("https://api.example.com/v1", "gpt-4o-mini")


def test_configuration_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key")
    backend = OpenAICompatibleBackend(model="m")
    assert backend.base_url == "https://api.example.com/v1"
    assert "sk-env-key" not in backend.identity


def test_bad_base_url_and_credentials_in_urls():
    with pytest.raises(ConfigError):
        OpenAICompatibleBackend("ftp://x", "m")
    assert redact_url("http://user:pw@host:80/v1") == "http://host:80/v1"
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
