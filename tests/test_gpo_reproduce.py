"""`gpo reproduce`: methods x tasks x seeds through one engine set, resumable, ending in the
paper's table.

Against the simulated server (tests/gpo_process.py): the table has a row per method and a column
per benchmark, each the mean and sample standard deviation of the cells' test scores with the
paper's number beside it; the engines are opened once for the whole sweep (one /v1/models probe
per role however many cells); a sweep SIGKILLed once some cells finished resumes with `--resume`
to the same results without sending any answered request again; a sweep-wide token budget stops
it with exit 3 and holds across resumes. The table's arithmetic is also checked on its own, on
outcomes with known numbers.
"""

from __future__ import annotations

import signal
import sqlite3
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.simulated import SimulatedServerProcess, metric_total
from gpo.paper_tables import MAIN_TABLE, paper_number
from gpo.reproduce_table import CellOutcome, build_table, markdown
from tests.gpo_process import answered_server, run_gpo, start_gpo
from tests.waiting import CONNECTION_ERRORS, DEADLINE_S, wait_until

TASKS = ("bbh/navigate", "gsm8k")
METHODS = ("gpo", "ape")
SEEDS = 2


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    with answered_server(10.0) as handle:
        yield handle


def sweep_args(url: str, sweep_dir: Path, *extra: str) -> list[str]:
    """2 methods x 2 tasks x 2 seeds, small sizes, one server as scorer and optimizer."""
    arguments = ["reproduce", "--seeds", str(SEEDS), "--steps", "2", "--candidates", "2"]
    for task in TASKS:
        arguments += ["--task", task]
    for method in METHODS:
        arguments += ["--method", method]
    arguments += ["--train-size", "16", "--dev-size", "8", "--test-size", "8"]
    arguments += ["--scorer-url", url, "--optimizer-url", url, "--scorer-chat-template", "chatml"]
    arguments += ["--sweep-dir", str(sweep_dir), "--no-progress", "--cells-at-once", "3"]
    return [*arguments, *extra]


