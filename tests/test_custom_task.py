"""A custom task, as the README's "Custom tasks" tells a user to add one: a folder in the data
folder holding JSON Lines splits of {"input", "target"} is a task (`test.jsonl` marks it), joins
`--list-tasks` and its group, and `gpo eval` and `gpo optimize` run on it end to end against a
simulated server that knows its answers."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from backends.simulated import SimulatedServerConfig, SimulatedServerProcess, start_server_process
from tests.gpo_process import run_gpo

SPLIT_SIZES = {"train": 16, "eval": 8, "test": 8, "format": 3}


def write_custom_task(data_dir: Path) -> dict[str, str]:
    """`mine/arith` in `data_dir`: sums with integer answers; returns question -> answer."""
    rng = random.Random(7)
    folder = data_dir / "mine" / "arith"
    folder.mkdir(parents=True)
    answers: dict[str, str] = {}
    for split, size in SPLIT_SIZES.items():
        lines = []
        for _ in range(size):
            a, b = rng.randint(1, 90), rng.randint(1, 90)
            question = f"What is {a} plus {b}?"
            answers[question] = str(a + b)
            lines.append(json.dumps({"input": question, "target": str(a + b)}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return answers


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The data folder holding the custom task, and a simulated server (URL ending in /v1)."""
    data_dir = tmp_path_factory.mktemp("data")
    answers = write_custom_task(data_dir)
    server: SimulatedServerProcess
    with start_server_process(SimulatedServerConfig(time_scale=50.0), answer_key=answers) as server:
        yield data_dir, f"{server.url}/v1"


def test_a_custom_task_is_listed_and_joins_its_group(custom: tuple[Path, str]) -> None:
    data_dir, _ = custom
    listed = run_gpo("eval", "--list-tasks", "--data-dir", str(data_dir), timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "mine/arith" in listed.stdout.split()


def test_gpo_eval_scores_a_custom_task(custom: tuple[Path, str], tmp_path: Path) -> None:
    data_dir, url = custom
    out = tmp_path / "eval"
    done = run_gpo(
        *("eval", "--data-dir", str(data_dir), "--task", "mine", "--scorer-url", url),
        *("--scorer-chat-template", "chatml", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    (row,) = orjson.loads((out / "summary.json").read_bytes())["rows"]
    assert (row["task"], row["split"], row["answered"]) == ("mine/arith", "test", 8)
    records = [orjson.loads(line) for line in (out / "records.jsonl").read_bytes().splitlines()]
    assert len(records) == 8


def test_gpo_optimize_runs_on_a_custom_task(custom: tuple[Path, str], tmp_path: Path) -> None:
    data_dir, url = custom
    run_dir = tmp_path / "run"
    done = run_gpo(
        *("optimize", "--data-dir", str(data_dir), "--task", "mine/arith", "--steps", "1"),
        *("--candidates", "2", "--scorer-url", url, "--optimizer-url", url),
        *("--scorer-chat-template", "chatml", "--run-dir", str(run_dir), "--no-progress"),
    )
    assert done.returncode == 0, done.stderr
    (task,) = orjson.loads((run_dir / "summary.json").read_bytes())["tasks"]
    assert task["task"] == "mine/arith" and task["status"] == "finished"
    assert task["final_test"] is not None
