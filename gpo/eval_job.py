"""An evaluation job: given prompts scored on tasks and splits, with outputs written as it goes.

Writes `records.jsonl` (one line per prompt x sample, appended and flushed as each chain ends),
`summary.json` (per task and prompt mean scores, failures, group averages as the paper reports
them, the ledger, a `status`) and returns the summary for the CLI to print.

An output folder holds one evaluation: `check_out_dir` refuses a folder that holds an earlier
evaluation's results unless the caller means to replace them, and always refuses an optimize run
directory, whose `summary.json` an evaluation would otherwise replace.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from backends.errors import ConfigError
from benchmarks import aggregate, load_task
from engine.engine import Engine
from engine.evaluator import EvaluationResult, Evaluator, EvaluatorSettings, SampleRecord
from gpo.run_dir import CONFIG_FILE, STATE_FILE
from gpo.scoring_rules import ScoringRules

RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
BATCH_CHAINS = 50_000  # chains in progress at once under --batch-api (a batch's size)
# What an optimize run directory holds and an evaluation's folder never does.
_OTHER_RUN_FILES = (CONFIG_FILE, STATE_FILE)


@dataclass(frozen=True, slots=True)
class EvalJob:
    """What to evaluate. `prompts_by_task` maps each task to the prompts scored on it."""

    prompts_by_task: Mapping[str, Sequence[str]]
    splits: Sequence[str] = ("test",)
    limit: int | None = None
    data_dir: str | None = None
    settings: EvaluatorSettings = field(default_factory=EvaluatorSettings)
    tasks_at_once: int = 8
    rules: ScoringRules = field(default_factory=ScoringRules)


def check_out_dir(path: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output folder whose files an evaluation would replace without being asked:
    an optimize run directory always, an earlier evaluation's results unless `overwrite`."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory")
    if not path.is_dir():
        return
    other = [name for name in _OTHER_RUN_FILES if (path / name).exists()]
    if other:
        raise ConfigError(
            f"{flag} {path}: holds an optimize run directory ({', '.join(other)}), whose files an "
            f"evaluation would replace; choose another {flag}"
        )
    earlier = [name for name in (RECORDS_FILE, SUMMARY_FILE) if (path / name).exists()]
    if earlier and not overwrite:
        raise ConfigError(
            f"{flag} {path}: holds an earlier evaluation's results ({', '.join(earlier)}); "
            f"pass --overwrite to replace them (its cached answers are reused) or choose another "
            f"{flag}"
        )


def fresh_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`... if it exists (two default folders in one second)."""
    candidate = base
    for copy in range(2, 10_000):
        if not candidate.exists():
            return candidate
        candidate = base.with_name(f"{base.name}-{copy}")
    raise ConfigError(f"--out: {base} and its numbered variants all exist; choose --out")


def ensure_writable_dir(path: Path, flag: str) -> Path:
    """Create `path` and prove it is writable before any paid work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-check"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot write to {path}: {error.strerror or error}") from None
    return path


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so a kill never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    os.replace(temporary, path)


async def run_eval_job(
    job: EvalJob,
    engine: Engine,
    out_dir: Path,
    on_record: Callable[[SampleRecord], None] | None = None,
) -> dict[str, Any]:
    """Run the job through `engine`, writing records and summary into `out_dir`."""
    tasks = {
        name: load_task(name, job.data_dir, **job.rules.task_options())
        for name in job.prompts_by_task
    }
    # Through the Batch API every chain waits for a batch anyway: all of them start at once, so
    # each turn of the evaluation is one batch rather than one per window of chains.
    chains = BATCH_CHAINS if engine.batch is not None else None
    evaluator = Evaluator(engine, job.settings, max_active_chains=chains)
    records_file: BinaryIO
    # One evaluation per output folder (see `check_out_dir`): records are replaced, not doubled.
    with (out_dir / RECORDS_FILE).open("wb") as records_file:

        def record_written(record: SampleRecord) -> None:
            try:
                records_file.write(orjson.dumps(record.to_json()) + b"\n")
                records_file.flush()
            except OSError as error:
                raise ConfigError(
                    f"cannot write {out_dir / RECORDS_FILE}: {error.strerror or error}; "
                    "records written before this and every answer in the cache are kept"
                ) from None
            if on_record is not None:
                on_record(record)

        gate = asyncio.Semaphore(job.tasks_at_once)

        async def evaluate(name: str, split: str) -> EvaluationResult:
            async with gate:
                result = await evaluator.evaluate(
                    tasks[name],
                    list(job.prompts_by_task[name]),
                    split,
                    limit=job.limit,
                    on_record=record_written,
                    keep_records=False,  # they are in records.jsonl; the summary needs scores
                )
                records_file.flush()
                return result

        work = [(name, split) for name in job.prompts_by_task for split in job.splits]
        results = await asyncio.gather(*(evaluate(name, split) for name, split in work))
    summary = summarise(results, engine)
    summary["scoring_rules"] = job.rules.to_json()
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return summary


def summarise(results: Sequence[EvaluationResult], engine: Engine) -> dict[str, Any]:
    rows = []
    best_by_split: dict[str, dict[str, float]] = {}
    for result in results:
        means = result.mean_scores
        answered = (~np.isnan(result.scores)).sum(axis=1)
        for index, prompt in enumerate(result.prompts):
            rows.append(
                {
                    "task": result.task,
                    "split": result.split,
                    "prompt_index": index,
                    "prompt": prompt,
                    "score": float(means[index]),
                    "samples": int(result.scores.shape[1]),
                    "answered": int(answered[index]),
                    "failed": int(result.scores.shape[1] - answered[index]),
                }
            )
        per_split = best_by_split.setdefault(result.split, {})
        for index in range(len(result.prompts)):
            key = result.task if len(result.prompts) == 1 else f"{result.task}#{index}"
            per_split[key] = float(means[index])
    groups = {
        split: aggregate({k: v for k, v in scores.items() if "#" not in k})
        for split, scores in best_by_split.items()
    }
    stopped = next((r.budget_exhausted for r in results if r.budget_exhausted), None)
    samples = sum(int(r.scores.size) for r in results)
    failures = sum(r.failures for r in results)
    return {
        "status": eval_status(samples, failures, stopped),
        "rows": rows,
        "groups": groups,
        "samples": samples,
        "failures": failures,
        "stopped_by_budget": stopped,
        "engine": engine.describe(),
        "ledger": engine.ledger.snapshot(),
    }


def eval_status(samples: int, failures: int, stopped_by_budget: str | None) -> str:
    """ "finished" (every sample scored), "stopped_by_budget", "some_failed" (the means cover
    the scored samples only) or "all_failed" (no sample was scored: there is no result)."""
    if stopped_by_budget:
        return "stopped_by_budget"
    if failures == 0:
        return "finished"
    return "all_failed" if failures >= samples else "some_failed"
