"""`gpo eval` and `gpo optimize` end to end on the real embedded model (SmolLM2 on llama.cpp,
pinned with `--local-server llamacpp`: the default would take vLLM where it is installed).

These assert on what a real model run must produce (run directory, records, ledger token counts
that match the server's own `usage`), never on accuracy: the model is tiny. They need
`gpo setup-local` to have run, as the README's test command does.
"""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import orjson
import pytest

from tests.gpo_process import run_gpo

pytestmark = pytest.mark.realmodel


def gpo(*args: str) -> subprocess.CompletedProcess[str]:
    return run_gpo(*args, timeout=900)


async def usage_from_server(
    records: list[dict], max_tokens: int, follow_up: int
) -> tuple[int, int]:
    """Replay every scoring chain's requests straight to a fresh embedded server and add up the
    `usage` it reports: an independent count to hold the ledger against."""
    from backends.llamacpp import EmbeddedModelServer
    from benchmarks import PromptLayout, answer_turn, build_prompt, load_task

    task = load_task("bbh/navigate")
    samples = {s.id: s for s in task.split("test")}
    prompt_tokens = completion_tokens = 0
    async with EmbeddedModelServer() as server, aiohttp.ClientSession() as session:
        for record in records:
            sample = samples[record["sample_id"]]
            messages = list(build_prompt(record["prompt"], sample, PromptLayout()))
            turns = [(messages, max_tokens)]
            follow = answer_turn(task, sample)
            turns.append(
                ([*messages, ("assistant", record["answers"][0]), ("user", follow)], follow_up)
            )
            for conversation, limit in turns:
                body = {
                    "model": server.model_name,
                    "messages": [{"role": r, "content": c} for r, c in conversation],
                    "max_tokens": limit,
                    "temperature": 0.0,
                    "top_p": 1.0,
                    "n": 1,
                }
                async with session.post(f"{server.url}/chat/completions", json=body) as answer:
                    usage = (await answer.json())["usage"]
                prompt_tokens += usage["prompt_tokens"]
                completion_tokens += usage["completion_tokens"]
    return prompt_tokens, completion_tokens


def test_eval_on_the_embedded_model_counts_the_servers_tokens(tmp_path):
    out = tmp_path / "eval"
    done = gpo(
        "eval",
        "--task",
        "bbh/navigate",
        "--split",
        "test",
        "--limit",
        "3",
        "--prompt",
        "Let's think step by step.",
        "--prompt",
        "Answer Yes or No.",
        "--max-tokens",
        "32",
        "--follow-up-max-tokens",
        "8",
        "--out",
        str(out),
        "--local-server",
        "llamacpp",
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    records = [orjson.loads(line) for line in (out / "records.jsonl").read_bytes().splitlines()]
    assert len(records) == 6 and all(r["failure"] is None for r in records)
    assert all(len(r["answers"]) == 2 and r["answers"][0] for r in records)
    totals = summary["ledger"]["totals"]
    assert totals["requests"] == 12 and totals["failures"] == 0
    assert (out / "embedded-server.log").exists()
    expected = asyncio.run(usage_from_server(records, 32, 8))
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == expected


def test_two_step_optimize_on_the_embedded_model(tmp_path):
    run_dir = tmp_path / "run"
    done = gpo(
        "optimize",
        "--task",
        "bbh/navigate",
        "--steps",
        "2",
        "--candidates",
        "2",
        "--train-size",
        "8",
        "--dev-size",
        "3",
        "--test-size",
        "3",
        "--max-tokens",
        "24",
        "--follow-up-max-tokens",
        "8",
        "--optimizer-max-tokens",
        "48",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        "--local-server",
        "llamacpp",
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    text = orjson.dumps(summary).decode()
    assert "bbh/navigate" in text
    ledger = orjson.loads((run_dir / "ledger.json").read_bytes())
    phases = {row["phase"]: row for row in ledger["rows"]}
    assert phases["scoring"]["prompt_tokens"] > 0 and phases["scoring"]["completion_tokens"] > 0
    assert phases["optimizing"]["requests"] >= 2 and phases["optimizing"]["completion_tokens"] > 0
    assert (run_dir / "config.json").exists()
    assert any(run_dir.rglob("trajectory*"))
