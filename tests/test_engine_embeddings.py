"""Embedding calls go through the engine: the project's one HTTP client, the engine's retry policy
(backoff, `Retry-After`, fatal endpoint errors) and its ledger, whether called as `Engine.embed`
or through gpo's endpoint embedder."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from backends.errors import AuthenticationError
from backends.openai_client import OpenAICompatibleBackend
from backends.simulated import SimulatedServer, SimulatedServerConfig, embed_text
from engine.engine import Engine, EngineConfig, RequestFailed
from engine.ledger import Ledger
from gpo.embedders import EmbedderConfig, EndpointEmbedder, make_embedder
from gpo.methods import config_for_method
from gpo.runner import RunSpec, run_optimization
from tests.gpo_fakes import DATA_DIR
from tests.gpo_process import answer_key
from tests.scripted_server import ScriptedServer

FAST_RETRIES = EngineConfig(backoff_base_s=0.01, backoff_max_s=0.05, max_retries=3)


@pytest.fixture
async def server():
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


def embedding_row(ledger: Ledger) -> dict[str, Any]:
    rows = [row for row in ledger.snapshot()["rows"] if row["phase"] == "embedding"]
    assert len(rows) == 1, rows
    return rows[0]


def stamped(times: list[float], response: web.Response | None = None) -> Any:
    """A scripted responder that notes when its request arrived, then answers `response`
    (None: the server's echo answer)."""

    def respond(_body: dict[str, Any]) -> web.Response | None:
        times.append(time.monotonic())
        return response

    return respond


async def test_a_503_is_retried_by_the_engine_and_counted_in_the_runs_ledger(server) -> None:
    server.script.append(lambda _: web.Response(status=503, text="warming up"))
    ledger = Ledger()
    embedder = make_embedder(
        EmbedderConfig(kind="endpoint", base_url=server.url, model="embed-small"),
        engine_config=FAST_RETRIES,
        ledger=ledger,
    )
    try:
        vectors = await embedder.embed(["ab", "cde"])
    finally:
        await embedder.close()
    assert vectors.tolist() == [[2.0, 0.0, 1.0], [3.0, 1.0, 1.0]]
    assert len(server.bodies) == 2  # the refused call, then its retry
    row = embedding_row(ledger)
    assert row["model"] == "embed-small"
    assert (row["retries"], row["http_calls"], row["prompt_tokens"]) == (1, 1, 5)
    assert row["failures"] == {}


async def test_a_429_waits_out_retry_after_before_the_retry(server) -> None:
    arrivals: list[float] = []
    refusal = web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
    server.script.extend([stamped(arrivals, refusal), stamped(arrivals)])
    embedder = EndpointEmbedder(server.url, "embed-small", engine_config=FAST_RETRIES)
    try:
        vectors = await embedder.embed(["abcd"])
    finally:
        await embedder.close()
    assert vectors.tolist() == [[4.0, 0.0, 1.0]]
    assert len(arrivals) == 2
    # Backoff alone would retry within 0.05 s; the server asked for a full second.
    assert arrivals[1] - arrivals[0] >= 0.95
    row = embedding_row(embedder.engine.ledger)
    assert (row["retries"], row["rate_limited"]) == (1, 1)


async def test_retries_follow_the_engine_config_bound(server) -> None:
    for _ in range(10):
        server.script.append(lambda _: web.Response(status=500, text="boom"))
    config = EngineConfig(backoff_base_s=0.01, backoff_max_s=0.02, max_retries=1)
    embedder = EndpointEmbedder(server.url, "embed-small", engine_config=config)
    try:
        with pytest.raises(RequestFailed) as caught:
            await embedder.embed(["a"])
    finally:
        await embedder.close()
    assert caught.value.kind == "server_error" and caught.value.attempts == 2
    assert len(server.bodies) == 2
    assert embedding_row(embedder.engine.ledger)["failures"] == {"server_error": 1}


async def test_a_401_is_fatal_not_retried_and_stops_later_calls(server) -> None:
    for _ in range(5):
        server.script.append(lambda _: web.Response(status=401, text="bad key"))
    embedder = EndpointEmbedder(
        server.url, "embed-small", api_key="secret-key-value", engine_config=FAST_RETRIES
    )
    try:
        with pytest.raises(AuthenticationError, match="--embedding-api-key-env") as caught:
            await embedder.embed(["a"])
        with pytest.raises(AuthenticationError):
            await embedder.embed(["b"])
    finally:
        await embedder.close()
    assert len(server.bodies) == 1  # neither retried nor sent again once the endpoint failed
    assert "secret-key-value" not in str(caught.value)
    assert embedder.engine.fatal_error is not None
    assert embedding_row(embedder.engine.ledger)["retries"] == 0


async def test_openai_api_key_is_never_sent_to_the_embedding_endpoint(
    server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "completion-endpoint-key")
    embedder = EndpointEmbedder(server.url, "embed-small")
    try:
        await embedder.embed(["a"])
    finally:
        await embedder.close()
    assert "Authorization" not in server.headers[0]


async def test_engine_embed_against_the_simulated_server_counts_its_usage() -> None:
    texts = ["think step by step", "answer in French"]
    config = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(config) as simulated:
        backend = OpenAICompatibleBackend(f"{simulated.url}/v1", config.model)
        async with Engine(backend, FAST_RETRIES) as engine:
            answer = await engine.embed(texts, phase="retrieval")
    expected = [embed_text(text, config.embedding_dim) for text in texts]
    assert np.allclose(np.asarray(answer.vectors), np.asarray(expected))
    assert answer.prompt_tokens > 0
    (row,) = engine.ledger.snapshot()["rows"]
    assert (row["phase"], row["http_calls"]) == ("retrieval", 1)
    assert row["prompt_tokens"] == answer.prompt_tokens


async def test_a_relevance_run_records_its_embedding_calls_in_the_run_ledger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`gpo optimize --embedder endpoint`: retrieval's embedding calls follow the optimizer
    engine's policy and appear in its ledger, next to the optimizing and scoring rows."""
    monkeypatch.setenv("GPO_DATA_DIR", str(DATA_DIR))
    small = {"steps": 2, "candidates": 2, "dev_size": 8, "test_size": 4, "train_size": 8}
    config = config_for_method("gpo", direction="relevance", **small)
    settings = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(settings, answer_key=answer_key()) as simulated:
        url = f"{simulated.url}/v1"
        embedder = EmbedderConfig(kind="endpoint", base_url=url, model=settings.model)
        spec = RunSpec(tasks=("bbh/navigate",), optimizer=config, embedder=embedder)
        ledger = Ledger()
        async with (
            Engine(OpenAICompatibleBackend(url, settings.model), ledger=ledger) as scorer,
            Engine(OpenAICompatibleBackend(url, settings.model), ledger=ledger) as optimizer,
        ):
            summary = await run_optimization(spec, scorer=scorer, optimizer=optimizer, run_dir=None)
    assert summary["tasks"][0]["steps_done"] == 2
    row = embedding_row(ledger)
    assert row["http_calls"] >= 1 and row["prompt_tokens"] > 0
