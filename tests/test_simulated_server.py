"""The simulated server speaks the OpenAI protocol as vLLM does: shapes, usage, errors, caching."""

from __future__ import annotations

import aiohttp
import numpy as np
import orjson
import pytest

from backends.chat_template import render_chatml
from backends.simulated import (
    OutputLengths,
    SimulatedServer,
    SimulatedServerConfig,
    count_tokens,
    metric_total,
    parse_prometheus,
    workload_from_prompts,
)

FIXED_LENGTH = 24


@pytest.fixture
async def server():
    config = SimulatedServerConfig(
        time_scale=1000.0, output_lengths=OutputLengths("fixed", mean=FIXED_LENGTH)
    )
    async with SimulatedServer(config) as running:
        yield running


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(client: aiohttp.ClientSession, url: str, payload: dict) -> tuple[int, dict]:
    async with client.post(url, data=orjson.dumps(payload)) as response:
        return response.status, orjson.loads(await response.read())


async def metrics(client: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    async with client.get(f"{base_url}/metrics") as response:
        return parse_prometheus(await response.text())


async def test_url_is_loopback_with_a_real_port(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.port > 0


async def test_prompt_list_with_n_is_prompt_major_and_usage_sums(server, client):
    prompts = ["First prompt about apples.", "Second prompt, quite different.", "Third."]
    payload = {"prompt": prompts, "n": 2, "max_tokens": 64, "temperature": 0.8, "seed": 7}
    status, body = await post(client, f"{server.url}/v1/completions", payload)
    assert status == 200
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == list(range(6))
    for position, prompt in enumerate(prompts):
        _, single = await post(
            client, f"{server.url}/v1/completions", {**payload, "prompt": prompt}
        )
        expected = [c["text"] for c in single["choices"]]
        got = [c["text"] for c in body["choices"][2 * position : 2 * position + 2]]
        assert got == expected
    texts = [c["text"] for c in body["choices"]]
    assert body["usage"]["prompt_tokens"] == sum(count_tokens(p) for p in prompts)
    assert body["usage"]["completion_tokens"] == sum(count_tokens(t) for t in texts)
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert all(count_tokens(t) == FIXED_LENGTH for t in texts)
    assert all(c["finish_reason"] == "stop" for c in body["choices"])


async def test_greedy_is_deterministic_and_sampling_varies_by_seed_and_choice(server, client):
    url = f"{server.url}/v1/completions"
    greedy = {"prompt": "Tell me something.", "n": 3, "max_tokens": 64, "temperature": 0}
    _, first = await post(client, url, greedy)
    _, again = await post(client, url, {**greedy, "seed": 99})
    greedy_texts = {c["text"] for c in first["choices"]}
    assert len(greedy_texts) == 1
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in first["choices"]]
    sampled = {**greedy, "temperature": 1.0, "n": 4, "seed": 1}
    _, one = await post(client, url, sampled)
    _, same = await post(client, url, sampled)
    _, other_seed = await post(client, url, {**sampled, "seed": 2})
    texts = [c["text"] for c in one["choices"]]
    assert texts == [c["text"] for c in same["choices"]]
    assert len(set(texts)) > 1
    assert texts != [c["text"] for c in other_seed["choices"]]


async def test_max_tokens_truncates_with_length_and_stop_cuts(server, client):
    url = f"{server.url}/v1/completions"
    _, capped = await post(client, url, {"prompt": "Hello there.", "max_tokens": 5})
    choice = capped["choices"][0]
    assert choice["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 5 == count_tokens(choice["text"])
    _, full = await post(client, url, {"prompt": "Hello there.", "max_tokens": 64})
    text = full["choices"][0]["text"]
    assert "So the answer is" in text
    _, stopped = await post(
        client, url, {"prompt": "Hello there.", "max_tokens": 64, "stop": ["So the answer"]}
    )
    assert stopped["choices"][0]["text"] == text[: text.index("So the answer")]
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_chat_costs_and_answers_like_the_rendered_completion(server, client):
    messages = [
        ("system", "You are a helpful assistant."),
        ("user", "Which is larger, (A) 3 or (B) 5?\nLet's think step by step."),
    ]
    chat_payload = {
        "model": server.config.model,
        "messages": [{"role": r, "content": c} for r, c in messages],
        "max_tokens": 64,
        "temperature": 0,
    }
    status, chat = await post(client, f"{server.url}/v1/chat/completions", chat_payload)
    assert status == 200
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    completion_payload = {"prompt": render_chatml(messages), "max_tokens": 64, "temperature": 0}
    _, plain = await post(client, f"{server.url}/v1/completions", completion_payload)
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    chat_details = chat["usage"].pop("prompt_tokens_details")
    plain_details = plain["usage"].pop("prompt_tokens_details")
    assert chat["usage"] == plain["usage"]
    assert chat["usage"]["prompt_tokens"] == count_tokens(render_chatml(messages))
    # The same rendered prompt a second time: its prefix cache serves it, and usage says so in
    # OpenAI's form (all full blocks; vLLM recomputes at least the last token).
    prompt_tokens = plain["usage"]["prompt_tokens"]
    assert chat_details == {"cached_tokens": 0}
    block = server.config.block_size
    assert plain_details["cached_tokens"] >= (prompt_tokens - 1) // block * block > 0
    assert plain_details["cached_tokens"] < prompt_tokens


async def test_models_health_and_metrics(server, client):
    async with client.get(f"{server.url}/health") as response:
        assert response.status == 200
    async with client.get(f"{server.url}/v1/models") as response:
        models = await response.json()
    assert models["data"][0]["id"] == server.config.model
    assert models["data"][0]["max_model_len"] == server.config.max_model_len
    await post(client, f"{server.url}/v1/completions", {"prompt": ["a", "b"], "max_tokens": 64})
    samples = await metrics(client, server.url)
    assert metric_total(samples, "sim_sequences_served_total") == 2
    assert metric_total(samples, "sim_completion_tokens_served_total") == 2 * FIXED_LENGTH
    assert metric_total(samples, "vllm:generation_tokens_total") == 2 * FIXED_LENGTH
    assert metric_total(samples, "vllm:num_requests_running") == 0
    assert metric_total(samples, "vllm:num_requests_waiting") == 0
    assert metric_total(samples, "sim_http_requests_total", endpoint="/v1/completions") == 1
    assert metric_total(samples, "sim_http_requests_total", endpoint="/health") == 1


@pytest.mark.parametrize(
    ("endpoint", "payload", "status", "needle"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "does not exist"),
        ("/v1/chat/completions", {"model": "nope", "messages": []}, 404, "does not exist"),
        (
            "/v1/completions",
            {"prompt": "x" * 20000, "max_tokens": 16},
            400,
            "maximum context length",
        ),
        ("/v1/completions", {"prompt": "x", "max_tokens": 5000}, 400, "maximum context length"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n must be"),
        ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ],
)
async def test_bad_requests_get_openai_style_errors(
    server, client, endpoint, payload, status, needle
):
    got_status, body = await post(client, f"{server.url}{endpoint}", payload)
    assert got_status == status
    assert needle in body["error"]["message"]
    assert body["error"]["code"] == status


async def test_body_that_is_not_json_is_a_400(server, client):
    async with client.post(f"{server.url}/v1/completions", data=b"{not json") as response:
        assert response.status == 400
        body = await response.json()
    assert "not valid JSON" in body["error"]["message"]


async def test_prefix_cache_hit_rate_matches_block_arithmetic(server, client):
    shared = "You are a careful grader of answers. " * 40
    prompts = [f"{shared}Question {i}: is {i} even?" for i in range(20)]
    await post(client, f"{server.url}/v1/completions", {"prompt": prompts, "max_tokens": 32})
    samples = await metrics(client, server.url)
    queries = metric_total(samples, "vllm:prefix_cache_queries_total")
    hits = metric_total(samples, "vllm:prefix_cache_hits_total")
    expected = workload_from_prompts(server.config, prompts, [1] * len(prompts))
    assert queries == sum(item[0] for item in expected)
    assert hits == sum(item[2] for item in expected)
    shared_blocks = count_tokens(shared) // server.config.block_size
    assert hits >= 19 * shared_blocks * server.config.block_size
    assert metric_total(samples, "vllm:gpu_prefix_cache_hit_rate") == pytest.approx(hits / queries)
    assert hits / queries > 0.8


async def test_next_turn_hits_the_blocks_its_previous_answer_filled(client):
    config = SimulatedServerConfig(time_scale=1000.0, output_lengths=OutputLengths("fixed", 100))
    first = "Explain, step by step, whether the path returns to the start. " * 8
    second_turn = "<|im_end|>\n<|im_start|>user\nSo the answer is?<|im_end|>\n"
    async with SimulatedServer(config) as server:
        url = f"{server.url}/v1/completions"
        _, body = await post(client, url, {"prompt": first, "max_tokens": 256})
        answer = body["choices"][0]["text"]
        before = metric_total(await metrics(client, server.url), "vllm:prefix_cache_hits_total")
        second = f"{first}{answer}{second_turn}"
        await post(client, url, {"prompt": second, "max_tokens": 8})
        after = metric_total(await metrics(client, server.url), "vllm:prefix_cache_hits_total")
    expected = workload_from_prompts(config, [first, second], [1, 1], [answer, ""])
    assert after - before == expected[1][2]
    # Cached well past the first prompt: every full block of prompt + answer but the last token.
    block = config.block_size
    assert count_tokens(answer) >= 90
    assert after - before == (count_tokens(first + answer) - 1) // block * block


async def test_embeddings_are_deterministic_unit_vectors_that_track_overlap(server, client):
    texts = [
        "Let's think step by step about the answer.",
        "Let's think step by step about the final answer.",
        "Purple elephants dance quietly under moonlight.",
    ]
    payload = {"input": texts, "model": server.config.model}
    status, body = await post(client, f"{server.url}/v1/embeddings", payload)
    assert status == 200
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    _, again = await post(client, f"{server.url}/v1/embeddings", payload)
    assert [item["embedding"] for item in again["data"]] == vectors.tolist()
    assert body["usage"]["prompt_tokens"] == sum(count_tokens(t) for t in texts)


async def test_api_key_is_required_when_configured(client):
    config = SimulatedServerConfig(zero_latency=True, api_key="sk-test-123")
    async with SimulatedServer(config) as keyed:
        url = f"{keyed.url}/v1/completions"
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with client.post(url, json={"prompt": "x"}, headers=headers) as response:
                assert response.status == 401
                body = await response.json()
                assert body["error"]["code"] == "invalid_api_key"
                assert "sk-test-123" not in body["error"]["message"]
        good = {"Authorization": "Bearer sk-test-123"}
        async with client.post(url, json={"prompt": "x"}, headers=good) as response:
            assert response.status == 200
        async with client.get(f"{keyed.url}/health") as response:
            assert response.status == 200
    assert "sk-test-123" not in repr(config)


async def test_zero_latency_mode_answers_large_prompt_lists(client):
    config = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(config) as fast:
        prompts = [f"Prompt number {i}." for i in range(2000)]
        payload = {"prompt": prompts, "max_tokens": 8, "temperature": 0}
        status, body = await post(client, f"{fast.url}/v1/completions", payload)
        assert status == 200
        assert len(body["choices"]) == 2000
        assert body["usage"]["completion_tokens"] == 8 * 2000
        samples = await metrics(client, fast.url)
    assert metric_total(samples, "sim_sequences_served_total") == 2000
    assert metric_total(samples, "vllm:prompt_tokens_total") == sum(
        count_tokens(p) for p in prompts
    )
