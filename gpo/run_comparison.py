"""What `gpo compare` computes: runs' per-task scores side by side, each against the first run
(the baseline) with a paired bootstrap interval over the samples both scored, and their cost.

A run is an optimize run directory (`gpo optimize`, or a cell of a `gpo reproduce` sweep: its
final prompt's per-sample scores on the split, from `tasks/<task>/scores.jsonl`) or an
evaluation folder (`gpo eval`: its `records.jsonl`; an evaluation of several prompts gives one
column per prompt, labelled NAME#INDEX). The split is "test" by default; "eval" (the dev split)
also works for both kinds. Failed samples have no score and are left out.

Samples are matched by sample id within a task (ids name the split and the sample's position
in it, e.g. "test-32"), so two runs that scored different subsets are compared on the samples
they share, and the count is reported. A column that shares no sample with the baseline on any
task is refused with an error naming both. The statistics are `gpo.paired_bootstrap`'s. Nothing
here prints: `gpo.cli_compare` renders a `Comparison`, and so can a report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.errors import ConfigError
from gpo.paired_bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedDifference,
    paired_bootstrap,
    stratified_paired_bootstrap,
)
from gpo.run_dir import RunDirectory, read_jsonl
from gpo.run_listing import RECORDS_FILE, RunCost, read_row, run_kind

SPLITS = ("test", "eval")
_DEV_PURPOSES = ("initial", "candidates")


@dataclass(frozen=True, slots=True)
class RunScores:
    """One column: a run (or one prompt of an evaluation) and its per-sample scores."""

    label: str
    path: Path
    kind: str  # "optimize" or "eval"
    prompts: Mapping[str, str]  # task -> the prompt scored
    scores: Mapping[str, Mapping[str, float]]  # task -> sample id -> score
    cost: RunCost = field(default_factory=RunCost)
    prompt_index: int | None = None

    def mean(self, task: str) -> float | None:
        values = list(self.scores.get(task, {}).values())
        return float(np.mean(values)) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": str(self.path),
            "kind": self.kind,
            "prompt_index": self.prompt_index,
            "prompts": dict(self.prompts),
            "samples": {task: len(scores) for task, scores in self.scores.items()},
            "cost": self.cost.to_json(),
        }


@dataclass(frozen=True, slots=True)
class TaskComparison:
    """One task: each column's score, and each column against the baseline (None for the
    baseline itself, or with a note when there is nothing to compare)."""

    task: str
    scores: tuple[float | None, ...]
    samples: tuple[int, ...]
    differences: tuple[PairedDifference | None, ...]
    notes: tuple[str | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "scores": list(self.scores),
            "samples": list(self.samples),
            "differences": [d.to_json() if d else None for d in self.differences],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """Columns (the first is the baseline), per-task rows, the bootstrap's settings, and with
    several tasks `overall`: the mean over tasks (a difference over the tasks the two share)."""

    split: str
    runs: tuple[RunScores, ...]
    tasks: tuple[TaskComparison, ...]
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = DEFAULT_SEED
    overall: TaskComparison | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "baseline": self.runs[0].label,
            "bootstrap": {
                "method": "paired percentile bootstrap over shared sample ids",
                "resamples": self.resamples,
                "confidence": self.confidence,
                "seed": self.seed,
            },
            "runs": [run.to_json() for run in self.runs],
            "tasks": [task.to_json() for task in self.tasks],
            "overall": self.overall.to_json() if self.overall else None,
        }


def _usable(record: Mapping[str, Any], split: str) -> bool:
    return (
        record.get("split") == split
        and record.get("failure") is None
        and isinstance(record.get("score"), (int, float))
        and record.get("sample_id") is not None
    )


def optimize_scores(path: Path, split: str) -> RunScores:
    """The final prompt's per-sample scores on `split`, per task of an optimize run."""
    run = RunDirectory.open_existing(path, flag="gpo compare")
    config = run.read_config()
    prompts: dict[str, str] = {}
    scores: dict[str, dict[str, float]] = {}
    for task in config.get("tasks") or run.task_names():
        result = run.task(task).read_result()
        if not result:
            continue  # unfinished: there is no final prompt yet
        final = str(result.get("final_prompt", ""))
        prompts[task] = final
        purposes = ("test",) if split == "test" else _DEV_PURPOSES
        by_sample: dict[str, float] = {}
        for record in run.task(task).read_log("scores"):
            if (
                _usable(record, split)
                and record.get("purpose") in purposes
                and record.get("prompt") == final
            ):
                by_sample.setdefault(str(record["sample_id"]), float(record["score"]))
        scores[task] = by_sample
    return RunScores(_label(path), path, "optimize", prompts, scores)


def eval_scores(path: Path, split: str) -> list[RunScores]:
    """One column per prompt index of an evaluation folder's records on `split`."""
    records = read_jsonl(path / RECORDS_FILE)
    indices = sorted({int(r.get("prompt_index", 0)) for r in records if r.get("split") == split})
    columns = []
    for index in indices or [0]:
        prompts: dict[str, str] = {}
        scores: dict[str, dict[str, float]] = {}
        for record in records:
            if int(record.get("prompt_index", 0)) != index or record.get("split") != split:
                continue
            task = str(record.get("task"))
            prompts.setdefault(task, str(record.get("prompt", "")))
            by_sample = scores.setdefault(task, {})
            if _usable(record, split):
                by_sample.setdefault(str(record["sample_id"]), float(record["score"]))
        label = _label(path) if len(indices) <= 1 else f"{_label(path)}#{index}"
        columns.append(RunScores(label, path, "eval", prompts, scores, prompt_index=index))
    return columns


