"""Requests fit modern hosted models: a refused `max_tokens`, `temperature` or `n` is learned from
OpenAI's HTTP 400 once per endpoint, said once in the log, and the call is re-sent fitted."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import SamplingParams
from tests.scripted_server import ScriptedServer

MAX_TOKENS_REFUSED = {
    "error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }
}
TEMPERATURE_REFUSED = {
    "error": {
        "message": "Unsupported value: 'temperature' does not support 0.0 with this model. "
        "Only the default (1) value is supported.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "unsupported_value",
    }
}
N_REFUSED = {
    "error": {
        "message": "Unsupported value: 'n' does not support 4 with this model. "
        "Only the default (1) value is supported.",
        "type": "invalid_request_error",
        "param": "n",
        "code": "unsupported_value",
    }
}


def refuse_like_openai(body: dict) -> web.Response | None:
    """A reasoning model's rules: no max_tokens, no temperature but 1, no n but 1."""
    if "max_tokens" in body:
        error = MAX_TOKENS_REFUSED
    elif body.get("temperature", 1) != 1:
        error = TEMPERATURE_REFUSED
    elif body.get("n", 1) != 1:
        error = N_REFUSED
    else:
        return None  # echo
    return web.Response(status=400, body=orjson.dumps(error), content_type="application/json")


async def test_refused_fields_are_learned_once_said_once_and_the_call_resent(caplog):
    server = ScriptedServer()
    url = await server.start()
    server.script.extend([refuse_like_openai] * 20)
    backend = OpenAICompatibleBackend(url, "o-model")
    params = SamplingParams(max_tokens=64, temperature=0.0, n=1)
    try:
        with caplog.at_level(logging.WARNING):
            first = await backend.chat([("user", "hi")], params)
            calls_for_first = len(server.bodies)
            second = await backend.chat([("user", "again")], params)
    finally:
        await backend.close()
        await server.stop()
    assert first.text == "echo:hi" and second.text == "echo:again"
    # max_tokens refused, then temperature refused, then answered: three calls, then one.
    assert calls_for_first == 3
    assert len(server.bodies) == 4
    last = server.bodies[-1]
    assert last["max_completion_tokens"] == 64
    assert "max_tokens" not in last and "temperature" not in last
    said = [r.getMessage() for r in caplog.records if "refuses" in r.getMessage()]
    assert len(said) == 2
    assert any("max_completion_tokens" in line for line in said)


async def test_refused_n_gives_the_candidates_from_separate_calls():
    server = ScriptedServer()
    url = await server.start()
    server.script.extend([refuse_like_openai] * 20)
    backend = OpenAICompatibleBackend(url, "o-model")
    params = SamplingParams(max_tokens=64, temperature=1.0, n=4, seed=7)
    try:
        answer = await backend.chat([("user", "write")], params)
        answered = len(server.bodies)
        again = await backend.chat([("user", "more")], params)
    finally:
        await backend.close()
        await server.stop()
    assert len(answer.texts) == 4 and len(again.texts) == 4
    # one call refused for max_tokens, one for n, then four single-choice calls
    assert answered == 6
    assert len(server.bodies) == 10
    singles = server.bodies[-4:]
    assert all(body.get("n", 1) == 1 for body in singles)
    assert [body["seed"] for body in singles] == [7, 8, 9, 10]
    assert answer.prompt_tokens == 4 * len("write")


async def test_other_client_errors_are_not_retried():
    server = ScriptedServer()
    url = await server.start()
    bad = {"error": {"message": "Invalid 'messages'", "type": "invalid_request_error"}}
    server.script.append(
        lambda body: web.Response(status=400, body=orjson.dumps(bad), content_type="text/json")
    )
    backend = OpenAICompatibleBackend(url, "o-model")
    try:
        from backends.errors import ClientRequestError

        try:
            await backend.chat([("user", "x")], SamplingParams())
        except ClientRequestError as error:
            assert "Invalid 'messages'" in str(error)
        else:
            raise AssertionError("a 400 that names no refused field must stand")
    finally:
        await backend.close()
        await server.stop()
    assert len(server.bodies) == 1


async def test_concurrent_calls_refused_together_are_all_resent_and_said_once(caplog):
    import asyncio

    server = ScriptedServer()
    url = await server.start()
    server.script.extend([refuse_like_openai] * 40)
    backend = OpenAICompatibleBackend(url, "o-model")
    params = SamplingParams(max_tokens=32, temperature=1.0)
    try:
        with caplog.at_level(logging.WARNING):
            answers = await asyncio.gather(
                *(backend.chat([("user", f"q{i}")], params) for i in range(8))
            )
    finally:
        await backend.close()
        await server.stop()
    assert [a.text for a in answers] == [f"echo:q{i}" for i in range(8)]
    said = [r.getMessage() for r in caplog.records if "refuses" in r.getMessage()]
    assert len(said) == 1
