"""`--json` of `gpo optimize` and `gpo eval`: the final summary as one JSON object on stdout.

The fields are listed here and in docs/json-output.md.

With `--json`, stdout holds exactly one line, one JSON object, written when the command ends
with a result (exit 0, 3 stopped by a budget, 4 samples failed, 130/143 interrupted); the human
summary and the progress go to stderr. A usage error (exit 2) writes its one error line on stderr
and nothing on stdout. Scores are fractions in [0, 1]; a score that does not exist is null.

Fields of both commands:

- `command`: "optimize" or "eval"; `status` (below); `exit_code`: the process's exit status.
- `cost`: `calls` (sequences the models generated), `http_calls`, `cache_hits` (answered from
  the cache, free), `prompt_tokens`, `completion_tokens`, `total_tokens`,
  `cached_prompt_tokens` (of the prompt tokens, those the provider served from its prompt cache,
  billed at the cached-input price), `reasoning_tokens` (of the completion tokens, hidden
  reasoning, billed as output), `batch_prompt_tokens` and `batch_completion_tokens` (sent
  through a Batch API, billed at its price), `usd` (0.0 when no
  model is priced), `unpriced_models`, and `by_phase`: per ledger phase ("scoring",
  "optimizing", ...) the same counts and `usd` (token prices only; a GPU-hour price is charged
  on wall time and appears in the total `usd` alone).
- `wall_time_s`: seconds this command ran.

`gpo optimize` adds `status` ("finished", "stopped" by a budget, "interrupted"), `run_dir`,
`method`, `tasks` (per task: `task`, `status`, `stop_reason`, `initial_prompt`, `final_prompt`,
`final_step` (-1 is the initial prompt), `initial_dev`, `final_dev`, `initial_test`,
`final_test`, `steps_done`, `steps_total`, `trajectory` [{`step`, `prompt`, `dev_score`}],
`word_budgets`, `test_by_step`, `wall_time_s`), `groups` (`initial_dev`, `final_dev`,
`initial_test`, `final_test`: group means as the paper reports them), `improvement_points` (mean
test gain in points), `improvement_per_usd`, `improvement_per_mtok`, and `cost.sessions` (the
run's sessions; cost covers them all).

`gpo eval` adds `status` ("finished", "stopped_by_budget", "some_failed", "all_failed",
"interrupted"), `out_dir`, `rows` (per task, split and prompt: `task`, `split`, `prompt_index`,
`prompt`, `score` (null when no sample was scored), `samples`, `answered`, `failed`), `groups`
(per split, the group means), `samples`, `failures`, `stopped_by_budget` (the reason, or null).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

_COUNTS = (
    "http_calls",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "batch_prompt_tokens",
    "batch_completion_tokens",
)


def phase_costs(ledgers: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ledger phase, summed over the rows (models) of every ledger snapshot."""
    phases: dict[str, dict[str, Any]] = {}
    for ledger in ledgers:
        for row in ledger.get("rows", []):
            entry = phases.setdefault(
                str(row.get("phase", "")),
                {"calls": 0, **{name: 0 for name in _COUNTS}, "total_tokens": 0, "usd": 0.0},
            )
            entry["calls"] += int(row.get("requests", 0) or 0)
            for name in _COUNTS:
                entry[name] += int(row.get(name, 0) or 0)
            entry["total_tokens"] = entry["prompt_tokens"] + entry["completion_tokens"]
            entry["usd"] = round(entry["usd"] + float(row.get("cost_usd", 0.0) or 0.0), 6)
    return phases


def cost_block(totals: Mapping[str, Any], ledgers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `cost` object from run totals (or a ledger's totals) and the ledgers' rows."""
    return {
        "calls": int(totals.get("requests", 0) or 0),
        **{name: int(totals.get(name, 0) or 0) for name in _COUNTS},
        "total_tokens": int(totals.get("total_tokens", 0) or 0),
        "usd": float(totals.get("cost_usd", 0.0) or 0.0),
        "unpriced_models": list(totals.get("unpriced_models") or []),
        "by_phase": phase_costs(ledgers),
    }


def optimize_json(
    summary: Mapping[str, Any],
    run_dir: Path,
    exit_code: int,
    earlier_ledgers: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The `gpo optimize --json` object of a run that produced a summary."""
    totals = summary.get("run_totals", {})
    ledgers = [*earlier_ledgers, summary.get("session_ledger", {})]
    cost = cost_block(totals, ledgers)
    cost["sessions"] = int(totals.get("sessions", 1) or 1)
    return {
        "command": "optimize",
        "status": summary["status"],
        "exit_code": exit_code,
        "run_dir": str(run_dir),
        "method": summary.get("method"),
        "tasks": list(summary.get("tasks", [])),
        "groups": summary.get("groups", {}),
        "improvement_points": summary.get("improvement_points"),
        "improvement_per_usd": summary.get("improvement_per_usd"),
        "improvement_per_mtok": summary.get("improvement_per_mtok"),
        "cost": cost,
        "wall_time_s": summary.get("wall_time_s"),
    }


def eval_json(summary: Mapping[str, Any], out_dir: Path, exit_code: int) -> dict[str, Any]:
    """The `gpo eval --json` object of an evaluation that produced a summary."""
    ledger = summary.get("ledger", {})
    rows = [
        {**row, "score": row["score"] if row.get("answered") else None}
        for row in summary.get("rows", [])
    ]
    return {
        "command": "eval",
        "status": summary["status"],
        "exit_code": exit_code,
        "out_dir": str(out_dir),
        "rows": rows,
        "groups": summary.get("groups", {}),
        "samples": summary.get("samples"),
        "failures": summary.get("failures"),
        "stopped_by_budget": summary.get("stopped_by_budget"),
        "cost": cost_block(ledger.get("totals", {}), [ledger]),
        "wall_time_s": ledger.get("wall_time_s"),
    }


def interrupted_json(command: str, where: Path | None, exit_code: int) -> dict[str, Any]:
    """The object of a run stopped by Ctrl-C or SIGTERM: where its saved work is."""
    key = "out_dir" if command == "eval" else "run_dir"
    return {
        "command": command,
        "status": "interrupted",
        "exit_code": exit_code,
        key: None if where is None else str(where),
    }


def write_json(payload: Mapping[str, Any]) -> None:
    """One JSON object, one line, on stdout."""
    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    sys.stdout.flush()
