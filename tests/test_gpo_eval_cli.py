"""`gpo eval` end to end against the simulated server: two prompts on bbh/navigate, outputs on
disk, ledger totals, the task list, and the errors a user can make."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import orjson
import pytest

from benchmarks import list_task_names
from tests.gpo_process import answered_server, run_gpo


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with answered_server(50.0) as server:
        yield f"{server.url}/v1"


def gpo(*args: str) -> subprocess.CompletedProcess[str]:
    return run_gpo(*args, timeout=300)


def two_prompt_eval(server_url: str) -> tuple[str, ...]:
    """`gpo eval` of two prompts on 40 test samples of bbh/navigate, output folder left out."""
    return (
        "eval",
        "--task",
        "bbh/navigate",
        "--split",
        "test",
        "--limit",
        "40",
        "--prompt",
        "Let's think step by step.",
        "--prompt",
        "Carefully check each step and give the answer option.",
        "--scorer-url",
        server_url,
        "--scorer-chat-template",
        "chatml",
    )


def test_eval_two_prompts_on_navigate(server_url, tmp_path):
    out = tmp_path / "eval"
    done = gpo(*two_prompt_eval(server_url), "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    rows = summary["rows"]
    assert [row["prompt_index"] for row in rows] == [0, 1]
    assert all(row["samples"] == 40 and row["failed"] == 0 for row in rows)
    assert all(0.0 <= row["score"] <= 1.0 for row in rows)
    records = [orjson.loads(line) for line in (out / "records.jsonl").read_bytes().splitlines()]
    assert len(records) == 80
    assert all(len(r["answers"]) == 2 and r["parsed"] in ("yes", "no", "") for r in records)
    # The mean printed in the summary is the mean of the per-sample records.
    for index in (0, 1):
        scores = [r["score"] for r in records if r["prompt_index"] == index]
        assert abs(sum(scores) / len(scores) - rows[index]["score"]) < 1e-9
    totals = summary["ledger"]["totals"]
    assert totals["requests"] == 160 and totals["prompt_tokens"] > 0
    assert "bbh/navigate" in done.stdout and "tokens" in done.stdout

    again = gpo(
        *two_prompt_eval(server_url),
        "--out",
        str(tmp_path / "again"),
        "--cache",
        str(out / "cache.sqlite"),
    )
    assert again.returncode == 0, again.stderr
    repeat = orjson.loads((tmp_path / "again" / "summary.json").read_bytes())
    assert repeat["ledger"]["totals"]["requests"] == 0
    assert repeat["ledger"]["totals"]["cache_hits"] == 160
    assert [r["score"] for r in repeat["rows"]] == [r["score"] for r in rows]


def test_list_tasks_prints_every_task():
    done = gpo("eval", "--list-tasks")
    assert done.returncode == 0
    names = done.stdout.split()
    assert names == list_task_names() and len(names) == 87


def test_unknown_task_lists_valid_names(server_url, tmp_path):
    done = gpo("eval", "--task", "bbh/navigat", "--scorer-url", server_url, "--out", str(tmp_path))
    assert done.returncode == 2
    assert "bbh/navigate" in done.stderr and "Traceback" not in done.stderr


def test_invalid_flag_value_names_the_flag():
    done = gpo("eval", "--task", "gsm8k", "--scorer-concurrency", "zero")
    assert done.returncode == 2 and "--scorer-concurrency" in done.stderr
