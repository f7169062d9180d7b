"""The table `gpo reproduce` ends with: per method and benchmark, the mean and the spread over
seeds of the cells' test scores, the paper's number beside it, and whether they agree.

Input is one `CellOutcome` per (method, task, seed) cell, read from the cell's `summary.json`.
For each method and seed the benchmark scores are `benchmarks.aggregate` of that seed's task
scores (BBH and MMLU: the unweighted mean over their tasks, as the paper reports them); a seed
counts only when every task of the sweep finished for it. Over the counted seeds:

- mean: the arithmetic mean, in percent;
- spread: the sample standard deviation (n - 1 in the denominator; none with a single seed),
  with the lowest and highest seed's value kept in the JSON;
- within: |mean - paper| <= spread, i.e. the paper's number lies within one standard deviation
  of ours (unknown with one seed or no paper number).

A group with fewer tasks than the paper averaged (2 of BBH's 27, say) is marked partial: its
paper number is shown but averages other tasks. Per-task scores follow in a second table (GPO.md
has no per-task numbers). `write_tables` writes `reproduce.md` and `reproduce.json`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks import aggregate
from gpo.paper_tables import BENCHMARK_LABELS, GROUP_SIZES, OPTIMIZER, SCORER, paper_number
from gpo.run_dir import atomic_write_json

MARKDOWN_NAME = "reproduce.md"
JSON_NAME = "reproduce.json"
SPREAD = "sample standard deviation over seeds (n-1)"
WITHIN = "|mean - paper| <= standard deviation"
_ORDER = ("bbh", "lite-bbh", "gsm8k", "mmlu", "wsc", "webnlg")


@dataclass(frozen=True, slots=True)
class CellOutcome:
    """One cell: its coordinates, run directory, status and final test score (0-1)."""

    method: str
    task: str
    seed: int
    path: str
    status: str
    final_test: float | None


@dataclass(frozen=True, slots=True)
class Stat:
    """Mean and spread of one (method, column) over the counted seeds, in percent."""

    values: tuple[float, ...]
    paper: float | None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def within(self) -> bool | None:
        mean, std = self.mean, self.std
        if mean is None or std is None or self.paper is None:
            return None
        return abs(mean - self.paper) <= std

    def to_json(self) -> dict[str, Any]:
        mean, paper = self.mean, self.paper
        return {
            "seeds": len(self.values),
            "values": [round(v, 4) for v in self.values],
            "mean": None if mean is None else round(mean, 4),
            "std": None if self.std is None else round(self.std, 4),
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "paper": self.paper,
            "difference": None if mean is None or paper is None else round(mean - paper, 4),
            "within": self.within,
        }


def _columns(tasks: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The benchmark columns the sweep's tasks make, and each column's label."""
    groups = aggregate(dict.fromkeys(tasks, 0.0))
    keys = [key for key in _ORDER if key in groups]
    keys += [key for key in groups if key not in keys and ":" not in key and "/" not in key]
    labels = {}
    for key in keys:
        label = BENCHMARK_LABELS.get(key, key)
        present = sum(1 for task in tasks if task.partition("/")[0] == key)
        if key == "lite-bbh":
            present = 4
        expected = GROUP_SIZES.get(key)
        if expected is not None and present < expected:
            label += f" ({present}/{expected} tasks)"
        labels[key] = label
    return keys, labels


