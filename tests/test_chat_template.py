"""Chats rendered with the model's own template, and only after the live server agreed.

Reproduces issue 13's finding: a client-side rendering that differs from the server's (SmolLM2's
template adds a default system turn; hand-written ChatML does not) silently changed what the
model read. Here a wrong template is detected on the server and not used; a right one is; a
template that prints its own BOS never gives the model two.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from backends.chat_template import load_chat_template, render_chatml
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Request, SamplingParams
from backends.simulated import SimulatedServer, SimulatedServerConfig
from backends.simulated.metrics import metric_total, parse_prometheus
from engine.engine import Engine, EngineConfig

CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}" + CHATML_JINJA[len("{% for message in messages %}") :]
)
BOS_JINJA = "{{ bos_token }}" + CHATML_JINJA
CHATS = [Request(messages=(("user", f"question {i}"),), params=SamplingParams(max_tokens=4))
         for i in range(12)]  # fmt: skip
CAPABILITIES = Capabilities(prompt_lists=True, chat=True, completions=True, max_concurrency=16)


def _write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


async def _calls(url: str, endpoint: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as answer:
        samples = parse_prometheus(await answer.text())
    return metric_total(samples, "sim_http_requests_total", endpoint=endpoint)


def _engine(url: str, template: str, model: str = SimulatedServerConfig().model) -> Engine:
    url = url if url.endswith("/v1") else f"{url}/v1"
    backend = OpenAICompatibleBackend(url, model, capabilities=CAPABILITIES)
    return Engine(backend, EngineConfig(chat_template=template, max_retries=1))


def test_a_model_directory_and_a_jinja_file_render_the_models_own_template(tmp_path) -> None:
    _write(tmp_path, "chat_template.jinja", SMOLLM2_JINJA)
    _write(tmp_path, "tokenizer_config.json", json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    from_dir = load_chat_template(str(tmp_path))
    text = from_dir((("user", "hi"),))
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert (from_dir.bos_token, from_dir.eos_token) == ("<s>", "</s>")
    jinja = load_chat_template(_write(tmp_path, "other.jinja", BOS_JINJA))
    assert jinja((("user", "hi"),)) == "<s>" + render_chatml((("user", "hi"),))


def test_the_jinja2_path_renders_as_transformers_does(monkeypatch) -> None:
    import backends.chat_template as module

    pytest.importorskip("transformers")
    messages = (("system", "be brief"), ("user", 'say "<b>"'), ("assistant", "ok"), ("user", "q"))
    template = module.ChatTemplate("t", SMOLLM2_JINJA + "{{ messages | tojson }}", "<s>", "</s>")
    with_transformers = template(messages)
    monkeypatch.setitem(__import__("sys").modules, "transformers.utils.chat_template_utils", None)
    assert template(messages) == with_transformers  # jinja2 alone, configured the same way


async def test_a_correct_template_is_verified_and_rides_prompt_lists(tmp_path) -> None:
    template = _write(tmp_path, "chatml.jinja", CHATML_JINJA)
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as server:
        async with _engine(server.url, template) as engine:
            results = await engine.generate_many(CHATS)
            described = engine.describe()
        assert all(not isinstance(result, Exception) for result in results)
        assert await _calls(server.url, "/v1/chat/completions") == 0
        assert await _calls(server.url, "/v1/completions") >= 1
        assert await _calls(server.url, "/tokenize") >= 2
    assert described["chat_path"] == "rendered prompts"
    assert described["chat_template_verified_by"] == ["/tokenize"]


async def test_a_wrong_template_is_detected_and_not_used(tmp_path, caplog) -> None:
    # The case in reverse: a template with a default system turn the server lacks.
    template = _write(tmp_path, "smollm2.jinja", SMOLLM2_JINJA)
    caplog.set_level(logging.WARNING, logger="engine.chat_render")
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as server:
        async with _engine(server.url, template) as engine:
            results = await engine.generate_many(CHATS)
            described = engine.describe()
            chat_tokens = engine.ledger.spent_tokens
        assert all(not isinstance(result, Exception) for result in results)
        assert await _calls(server.url, "/v1/completions") == 0
        assert await _calls(server.url, "/v1/chat/completions") == len(CHATS)
    assert described["chat_path"] == "chat calls"
    assert "token ids differ" in described["chat_template_fallback"]
    warnings = [r for r in caplog.records if "is not used" in r.getMessage()]
    assert len(warnings) == 1
    assert chat_tokens > 0


async def test_the_hand_written_chatml_passes_the_simulated_servers_check() -> None:
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as server:
        async with _engine(server.url, "chatml") as engine:
            await engine.generate_many(CHATS)
            assert engine.describe()["chat_path"] == "rendered prompts"
        assert await _calls(server.url, "/v1/chat/completions") == 0


class BosServer:
    """vLLM with a tokenizer that adds BOS (id 1, text `<s>`) to every completion prompt."""

    def __init__(self) -> None:
        self.prompts: list[Any] = []

    @staticmethod
    def ids(text: str, add_bos: bool) -> list[int]:
        ids = [1] if add_bos else []
        while text:
            if text.startswith("<s>"):
                ids.append(1)
                text = text[3:]
            else:
                ids.append(ord(text[0]) + 10)
                text = text[1:]
        return ids

    async def tokenize(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if "messages" in body:  # the server's own template prints the BOS; none added on top
            turns = [(m["role"], m["content"]) for m in body["messages"]]
            return web.json_response({"tokens": self.ids("<s>" + render_chatml(turns), False)})
        add = body.get("add_special_tokens", True)
        return web.json_response({"tokens": self.ids(body["prompt"], add)})

    async def complete(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        self.prompts.extend(prompts)
        choices = [{"index": i, "text": "ok", "finish_reason": "stop"} for i in range(len(prompts))]
        usage = {"prompt_tokens": sum(len(self.ids(p, True)) for p in prompts),
                 "completion_tokens": len(prompts)}  # fmt: skip
        return web.json_response({"choices": choices, "usage": usage})


async def test_no_doubled_bos_when_the_server_adds_its_own(tmp_path) -> None:
    fake = BosServer()
    app = web.Application()
    app.router.add_post("/tokenize", fake.tokenize)
    app.router.add_post("/v1/completions", fake.complete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        _write(tmp_path, "tokenizer_config.json", json.dumps({"bos_token": "<s>"}))
        template = load_chat_template(_write(tmp_path, "bos.jinja", BOS_JINJA))
        assert template((("user", "x"),)).startswith("<s><|im_start|>")
        engine = _engine(url, str(tmp_path / "bos.jinja"))
        async with engine:
            await engine.generate_many(CHATS)
            described = engine.describe()
    finally:
        await runner.cleanup()
    assert described["chat_path"] == "rendered prompts"
    assert described["chat_template_strips_bos"] is True
    assert fake.prompts and all(p.startswith("<|im_start|>user") for p in fake.prompts)
    assert all(BosServer.ids(p, True)[:2] != [1, 1] for p in fake.prompts)


def test_the_flag_takes_paths_server_and_names_and_refuses_others(tmp_path) -> None:
    import argparse

    from gpo.endpoint_flags import _chat_template

    for good in ("server", "chatml", _write(tmp_path, "t.jinja", CHATML_JINJA), str(tmp_path)):
        assert _chat_template(good) == good
    with pytest.raises(argparse.ArgumentTypeError, match="vicuna"):
        _chat_template("vicuna")
