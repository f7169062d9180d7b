"""What a report reads from a run directory: per task the trajectory as recorded, and the ledgers.

`load_run` reads a finished run from its result files and a run still in progress (or stopped)
from its per-task logs, so a report can be written at any time. The step numbers kept here are
the run directory's (trajectory numbering: the initial prompt is step -1); reports show them
with `gpo.trajectory.shown_step` (the initial prompt is step 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from gpo.eval_job import RECORDS_FILE
from gpo.results import TaskResult
from gpo.run_dir import CONFIG_FILE, RunDirectory


@dataclass(frozen=True, slots=True)
class TaskCurve:
    """One task of one run: the trajectory as recorded, step by step."""

    task: str
    steps: tuple[int, ...]
    dev_scores: tuple[float, ...]
    word_budgets: tuple[int | None, ...]
    result: TaskResult | None


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a report needs from one run directory."""

    path: Path
    method: str
    status: str
    curves: tuple[TaskCurve, ...]
    summary: dict[str, Any] | None
    ledgers: tuple[dict[str, Any], ...]

    @property
    def label(self) -> str:
        return f"{self.method} ({self.path.name})"


def load_run(path: str | Path) -> RunReport:
    """Read the run directory at `path` (a clear error names it when it is not one)."""
    if not (Path(path) / CONFIG_FILE).is_file() and (Path(path) / RECORDS_FILE).is_file():
        raise ConfigError(
            f"RUN_DIR {path}: an evaluation folder (gpo eval) has no optimization curve; "
            f"see its answers and scores with: gpo report --html {path}"
        )
    run_dir = RunDirectory.open_existing(path, flag="gpo report")
    config = run_dir.read_config()
    state = run_dir.read_state()
    method = str(config.get("optimizer", {}).get("method", "?"))
    task_names = list(config.get("tasks") or run_dir.task_names())
    curves = []
    for name in task_names:
        recorder = run_dir.task(name)
        rows = recorder.read_log("trajectory")
        stored = recorder.read_result()
        curves.append(
            TaskCurve(
                task=name,
                steps=tuple(int(row["step"]) for row in rows),
                dev_scores=tuple(float(row["dev_score"]) for row in rows),
                word_budgets=tuple(row.get("word_budget") for row in rows),
                result=TaskResult.from_json(stored) if stored else None,
            )
        )
    ledgers = [*run_dir.earlier_ledgers()]
    current = run_dir.read_ledger()
    if current is not None:
        ledgers.append(current)
    return RunReport(
        path=run_dir.path,
        method=method,
        status=str(state.get("status", "unknown")),
        curves=tuple(curves),
        summary=run_dir.read_summary(),
        ledgers=tuple(ledgers),
    )
