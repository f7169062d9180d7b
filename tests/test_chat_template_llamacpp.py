"""Issue 13's bar against the real embedded llama.cpp server (SmolLM2-135M GGUF).

On 48 samples of bbh/navigate, chats rendered with the GGUF's own template (read from its
metadata) equal what the server renders, and the ledger's prompt tokens are equal on the chat
path and the rendered path; the hand-written `chatml` (no default system turn) is caught and
not used. llama-cpp-python 0.3.x has no `/apply-template`; its equivalent here: the server's
own renderer (`Jinja2ChatFormatter`, the class its `/v1/chat/completions` runs) for the text,
and `/extras/tokenize` against the chat call's `usage` for the tokens. Gated like
tests/test_local_model.py by GPO_SKIP_REAL_MODEL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from backends.chat_template import load_chat_template
from backends.llamacpp import EmbeddedModelServer, locate_smollm2_gguf
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Request, SamplingParams
from backends.server_rendering import check_rendering
from benchmarks.layout import PromptLayout, build_prompt
from benchmarks.task_registry import load_task
from engine.engine import Engine, EngineConfig

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        os.environ.get("GPO_SKIP_REAL_MODEL") == "1", reason="GPO_SKIP_REAL_MODEL=1"
    ),
]
SAMPLES = 48


@pytest.fixture(scope="module")
def embedded() -> Iterator[EmbeddedModelServer]:
    with EmbeddedModelServer() as server:
        yield server


def navigate_chats() -> list[tuple[tuple[str, str], ...]]:
    task = load_task("bbh/navigate")
    samples = task.split("test")[:SAMPLES]
    layouts = (PromptLayout(position="Q_end"), PromptLayout(position="before_Q"))
    chats = []
    for index, sample in enumerate(samples):  # half without a system turn, half with one
        chat = build_prompt("Let's think step by step.", sample, layouts[index % 2])
        assert not isinstance(chat, str)
        chats.append(chat)
    return chats


def _backend(server: EmbeddedModelServer) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(server.url, server.model_name, capabilities=server.capabilities)


def test_the_ggufs_template_renders_as_the_server_does(embedded) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = load_chat_template(str(locate_smollm2_gguf()))
    server_side = Jinja2ChatFormatter(template.template or "", template.eos_token,
                                      template.bos_token)  # fmt: skip
    chats = navigate_chats()
    equal = sum(
        template(chat) == server_side(messages=[{"role": r, "content": c} for r, c in chat]).prompt
        for chat in chats
    )
    assert equal == len(chats)


async def test_rendered_prompts_equal_the_servers_and_the_ledgers_tokens(embedded) -> None:
    chats = navigate_chats()
    template = load_chat_template(str(locate_smollm2_gguf()))
    backend = _backend(embedded)
    try:
        verdicts = [
            await check_rendering(backend, chat, template(chat), template.bos_token)
            for chat in chats
        ]
        wrong = load_chat_template("chatml")
        caught = await check_rendering(backend, chats[0], wrong(chats[0]), "")
    finally:
        await backend.close()
    assert sum(v.matches for v in verdicts) == len(chats)
    assert {v.method for v in verdicts} == {"/extras/tokenize + chat usage"}
    assert not caught.matches and "prompt tokens differ" in caught.detail

    params = SamplingParams(max_tokens=2, temperature=0.0)
    requests = [Request(messages=chat, params=params) for chat in chats]
    tokens = {}
    for label, spec in (("chat", None), ("rendered", str(locate_smollm2_gguf()))):
        engine = Engine(_backend(embedded), EngineConfig(chat_template=spec, max_retries=2))
        async with engine:
            results = await engine.generate_many(requests)
            described = engine.describe()
        assert all(not isinstance(result, Exception) for result in results), results
        tokens[label] = sum(result.prompt_tokens for result in results)
        expected = "rendered prompts" if spec else None
        assert described.get("chat_path") == expected
    assert tokens["chat"] == tokens["rendered"] > 0