def _label(path: Path) -> str:
    return path.name or str(path)


def load_columns(path: Path, split: str) -> list[RunScores]:
    """The columns of one run directory, with its cost; a clear error for anything else."""
    if not path.is_dir():
        raise ConfigError(f"{path}: no such run directory")
    kind = run_kind(path)
    if kind == "reproduce":
        raise ConfigError(
            f"{path}: is a gpo reproduce sweep; compare its cells "
            f"({path}/cells/NAME), each an optimize run directory"
        )
    if kind is None:
        raise ConfigError(
            f"{path}: not a gpo run directory (no config.json of gpo optimize, "
            f"no {RECORDS_FILE} of gpo eval)"
        )
    found = [optimize_scores(path, split)] if kind == "optimize" else eval_scores(path, split)
    cost = read_row(path).cost
    return [
        RunScores(c.label, c.path, c.kind, c.prompts, c.scores, cost, c.prompt_index) for c in found
    ]


def _unique_labels(columns: Sequence[RunScores]) -> list[RunScores]:
    """Columns whose labels collide (same folder name) are labelled by their full path."""
    labels = [c.label for c in columns]
    renamed = []
    for column in columns:
        if labels.count(column.label) > 1:
            suffix = f"#{column.prompt_index}" if "#" in column.label else ""
            column = RunScores(
                f"{column.path}{suffix}",
                column.path,
                column.kind,
                column.prompts,
                column.scores,
                column.cost,
                column.prompt_index,
            )
        renamed.append(column)
    return renamed


def compare_task(
    task: str, columns: Sequence[RunScores], resamples: int, confidence: float, seed: int
) -> TaskComparison:
    """One task's row: scores, and each column against the first on their shared samples."""
    baseline = columns[0].scores.get(task, {})
    differences: list[PairedDifference | None] = [None]
    notes: list[str | None] = [None if baseline else "no scored sample"]
    for column in columns[1:]:
        other = column.scores.get(task, {})
        shared = sorted(set(baseline) & set(other))
        if not other:
            differences.append(None)
            notes.append("no scored sample")
        elif not shared:
            differences.append(None)
            notes.append("no sample shared with the baseline")
        else:
            first = np.array([baseline[s] for s in shared])
            second = np.array([other[s] for s in shared])
            differences.append(
                paired_bootstrap(
                    first, second, resamples=resamples, confidence=confidence, seed=seed
                )
            )
            notes.append(None)
    return TaskComparison(
        task=task,
        scores=tuple(column.mean(task) for column in columns),
        samples=tuple(len(column.scores.get(task, {})) for column in columns),
        differences=tuple(differences),
        notes=tuple(notes),
    )


def compare_runs(
    paths: Sequence[str | os.PathLike[str]],
    *,
    split: str = "test",
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Compare the runs at `paths` (the first is the baseline) on `split`, task by task.

    Raises `ConfigError` (one line naming the run) for a path that is not a run directory, when
    fewer than two columns result, or when a column shares no scored sample with the baseline.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    columns = _unique_labels([c for path in paths for c in load_columns(Path(path), split)])
    if len(columns) < 2:
        raise ConfigError("name at least two runs (or an evaluation of two prompts)")
    tasks = list(dict.fromkeys(task for column in columns for task in column.scores))
    rows = tuple(compare_task(t, columns, resamples, confidence, seed) for t in tasks)
    for index, column in enumerate(columns[1:], start=1):
        if not any(row.differences[index] for row in rows):
            raise ConfigError(
                f"{column.label} and the baseline {columns[0].label} share no "
                f"scored {split} sample of any task ({_coverage(columns[0])} vs "
                f"{_coverage(column)}); compare runs of the same tasks on the same split"
            )
    overall = (
        compare_overall(tasks, columns, resamples, confidence, seed) if len(tasks) > 1 else None
    )
    return Comparison(split, tuple(columns), rows, resamples, confidence, seed, overall)


def _shared_pairs(
    tasks: Sequence[str], baseline: RunScores, other: RunScores
) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for task in tasks:
        first, second = baseline.scores.get(task, {}), other.scores.get(task, {})
        shared = sorted(set(first) & set(second))
        if shared:
            pairs.append(
                (np.array([first[s] for s in shared]), np.array([second[s] for s in shared]))
            )
    return pairs


def compare_overall(
    tasks: Sequence[str], columns: Sequence[RunScores], resamples: int, confidence: float, seed: int
) -> TaskComparison:
    """The "mean over tasks" row: each column's mean of its task scores, and each column
    against the baseline over the tasks both scored (a stratified paired bootstrap)."""
    differences: list[PairedDifference | None] = [None]
    notes: list[str | None] = [None]
    for column in columns[1:]:
        pairs = _shared_pairs(tasks, columns[0], column)
        differences.append(
            stratified_paired_bootstrap(
                pairs, resamples=resamples, confidence=confidence, seed=seed
            )
            if pairs
            else None
        )
        shared = len(pairs)
        notes.append(f"over {shared} of {len(tasks)} tasks" if shared < len(tasks) else None)
    scores = []
    for column in columns:
        means = [m for m in (column.mean(task) for task in tasks) if m is not None]
        scores.append(float(np.mean(means)) if means else None)
    return TaskComparison(
        task=f"mean over {len(tasks)} tasks",
        scores=tuple(scores),
        samples=tuple(sum(len(c.scores.get(t, {})) for t in tasks) for c in columns),
        differences=tuple(differences),
        notes=tuple(notes),
    )


def _coverage(column: RunScores) -> str:
    parts = [f"{task}: {len(scores)}" for task, scores in column.scores.items()]
    return ", ".join(parts) if parts else "no scored samples"
