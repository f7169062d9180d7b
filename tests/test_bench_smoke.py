"""Smoke test of bench.py: `--smoke` runs every workload with every contender, tiny and quick.

It checks the shape of what the benchmark prints and writes (every workload, every contender,
every column, parseable JSON and Markdown, a PASS/FAIL line per Bar item), never its times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perf.contenders import CONTENDERS
from perf.peer_env import worker_python
from perf.reports import COLUMNS
from perf.results import summarise_runs
from perf.scales import SCALES
from perf.worker import RunResult
from perf.workloads import build_workloads, candidate_prompts

REPO_ROOT = Path(__file__).resolve().parents[1]
ROW_FIELDS = {
    "contender",
    "wall_s",
    "scored_prompts_per_s",
    "percent_of_limit",
    "time_vs_engine",
    "client_cpu_s",
    "client_cpu_us_per_scored_prompt",
    "http_requests",
    "rate_limited_429",
    "failures",
    "peak_memory_mb",
    "answers_vs_engine",
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, str]:
    out = tmp_path_factory.mktemp("bench")
    json_path, markdown_path = out / "bench.json", out / "bench.md"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench.py"),
            "--smoke",
            "--json",
            str(json_path),
            "--markdown",
            str(markdown_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,  # the peers' own code (bench extra) adds worker starts; a loaded CPU
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, json.loads(json_path.read_text()), markdown_path.read_text()


@pytest.mark.slow
def test_every_workload_has_a_table_with_every_contender(smoke_run: tuple[str, dict, str]) -> None:
    stdout, payload, _ = smoke_run
    workloads = build_workloads(SCALES["smoke"])
    reported = {report["key"]: report for report in payload["workloads"]}
    assert set(reported) == set(workloads)
    for key, workload in workloads.items():
        names = [row["contender"] for row in reported[key]["rows"]]
        # The peers' own code runs where the bench extra is installed (perf.peer_env).
        runnable = [c for c in workload.contenders if worker_python(CONTENDERS[c].extra)]
        assert names == runnable, key
        assert f"== {key}: " in stdout
    header_names = [name for name, _ in COLUMNS]
    for line in stdout.splitlines():
        if line.strip().startswith("contender"):
            assert line.split() == " ".join(header_names).split()


@pytest.mark.slow
def test_rows_carry_every_figure_and_the_engines_answers_match(
    smoke_run: tuple[str, dict, str],
) -> None:
    _, payload, _ = smoke_run
    for report in payload["workloads"]:
        for row in report["rows"]:
            assert set(row) >= ROW_FIELDS, (report["key"], row["contender"])
            assert row["wall_s"] >= 0 and row["client_cpu_s"] >= 0
            if row["contender"] == "engine":
                assert row["answers_vs_engine"] == "reference"
                assert row["failures"] == 0
            else:
                assert row["answers_vs_engine"] == "same", (report["key"], row)


@pytest.mark.slow
def test_bar_and_markdown(smoke_run: tuple[str, dict, str]) -> None:
    stdout, payload, markdown = smoke_run
    names = [line["name"] for line in payload["bar"]]
    for prefix in ("W1", "W2", "W3", "W4", "W5", "W6", "W7"):
        assert any(name.startswith(prefix) for name in names), prefix
    assert "== Bar ==" in stdout
    bar_text = stdout.split("== Bar ==", 1)[1]
    assert all(line.split()[0] in ("PASS", "FAIL", "n/a") for line in bar_text.strip().splitlines())
    assert markdown.count("\n## ") == len(payload["workloads"]) + 1
    assert "| contender |" in markdown


def test_workload_shapes_follow_the_issue() -> None:
    workloads = build_workloads(SCALES["full"], full=True)
    assert workloads["W1"].scored_prompts == 8 * 48
    w2 = workloads["W2"]
    assert len(w2.rounds) == 1 + 18 + 1 and w2.rounds[-1].split == "test"
    assert [w.scored_prompts for k, w in workloads.items() if k.startswith("W5-")] == [
        1_000,
        10_000,
        100_000,
        1_000_000,
    ]
    w7 = workloads["W7"]
    assert len(w7.rounds) == 3 and w7.scored_prompts == 3 * 8 * 48
    assert {"engine-auto", "engine-w16", "engine-w256"} <= set(w7.contenders)
    prompts = candidate_prompts(200)
    assert len(set(prompts)) == 200


def test_extrapolation_scales_totals_from_a_prefix() -> None:
    run = RunResult(
        "sequential", "W1", 100, 25, 2.0, 0.5, 1.0, "test", 50, 0, 50, 0, 0, 0, 50, [None] * 100
    )
    row = summarise_runs("sequential", [run], limit_s=1.0, engine_wall_s=0.5, answers="x")
    assert row.extrapolated
    assert row.wall_s == pytest.approx(8.0)
    assert row.http_requests == 200
    assert row.time_vs_engine == pytest.approx(16.0)
    assert row.percent_of_limit == pytest.approx(12.5)


def test_an_unknown_contender_is_a_clear_error() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench.py"), "--smoke", "--contenders", "lm-evall"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 2, completed.stdout[-2000:]
    assert "--contenders: unknown lm-evall" in completed.stderr
    assert "== W1" not in completed.stdout  # nothing was measured