def build_table(
    cells: Sequence[CellOutcome], methods: Sequence[str], tasks: Sequence[str], seeds: Sequence[int]
) -> dict[str, Any]:
    """The table as JSON: benchmark rows and per-task rows, each with mean, spread and paper."""
    score = {(c.method, c.task, c.seed): c.final_test for c in cells if c.status == "finished"}
    columns, labels = _columns(tasks)
    rows, task_rows = [], []
    for method in methods:
        by_column: dict[str, list[float]] = {key: [] for key in columns}
        for seed in seeds:
            found = [score.get((method, task, seed)) for task in tasks]
            if any(value is None for value in found):
                continue  # a seed counts only when every task finished for it
            groups = aggregate(
                {t: float(v) for t, v in zip(tasks, found, strict=True) if v is not None}
            )
            for key in columns:
                by_column[key].append(100 * groups[key])
        for key in columns:
            stat = Stat(tuple(by_column[key]), paper_number(method, key))
            rows.append({"method": method, "column": key, "label": labels[key], **stat.to_json()})
        for task in tasks:
            values = [100 * v for s in seeds if (v := score.get((method, task, s))) is not None]
            stat = Stat(tuple(values), None)
            task_rows.append({"method": method, "task": task, **stat.to_json()})
    return {
        "spread": SPREAD,
        "within": WITHIN,
        "paper": f"{SCORER} scorer, {OPTIMIZER} optimizer, test split, mean of 3 runs (GPO.md)",
        "methods": list(methods),
        "tasks": list(tasks),
        "seeds": list(seeds),
        "columns": [{"key": key, "label": labels[key]} for key in columns],
        "rows": rows,
        "task_rows": task_rows,
        "cells": [
            {
                "method": c.method,
                "task": c.task,
                "seed": c.seed,
                "status": c.status,
                "final_test": c.final_test,
                "run_dir": c.path,
            }
            for c in cells
        ],
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ours(row: Mapping[str, Any]) -> str:
    if row["mean"] is None:
        return "-"
    spread = "" if row["std"] is None else f" ± {row['std']:.2f}"
    return f"{row['mean']:.2f}{spread} (n={row['seeds']})"


def _within(row: Mapping[str, Any]) -> str:
    return {True: "yes", False: "no", None: "-"}[row["within"]]


def _grid(table: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the benchmark table: per column ours, the paper's, within."""
    header = ["method"]
    for column in table["columns"]:
        header += [column["label"], "paper", "within"]
    lines = []
    for method in table["methods"]:
        line = [method]
        for column in table["columns"]:
            row = next(
                r for r in table["rows"] if r["method"] == method and r["column"] == column["key"]
            )
            line += [_ours(row), _number(row["paper"]), _within(row)]
        lines.append(line)
    return header, lines


def _markdown_rows(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def markdown(table: Mapping[str, Any]) -> str:
    """`reproduce.md`: the benchmark table, the per-task table and every cell's run directory."""
    header, lines = _grid(table)
    out = [
        "# gpo reproduce",
        "",
        f"Test scores in percent: mean ± {table['spread']}; n = seeds counted "
        f"({', '.join(str(s) for s in table['seeds'])} asked). `within`: {table['within']}. "
        f"Paper: {table['paper']}. A partial group averages fewer tasks than the paper's.",
        "",
        *_markdown_rows(header, lines),
        "",
        "## Per task",
        "",
    ]
    task_lines = [
        [r["method"], r["task"], _ours(r), _number(r["min"]), _number(r["max"])]
        for r in table["task_rows"]
    ]
    out += _markdown_rows(["method", "task", "test", "min", "max"], task_lines)
    out += ["", "## Cells", ""]
    cell_lines = [_cell_line(c) for c in table["cells"]]
    out += _markdown_rows(["method", "task", "seed", "status", "test", "run directory"], cell_lines)
    return "\n".join(out) + "\n"


def _cell_line(cell: Mapping[str, Any]) -> list[str]:
    test = None if cell["final_test"] is None else 100 * cell["final_test"]
    seed, status = str(cell["seed"]), cell["status"]
    return [cell["method"], cell["task"], seed, status, _number(test), cell["run_dir"]]


def rich_table(table: Mapping[str, Any]) -> Table:
    """The benchmark table for the terminal."""
    header, lines = _grid(table)
    shown = Table(
        title="test %: mean ± sample std over seeds (n-1); within: |mean - paper| <= std",
        title_justify="left",
    )
    for index, name in enumerate(header):
        shown.add_column(name, justify="left" if index == 0 else "right")
    for line in lines:
        shown.add_row(*line)
    return shown


def write_tables(sweep_dir: Path, table: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `reproduce.md` and `reproduce.json` into the sweep directory."""
    md_path, json_path = sweep_dir / MARKDOWN_NAME, sweep_dir / JSON_NAME
    atomic_write_json(json_path, dict(table))
    temporary = md_path.with_name(f".{md_path.name}.tmp")
    temporary.write_text(markdown(table), encoding="utf-8")
    temporary.replace(md_path)
    return md_path, json_path