def cell_summaries(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Cell folder name -> its summary.json."""
    return {
        cell.name: orjson.loads((cell / "summary.json").read_bytes())
        for cell in sorted((sweep_dir / "cells").iterdir())
        if (cell / "summary.json").exists()
    }


def outcome(sweep_dir: Path) -> dict[str, Any]:
    """What a sweep computed: every cell's final prompt and scores, and the table's rows."""
    cells = {}
    for name, summary in cell_summaries(sweep_dir).items():
        (task,) = summary["tasks"]
        cells[name] = {key: task[key] for key in ("final_prompt", "final_dev", "final_test")}
    table = orjson.loads((sweep_dir / "reproduce.json").read_bytes())
    return {"cells": cells, "rows": table["rows"], "task_rows": table["task_rows"]}


def models_probes(server: SimulatedServerProcess) -> float:
    return metric_total(server.metrics(), "sim_http_requests_total", endpoint="/v1/models")


@pytest.fixture(scope="module")
def uninterrupted(server, tmp_path_factory) -> tuple[Path, float, str]:
    """A whole sweep: its directory, the /v1/models probes it made, and its stdout."""
    sweep_dir = tmp_path_factory.mktemp("whole") / "sweep"
    probes_before = models_probes(server)
    done = run_gpo(*sweep_args(f"{server.url}/v1", sweep_dir))
    assert done.returncode == 0, done.stderr
    return sweep_dir, models_probes(server) - probes_before, done.stdout


def test_the_table_has_every_cell_with_mean_spread_and_the_papers_number(uninterrupted) -> None:
    sweep_dir, _, stdout = uninterrupted
    summaries = cell_summaries(sweep_dir)
    assert len(summaries) == len(METHODS) * len(TASKS) * SEEDS
    table = orjson.loads((sweep_dir / "reproduce.json").read_bytes())
    assert [column["key"] for column in table["columns"]] == ["bbh", "gsm8k"]
    assert {(row["method"], row["column"]) for row in table["rows"]} == {
        (method, column) for method in METHODS for column in ("bbh", "gsm8k")
    }
    for row in table["rows"]:
        task = "bbh/navigate" if row["column"] == "bbh" else "gsm8k"
        folder = task.replace("/", "__")
        values = [
            100 * summaries[f"{row['method']}__{folder}__seed{seed}"]["tasks"][0]["final_test"]
            for seed in range(SEEDS)
        ]
        assert row["values"] == pytest.approx(values)
        assert row["mean"] == pytest.approx(statistics.fmean(values), abs=1e-4)
        assert row["std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert (row["min"], row["max"]) == pytest.approx((min(values), max(values)))
        assert row["paper"] == MAIN_TABLE[row["method"]][row["column"]]
        assert row["within"] == (abs(row["mean"] - row["paper"]) <= row["std"])
    assert "BBH (1/27 tasks)" in [column["label"] for column in table["columns"]]
    text = (sweep_dir / "reproduce.md").read_text(encoding="utf-8")
    for method in METHODS:
        assert (
            f"{MAIN_TABLE[method]['gsm8k']:.2f}" in text
            and f"{MAIN_TABLE[method]['gsm8k']:.2f}" in stdout
        )
    assert "sample standard deviation" in text


def test_one_engine_set_serves_every_cell(uninterrupted) -> None:
    sweep_dir, probes, _ = uninterrupted
    # Eight cells, two roles: one start-up probe per role, not one per cell.
    assert probes == 2
    # The spend is the sweep's, in its ledger; the cells' summaries leave it to the sweep.
    ledger = orjson.loads((sweep_dir / "ledger.json").read_bytes())
    assert ledger["totals"]["requests"] > 0
    for summary in cell_summaries(sweep_dir).values():
        assert summary["spend"] == "shared" and summary["cost_usd"] is None
    state = orjson.loads((sweep_dir / "state.json").read_bytes())
    assert state["status"] == "finished" and set(state["cells"].values()) == {"finished"}


def cached_sequences(cache: Path) -> dict[bytes, int]:
    """Request key -> sequences in its answer, for every answer the cache file holds."""
    if not cache.exists():
        return {}
    connection = sqlite3.connect(cache)
    try:
        rows = connection.execute("SELECT key, payload FROM responses").fetchall()
    finally:
        connection.close()
    return {key: len(orjson.loads(payload)[0]) for key, payload in rows}


def served(server: SimulatedServerProcess) -> float:
    return metric_total(server.metrics(), "sim_sequences_served_total")


def busy_sequences(server: SimulatedServerProcess) -> float | None:
    try:
        metrics = server.metrics()
    except CONNECTION_ERRORS:
        return None
    return metric_total(metrics, "vllm:num_requests_running") + metric_total(
        metrics, "vllm:num_requests_waiting"
    )


def test_a_killed_sweep_resumes_to_the_same_table_without_resending(
    server, uninterrupted, tmp_path
) -> None:
    sweep_dir = tmp_path / "sweep"
    process = start_gpo(*sweep_args(f"{server.url}/v1", sweep_dir), capture=False)

    def some_cells_done() -> bool:
        return process.poll() is not None or len(cell_summaries_safe(sweep_dir)) >= 2

    try:
        assert wait_until(some_cells_done, interval_s=0.005), "the sweep made no progress"
        assert process.poll() is None, "the sweep finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=DEADLINE_S)
    assert wait_until(lambda: busy_sequences(server) == 0), "the server stayed busy"
    finished_before = len(cell_summaries_safe(sweep_dir))
    assert 2 <= finished_before < len(METHODS) * len(TASKS) * SEEDS
    before = cached_sequences(sweep_dir / "cache.sqlite")
    served_before = served(server)

    resumed = run_gpo("reproduce", "--resume", str(sweep_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    after = cached_sequences(sweep_dir / "cache.sqlite")
    added = sum(n for key, n in after.items() if key not in before)
    assert before.keys() <= after.keys()
    assert served(server) - served_before == added  # nothing answered was paid for twice
    assert outcome(sweep_dir) == outcome(uninterrupted[0])
    state = orjson.loads((sweep_dir / "state.json").read_bytes())
    assert state["sessions"] == 2 and state["status"] == "finished"


def cell_summaries_safe(sweep_dir: Path) -> dict[str, Any]:
    """Finished cells of a running sweep (none while its folders are being made)."""
    try:
        return cell_summaries(sweep_dir)
    except (OSError, orjson.JSONDecodeError):
        return {}


def test_a_sweep_budget_stops_it_and_holds_across_resumes(server, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    url = f"{server.url}/v1"
    stopped = run_gpo(*sweep_args(url, sweep_dir, "--budget-tokens", "3000"))
    assert stopped.returncode == 3, stopped.stderr
    assert "--resume" in stopped.stderr
    state = orjson.loads((sweep_dir / "state.json").read_bytes())
    assert state["status"] == "stopped"
    served_before = served(server)
    again = run_gpo("reproduce", "--resume", str(sweep_dir), "--no-progress")
    assert again.returncode == 3 and "already spent" in again.stdout, again.stdout
    assert served(server) == served_before


def test_usage_errors_name_the_flag(tmp_path) -> None:
    not_a_sweep = run_gpo("reproduce", "--resume", str(tmp_path))
    assert not_a_sweep.returncode == 2
    assert "--resume" in not_a_sweep.stderr and "not a sweep directory" in not_a_sweep.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    taken = run_gpo("reproduce", "--task", "gsm8k", "--sweep-dir", str(tmp_path / "full"))
    assert taken.returncode == 2 and "--sweep-dir" in taken.stderr


def test_means_and_spreads_over_seeds_with_partial_and_lite_groups() -> None:
    lite = ("bbh/navigate", "bbh/movie_recommendation", "bbh/object_counting", "bbh/word_sorting")
    scores = {0: (0.5, 0.25, 0.75, 0.0), 1: (0.25, 0.25, 0.5, 0.5), 2: (1.0, 0.0, 0.0, 0.0)}
    cells = [
        CellOutcome(method, task, seed, f"/c/{method}{seed}", "finished", scores[seed][index])
        for method in ("gpo", "ape")
        for seed in (0, 1, 2)
        for index, task in enumerate(lite)
    ]
    # ape's seed 2 lost a task: that seed is not counted for ape.
    cells[-1] = CellOutcome("ape", lite[-1], 2, "/c/ape2", "stopped", None)
    table = build_table(cells, ["gpo", "ape"], list(lite), [0, 1, 2])
    labels = {column["key"]: column["label"] for column in table["columns"]}
    assert labels == {"bbh": "BBH (4/27 tasks)", "lite-bbh": "Lite BBH"}
    rows = {(row["method"], row["column"]): row for row in table["rows"]}
    gpo = rows[("gpo", "lite-bbh")]
    assert gpo["values"] == pytest.approx([37.5, 37.5, 25.0])
    assert gpo["mean"] == pytest.approx(33.3333, abs=1e-4)
    assert gpo["std"] == pytest.approx(statistics.stdev([37.5, 37.5, 25.0]), abs=1e-4)
    assert gpo["paper"] == paper_number("gpo", "lite-bbh") == 43.75
    assert gpo["within"] is False  # 43.75 - 33.33 > 7.2
    assert (
        rows[("ape", "lite-bbh")]["paper"] is None and rows[("ape", "lite-bbh")]["within"] is None
    )
    assert rows[("ape", "bbh")]["seeds"] == 2 and rows[("ape", "bbh")]["paper"] == 32.94
    assert rows[("ape", "bbh")]["within"] is False
    one_seed = build_table(cells[:4], ["gpo"], list(lite), [0])
    assert one_seed["rows"][0]["std"] is None and one_seed["rows"][0]["within"] is None
    text = markdown(table)
    assert "| gpo | 31.25 ± 0.00 (n=3) |" not in text and "43.75" in text and "32.94" in text


def test_sigterm_stops_the_sweep_cleanly_with_143(server, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    process = start_gpo(*sweep_args(f"{server.url}/v1", sweep_dir))

    def started() -> bool:
        return process.poll() is not None or (sweep_dir / "cells").is_dir()

    try:
        assert wait_until(started, interval_s=0.005), "the sweep never started a cell"
        assert process.poll() is None, "the sweep finished before it could be stopped"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=DEADLINE_S)
    assert process.returncode == 143, stderr
    assert f"gpo reproduce --resume {sweep_dir}" in stderr
    state = orjson.loads((sweep_dir / "state.json").read_bytes())
    assert state["status"] == "interrupted"
