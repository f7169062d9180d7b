"""Issue 17's bar against the real llama-cpp-python server given as a URL (`--scorer-url`).

llama-cpp-python 0.3.x answers a prompt list of more than one with HTTP 500 (an `assert
len(body.prompt) <= 1` inside it) and runs one request at a time. Given by URL it is recognised
(`owned_by: "me"`), so `gpo eval --completion` sends no list, uses a window of 1 and fails no
sample; an engine that is not told (no start-up probe) sends one list, splits it when refused,
says so once and sends no further list. Gated like tests/test_local_model.py by
GPO_SKIP_REAL_MODEL.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import orjson
import pytest

from backends.llamacpp import EmbeddedModelServer
from backends.protocol import Completion, Request, SamplingParams
from engine.endpoint_spec import EndpointSpec, EngineSetSpec
from gpo.endpoints import open_engines
from tests.gpo_process import run_gpo

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        os.environ.get("GPO_SKIP_REAL_MODEL") == "1", reason="GPO_SKIP_REAL_MODEL=1"
    ),
]
SAMPLES = 6


@pytest.fixture(scope="module")
def llama_server() -> Iterator[EmbeddedModelServer]:
    # As `gpo serve` starts it; its own probe is off so nothing but the test talks to it.
    with EmbeddedModelServer(probe_capabilities=False) as server:
        yield server


def test_gpo_eval_completion_by_url_fails_no_sample_and_sends_no_list(
    llama_server, tmp_path
) -> None:
    out = tmp_path / "eval"
    done = run_gpo(
        "eval", "--task", "bbh/navigate", "--split", "test", "--limit", str(SAMPLES),
        "--completion", "--max-tokens", "8", "--prompt", "Answer yes or no.",
        "--scorer-url", llama_server.url, "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["failures"] == 0 and summary["samples"] == SAMPLES
    totals = summary["ledger"]["totals"]
    assert totals["http_calls"] == SAMPLES  # one call per sample: no list, no retry
    assert totals["retries"] == 0
    assert summary["engine"]["prompt_lists"] is False
    assert summary["engine"]["window"] == 1
    assert done.stderr.count("llama-cpp-python: window 1, no prompt lists") == 1


async def test_an_engine_not_told_splits_the_refused_list_once(llama_server, caplog) -> None:
    caplog.set_level(logging.WARNING)
    spec = EndpointSpec(
        role="scorer",
        urls=(llama_server.url,),
        model=llama_server.model_name,
        probe=False,  # nothing discovered: the engine starts out sending lists
        batch_size=4,
    )
    async with open_engines(EngineSetSpec((spec,))) as engines:
        engine = engines["scorer"]
        sizes: list[int] = []
        complete = engine.backend.complete

        async def counted(prompts, params):  # type: ignore[no-untyped-def]
            sizes.append(len(prompts))
            return await complete(prompts, params)

        engine.backend.complete = counted  # type: ignore[method-assign]
        requests = [
            Request(prompt=f"Count: {i},", params=SamplingParams(max_tokens=2)) for i in range(8)
        ]
        answers = await engine.generate_many(requests)
    assert all(isinstance(answer, Completion) for answer in answers)
    assert sizes.count(1) == 8 and len(sizes) <= 8 + 2  # a list or two refused, never retried
    assert not engine.prompt_lists.enabled
    notices = [r for r in caplog.records if "does not take prompt lists" in r.getMessage()]
    assert len(notices) == 1
