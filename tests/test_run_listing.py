"""`gpo runs`' reading of run directories and `compare_runs` on hand-made ones: every status
(a live lock is "running", a dead run that says running is "interrupted"), sweeps, evaluation
folders of several prompts, and directories that are broken in the ways a disk can break them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.errors import ConfigError
from gpo.run_comparison import compare_runs
from gpo.run_listing import _probe, list_runs, lock_held, read_row
from gpo.run_lock import RunLock

TASK = "bbh/navigate"


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))


def write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def totals(requests: int, cost: float = 0.0) -> dict[str, Any]:
    return {"requests": requests, "total_tokens": 10 * requests, "cost_usd": cost}


def optimize_dir(path: Path, status: str, *, created: str = "2026-01-02T10:00:00+00:00") -> Path:
    """An optimize run directory whose final prompt scored test-0..3 as 1, 1, 0, 1."""
    write(
        path / "config.json", {"created": created, "tasks": [TASK], "optimizer": {"method": "ape"}}
    )
    write(path / "state.json", {"status": status, "error": "boom" if status == "failed" else None})
    write(path / "ledger.json", {"rows": [], "totals": totals(12, 0.5), "wall_time_s": 3.0})
    folder = path / "tasks" / "bbh__navigate"
    write(folder / "result.json", {"final_prompt": "final", "final_dev": 0.5, "final_test": 0.75})
    rows = [
        {
            "split": "test",
            "purpose": "test",
            "prompt": prompt,
            "sample_id": f"test-{i}",
            "score": score,
            "failure": None,
        }
        for prompt, scores in (("initial", [0, 0, 0, 0]), ("final", [1, 1, 0, 1]))
        for i, score in enumerate(scores)
    ]
    write_lines(folder / "scores.jsonl", rows)
    return path


def eval_dir(path: Path, prompts: list[list[float]], *, summary: bool = True) -> Path:
    """An evaluation folder: prompt i scored test-j as prompts[i][j]; test-9 failed."""
    records = [
        {
            "task": TASK,
            "split": "test",
            "prompt_index": index,
            "prompt": f"p{index}",
            "sample_id": f"test-{j}",
            "score": score,
            "failure": None,
        }
        for index, scores in enumerate(prompts)
        for j, score in enumerate(scores)
    ]
    records.append(
        {
            "task": TASK,
            "split": "test",
            "prompt_index": 0,
            "prompt": "p0",
            "sample_id": "test-9",
            "score": 0.0,
            "failure": "timeout",
        }
    )
    write_lines(path / "records.jsonl", records)
    write_lines(path / "servers.jsonl", [{"time": "2026-01-01T09:00:00+0000"}])
    if summary:
        rows = [
            {
                "task": TASK,
                "split": "test",
                "prompt_index": i,
                "score": sum(s) / len(s),
                "answered": len(s),
            }
            for i, s in enumerate(prompts)
        ]
        write(
            path / "summary.json",
            {
                "status": "some_failed",
                "rows": rows,
                "failures": 1,
                "ledger": {"totals": totals(4), "wall_time_s": 1.5},
            },
        )
    return path


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("finished", "finished"),
        ("stopped", "budget-stopped"),
        ("failed", "failed"),
        ("interrupted", "interrupted"),
        ("running", "interrupted"),
    ],
)
def test_optimize_statuses(tmp_path: Path, stored: str, shown: str) -> None:
    row = read_row(optimize_dir(tmp_path / "run", stored))
    assert (row.kind, row.status, row.method, row.tasks) == ("optimize", shown, "ape", (TASK,))
    assert (row.dev, row.test, row.cost.calls, row.cost.cost_usd) == (0.5, 0.75, 12, 0.5)
    assert row.started == "2026-01-02T10:00:00+00:00" and row.wall_time_s == 3.0


def test_a_held_lock_is_running_and_reading_never_takes_it(tmp_path: Path) -> None:
    path = optimize_dir(tmp_path / "run", "running")
    assert read_row(path).status == "interrupted"  # nobody holds the lock: it was killed
    with RunLock(path):
        assert lock_held(path)
        assert read_row(path).status == "running"
        assert read_row(path).status == "running"
    assert not lock_held(path)
    RunLock(path).acquire().release()  # looking left the lock free to take


def test_the_fallback_probe_sees_a_held_lock(tmp_path: Path) -> None:
    """Without /proc/locks, a refused shared lock tells a held run.lock from a free one."""
    path = optimize_dir(tmp_path / "run", "running")
    with RunLock(path):
        assert _probe(path / "run.lock")
    assert not _probe(path / "run.lock")


def test_eval_folders_with_and_without_a_summary(tmp_path: Path) -> None:
    done = read_row(eval_dir(tmp_path / "done", [[1, 0, 1]]))
    assert (done.kind, done.status, done.method, done.test) == (
        "eval",
        "some-failed",
        "eval",
        2 / 3,
    )
    assert done.started == "2026-01-01T09:00:00+00:00" and done.cost.calls == 4
    killed = read_row(eval_dir(tmp_path / "killed", [[1, 0]], summary=False))
    assert (killed.status, killed.tasks) == ("unfinished", (TASK,))
    assert "3 records" in (killed.note or "")


def test_sweep_is_one_row(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write(
        sweep / "sweep.json",
        {
            "created": "2026-01-03T00:00:00+00:00",
            "methods": ["gpo", "ape"],
            "tasks": [TASK],
            "seeds": [0, 1],
        },
    )
    write(sweep / "state.json", {"status": "stopped"})
    write(sweep / "ledger.json", {"rows": [], "totals": totals(30), "wall_time_s": 9.0})
    optimize_dir(sweep / "cells" / "gpo__bbh__navigate__seed0", "finished")
    rows = list_runs(tmp_path)
    assert [row.name for row in rows] == ["sweep"]  # its cells are not listed apart
    (row,) = rows
    assert (row.kind, row.status, row.method, row.test) == (
        "reproduce",
        "budget-stopped",
        "gpo+ape",
        0.75,
    )
    assert row.cost.calls == 30


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "state.json").unlink() or (p / "state.json").mkdir(),  # a folder
        lambda p: (p / "config.json").write_bytes(b"[1, 2]"),  # not an object
        lambda p: (p / "ledger.json").write_bytes(b"\xff\xfe torn"),
        lambda p: (p / "tasks" / "bbh__navigate" / "result.json").write_bytes(b"{"),
    ],
)
def test_damaged_directories_are_listed_as_unreadable(tmp_path: Path, damage) -> None:
    path = optimize_dir(tmp_path / "run", "finished")
    damage(path)
    (row,) = list_runs(tmp_path)
    assert (row.name, row.status) == ("run", "unreadable") and row.note


def test_nested_runs_are_found_and_sorted_by_start(tmp_path: Path) -> None:
    optimize_dir(tmp_path / "a" / "late", "finished", created="2026-05-01T00:00:00+00:00")
    optimize_dir(tmp_path / "early", "finished", created="2026-02-01T00:00:00+00:00")
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "file.txt").write_text("not a run")
    rows = list_runs(tmp_path)
    assert [(row.name, row.status) for row in rows] == [
        ("early", "finished"),
        ("late", "finished"),
        ("empty", "foreign"),
    ]
    assert [row.name for row in list_runs(tmp_path / "early")] == ["early"]
    with pytest.raises(ConfigError, match="not a folder"):
        list_runs(tmp_path / "file.txt")


def test_compare_an_eval_of_two_prompts_and_an_optimize_run(tmp_path: Path) -> None:
    evaluation = eval_dir(tmp_path / "ev", [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]])
    optimized = optimize_dir(tmp_path / "opt", "finished")
    comparison = compare_runs([evaluation, optimized], resamples=500)
    assert [run.label for run in comparison.runs] == ["ev#0", "ev#1", "opt"]
    (task,) = comparison.tasks
    assert task.scores == (0.6, 1.0, 0.75)  # the failed sample test-9 is left out
    assert task.samples == (5, 5, 4)
    assert task.differences[0] is None
    assert task.differences[1].n_shared == 5 and task.differences[1].mean == pytest.approx(0.4)
    assert task.differences[2].n_shared == 4  # test-0..3: what the optimize run scored
    assert task.differences[2].mean == pytest.approx((1 + 1 + 0 + 1) / 4 - (1 + 1 + 0 + 0) / 4)
    data = orjson.loads(orjson.dumps(comparison.to_json()))
    assert data["baseline"] == "ev#0" and data["runs"][2]["cost"]["cost_usd"] == 0.5


def test_compare_refuses_what_it_cannot_compare(tmp_path: Path) -> None:
    one = eval_dir(tmp_path / "one", [[1, 0, 1]])
    with pytest.raises(ConfigError, match="at least two runs"):
        compare_runs([one])
    other = tmp_path / "other"
    write_lines(
        other / "records.jsonl",
        [
            {
                "task": TASK,
                "split": "test",
                "prompt_index": 0,
                "prompt": "x",
                "sample_id": "test-50",
                "score": 1.0,
                "failure": None,
            }
        ],
    )
    with pytest.raises(ConfigError, match="share no scored test sample"):
        compare_runs([one, other])
    with pytest.raises(ConfigError, match="split"):
        compare_runs([one, one], split="train")
    sweep = tmp_path / "sweep"
    write(sweep / "sweep.json", {})
    with pytest.raises(ConfigError, match="compare its cells"):
        compare_runs([one, sweep])


def test_compare_over_several_tasks_adds_the_mean_over_tasks(tmp_path: Path) -> None:
    def records(prompt: str, scores: dict[str, list[float]]) -> list[dict[str, Any]]:
        return [
            {
                "task": task,
                "split": "test",
                "prompt_index": 0,
                "prompt": prompt,
                "sample_id": f"test-{j}",
                "score": score,
                "failure": None,
            }
            for task, values in scores.items()
            for j, score in enumerate(values)
        ]

    write_lines(tmp_path / "a" / "records.jsonl", records("a", {"x/one": [0, 0], "x/two": [1] * 6}))
    write_lines(tmp_path / "b" / "records.jsonl", records("b", {"x/one": [1, 1], "x/two": [1] * 6}))
    write_lines(tmp_path / "c" / "records.jsonl", records("c", {"x/two": [0] * 6}))
    comparison = compare_runs([tmp_path / "a", tmp_path / "b", tmp_path / "c"], resamples=200)
    assert [row.task for row in comparison.tasks] == ["x/one", "x/two"]
    overall = comparison.overall
    assert overall is not None and overall.task == "mean over 2 tasks"
    assert overall.scores == (0.5, 1.0, 0.0)
    assert overall.differences[1].mean == pytest.approx(0.5)  # (+1 + 0) / 2 tasks
    assert overall.differences[1].n_shared == 8 and overall.notes[1] is None
    assert overall.differences[2].mean == pytest.approx(-1.0)  # x/two only
    assert overall.notes[2] == "over 1 of 2 tasks"
    assert comparison.tasks[0].notes[2] == "no scored sample"
    assert orjson.loads(orjson.dumps(comparison.to_json()))["overall"]["task"] == overall.task
