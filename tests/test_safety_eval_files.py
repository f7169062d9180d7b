"""`gpo eval` says when samples failed, and never replaces files it was not asked to replace.

Each case runs the `gpo` CLI as a subprocess against a simulated server:

- samples that failed (a persistent 5xx, malformed JSON, a 1 MB prompt over the context length)
  end with exit status 4 and a line saying how many failed and why, never `score 0.00` and 0;
- `--out` holding an optimize run directory is refused (its `summary.json` kept), and `--out`
  holding an earlier evaluation is refused unless `--overwrite` is given;
- `--cache` naming a file that is not a gpo cache (a text file, another program's SQLite
  database) is refused and the file left exactly as it was: not renamed, not written.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.simulated import FaultRates, SimulatedServerProcess
from tests.gpo_process import answered_server, eval_args, optimize_args, run_gpo

EXIT_SAMPLES_FAILED = 4


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    with answered_server(50.0) as running:
        yield running


def summary_of(out: Path) -> dict[str, Any]:
    return orjson.loads((out / "summary.json").read_bytes())


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a run that exited with status 2 and no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, done.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# -- failed samples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("faults", "kind"),
    [
        (FaultRates(server_error=1.0), "server_error"),
        (FaultRates(malformed_json=1.0), "malformed"),
    ],
)
def test_an_eval_whose_every_sample_failed_exits_4(tmp_path, faults, kind) -> None:
    out = tmp_path / "out"
    with answered_server(50.0, faults=faults) as broken:
        done = run_gpo(*eval_args(broken.url, out, "--max-retries", "0"))
    assert done.returncode == EXIT_SAMPLES_FAILED, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "all 8 samples failed" in done.stderr and kind in done.stderr, done.stderr
    summary = summary_of(out)
    assert summary["status"] == "all_failed"
    assert summary["samples"] == 8 and summary["failures"] == 8


def test_an_eval_with_some_failed_samples_exits_4_and_says_how_many(server, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    huge = "Consider every word here. " * 40_000  # about 1 MB: far beyond the 4096-token context
    prompts.write_bytes(
        orjson.dumps({"prompt": "Think step by step."})
        + b"\n"
        + orjson.dumps({"prompt": huge})
        + b"\n"
    )
    out = tmp_path / "out"
    done = run_gpo(*eval_args(server.url, out, "--prompts-file", str(prompts)))
    assert done.returncode == EXIT_SAMPLES_FAILED, (done.returncode, done.stdout, done.stderr)
    assert "8 of 16 samples failed" in done.stderr and "context_length" in done.stderr
    summary = summary_of(out)
    assert summary["status"] == "some_failed" and summary["failures"] == 8
    rows = {row["prompt"]: row for row in summary["rows"]}
    assert rows["Think step by step."]["failed"] == 0 and rows[huge]["answered"] == 0


def test_optimize_whose_every_scorer_call_failed_does_not_report_success(tmp_path) -> None:
    run_dir = tmp_path / "run"
    with (
        answered_server(50.0) as optimizer,
        answered_server(50.0, faults=FaultRates(server_error=1.0)) as scorer,
    ):
        arguments = optimize_args(f"{scorer.url}/v1", run_dir, "--max-retries", "0")
        arguments[arguments.index("--optimizer-url") + 1] = f"{optimizer.url}/v1"
        done = run_gpo(*arguments)
    assert done.returncode != 0, done.stdout
    assert "could be scored" in error_line(done)
    assert not (run_dir / "summary.json").exists()


# -- the output folder -------------------------------------------------------------------------


def test_eval_into_an_optimize_run_directory_is_refused(server, tmp_path) -> None:
    run_dir = tmp_path / "run"
    optimized = run_gpo(*optimize_args(f"{server.url}/v1", run_dir, steps=1))
    assert optimized.returncode == 0, optimized.stderr
    before = snapshot(run_dir)
    assert "summary.json" in before
    for extra in ([], ["--overwrite"]):
        done = run_gpo(*eval_args(server.url, run_dir, *extra))
        line = error_line(done)
        assert "--out" in line and str(run_dir) in line and "optimize run" in line, line
        assert snapshot(run_dir) == before


def test_a_second_eval_into_one_folder_is_refused_unless_overwrite(server, tmp_path) -> None:
    out = tmp_path / "out"
    first = run_gpo(*eval_args(server.url, out, "--prompt", "First prompt."))
    assert first.returncode == 0, first.stderr
    assert summary_of(out)["status"] == "finished"
    before = snapshot(out)

    second = run_gpo(*eval_args(server.url, out, "--prompt", "Second prompt."))
    line = error_line(second)
    assert "--out" in line and "earlier evaluation" in line and "--overwrite" in line, line
    assert snapshot(out) == before

    again = run_gpo(*eval_args(server.url, out, "--prompt", "First prompt.", "--overwrite"))
    assert again.returncode == 0, again.stderr
    totals = summary_of(out)["ledger"]["totals"]
    assert totals["requests"] == 0 and totals["cache_hits"] == 16  # the folder's cache reused
    assert "--overwrite" in run_gpo("eval", "--help").stdout


def test_default_output_folders_never_collide(tmp_path) -> None:
    from gpo.eval_job import fresh_dir  # here, so the other tests run on code without it

    base = tmp_path / "eval-20250101-000000"
    assert fresh_dir(base) == base
    base.mkdir()
    assert fresh_dir(base) == tmp_path / "eval-20250101-000000-2"
    (tmp_path / "eval-20250101-000000-2").mkdir()
    assert fresh_dir(base) == tmp_path / "eval-20250101-000000-3"


# -- the cache file ------------------------------------------------------------------------------


def test_a_cache_path_holding_a_text_file_is_refused_untouched(server, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a cache\n")
    before = snapshot(tmp_path)
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--cache", str(notes)))
    line = error_line(done)
    assert str(notes) in line and "not a gpo response cache" in line, line
    assert "WARNING" not in done.stderr
    after = snapshot(tmp_path)
    assert after["notes.txt"] == before["notes.txt"]
    assert not [name for name in after if name.startswith("notes.txt") and name != "notes.txt"]


def test_a_cache_path_holding_another_sqlite_database_is_refused_untouched(
    server, tmp_path
) -> None:
    database = tmp_path / "app.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.execute("INSERT INTO users VALUES ('ada')")
    connection.commit()
    connection.close()
    before = database.read_bytes()
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--cache", str(database)))
    line = error_line(done)
    assert str(database) in line and "not a gpo response cache" in line, line
    assert database.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("app.db")) == [
        "app.db"
    ]
