"""The optimizer's requests say what they ask for (`Purpose`, the X-GPO-Purpose header) on every
path the engine can send them: chat calls, prompt lists rendered with a chat template, and one
call per choice for endpoints that ignore `n`. The simulated server counts what it was told."""

from __future__ import annotations

import re

import pytest

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Purpose, Request, SamplingParams
from backends.simulated import SimulatedServer, SimulatedServerConfig
from engine.engine import Engine, EngineConfig
from engine.request_key import request_key
from gpo.methods import config_for_method
from gpo.runner import RunSpec, run_optimization
from tests.gpo_fakes import DATA_DIR
from tests.gpo_process import answer_key

MODEL = SimulatedServerConfig().model
META = "Write a better prompt than this one.\nPrompt: Answer.\nScore: 40"


def engine_for(url: str, capabilities: Capabilities, **config: object) -> Engine:
    backend = OpenAICompatibleBackend(f"{url}/v1", MODEL, capabilities=capabilities)
    return Engine(backend, EngineConfig(**config))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("capabilities", "template"),
    [
        (Capabilities(), None),  # a chat call with n
        (Capabilities(), "chatml"),  # rendered on the client, sent as a prompt list
        (Capabilities(multiple_choices=False), None),  # one call per choice
    ],
    ids=["chat", "prompt-list", "one-choice-per-call"],
)
async def test_a_purpose_reaches_the_server_on_every_path(capabilities, template) -> None:
    params = SamplingParams(
        max_tokens=128, temperature=1.0, n=3, seed=7, purpose=Purpose.NEW_PROMPT
    )
    request = Request(messages=(("user", META),), params=params, sample_index=7)
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as server:
        async with engine_for(server.url, capabilities, chat_template=template) as engine:
            answer = await engine.generate(request)
        purposes = dict(server.counters.purposes)
    assert len(answer.texts) == 3
    assert all(re.fullmatch(r"<START>.+<END>", text) for text in answer.texts), answer.texts
    calls = 3 if not capabilities.multiple_choices else 1
    assert purposes == {"new-prompt": calls}


def test_the_purpose_is_a_label_not_part_of_the_cache_key() -> None:
    messages = (("user", META),)
    plain = Request(messages=messages, params=SamplingParams())
    labelled = Request(messages=messages, params=SamplingParams(purpose=Purpose.REFLECTION))
    assert request_key("x", plain) == request_key("x", labelled)


@pytest.mark.parametrize("method", ["sgdm", "summary"])
async def test_every_optimizer_request_is_labelled_with_what_it_asks_for(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SGDM asks for reflections and their running summary (reflection) and edited prompts (new
    prompt); the summarised trajectory also asks for summary prompts (new prompt). Every one of
    these calls carries its label, and its answer is parsed into a new prompt or reason."""
    monkeypatch.setenv("GPO_DATA_DIR", str(DATA_DIR))
    steps = 3
    small = {"steps": steps, "candidates": 4, "dev_size": 16, "test_size": 8, "train_size": 16}
    if method == "summary":
        config = config_for_method("gpo", direction="summary", reflection=False, **small)
    else:
        config = config_for_method(method, **small)
    spec = RunSpec(tasks=("bbh/navigate",), optimizer=config)
    async with SimulatedServer(
        SimulatedServerConfig(zero_latency=True), answer_key=answer_key()
    ) as server:
        async with (
            engine_for(server.url, Capabilities()) as scorer,
            engine_for(server.url, Capabilities()) as optimizer,
        ):
            summary = await run_optimization(spec, scorer=scorer, optimizer=optimizer, run_dir=None)
            ledger = optimizer.ledger.snapshot()["rows"]
        purposes = dict(server.counters.purposes)
    (task,) = summary["tasks"]
    assert task["steps_done"] == steps
    optimizing = sum(row["requests"] for row in ledger if row["phase"] == "optimizing")
    labelled = purposes.get("new-prompt", 0) + purposes.get("reflection", 0)
    assert labelled == optimizing  # no optimizer call went unlabelled
    if method == "sgdm":
        # A reflection per step, and from the second step on a momentum summary of problems.
        assert purposes["reflection"] == steps + (steps - 1)
        assert purposes["new-prompt"] == steps
    else:
        assert "reflection" not in purposes
        assert purposes["new-prompt"] == steps + (steps - 1)  # candidates + summary prompts
    # The simulated optimizer's answers parse into prompts the loop had not seen.
    assert len({entry["prompt"] for entry in task["trajectory"]}) > 1
