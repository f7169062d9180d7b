"""The fault matrix: one scoring evaluation per fault kind and rate, each checked against a
fault-free run of the same evaluation.

    python -m perf.fault_matrix            # 10,000 requests per cell, every kind at both rates
    python -m perf.fault_matrix --quick    # 1,000 requests per cell, shorter timeouts

Each cell starts a simulated vLLM server with one kind of trouble (5xx answers, connection
resets, hangs past the client's timeout, malformed JSON, truncated bodies, slow bodies, 429
storms, restarts mid-run, the server gone for 30 simulated seconds) at a low and a high rate,
and runs a chat-scorer evaluation (two turns per sample: answer, then the answer-pinning turn)
through the real `Engine`, `ResponseCache` and `Evaluator`. The cell passes when

- every (prompt, sample) pair has exactly one record, and each record is either identical to
  the fault-free run's (answers, parsed answer, score) or explicitly marked failed with a
  reason, and the summary's failure count equals the number of marked records (otherwise the
  difference is a *silent loss*);
- the evaluation and the engine's shutdown finish before the cell's deadline (otherwise a
  *hang*);
- retries stay within the engine's bounds: `max_retries` per request for failures and
  `max_rate_limited_retries` for 429s (otherwise an *unbounded retry loop*).

The script prints the matrix as a table and exits with status 1 if any cell fails one of these.
Faults are drawn per HTTP call from a seeded generator, so a run is reproducible up to timing.
The cells and their verdicts live in `perf.fault_cells`, one evaluation in `perf.fault_run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from backends.simulated import metric_total
from benchmarks import Task, load_task
from engine.evaluator import SampleRecord
from perf.fault_cells import (
    FAULT_KINDS,
    HIGH,
    LOW,
    QUICK_SETTINGS,
    REFERENCE_CELL,
    CellOutcome,
    EvaluationRun,
    FaultCell,
    MatrixSettings,
    RecordKey,
    default_cells,
    judge,
    record_map,
)
from perf.fault_run import run_evaluation

logger = logging.getLogger(__name__)

# -- the matrix ----------------------------------------------------------------------------------


def rate_limit_demand(run: EvaluationRun, settings: MatrixSettings) -> float:
    """Tokens per simulated minute the fault-free run charged against a token limit (prompt
    tokens plus each request's max_tokens, as hosted APIs count them)."""
    metrics = run.metrics
    sequences = metric_total(metrics, "sim_sequences_served_total")
    prompt_tokens = metric_total(metrics, "sim_prompt_tokens_served_total")
    charged = prompt_tokens + sequences * (256 + 100) / 2
    simulated_minutes = max(run.wall_s * settings.time_scale / 60.0, 1e-6)
    return charged / simulated_minutes


@dataclass(slots=True)
class Reference:
    """The fault-free run every cell is compared with."""

    run: EvaluationRun
    records: dict[RecordKey, SampleRecord]
    tokens_per_minute: float


async def run_reference(settings: MatrixSettings, task: Task, folder: Path) -> Reference:
    run = await run_evaluation(
        settings, task, REFERENCE_CELL.server_config(settings, 0.0), folder / "reference.sqlite"
    )
    if run.result is None:
        raise RuntimeError(f"the fault-free run failed: {run.error or 'it did not finish'}")
    return Reference(run, record_map(run.result), rate_limit_demand(run, settings))


async def run_cell(
    settings: MatrixSettings, task: Task, cell: FaultCell, reference: Reference, folder: Path
) -> CellOutcome:
    """One cell, judged against the reference."""
    logger.info("cell %s / %s", cell.label, cell.level)
    run = await run_evaluation(
        settings,
        task,
        cell.server_config(settings, reference.tokens_per_minute),
        folder / f"{cell.kind}-{cell.level}.sqlite",
        disruption=cell.disruption,
        events=cell.events,
    )
    return judge(cell, run, reference.records, settings)


async def run_matrix(
    settings: MatrixSettings,
    cells: Sequence[FaultCell],
    *,
    on_cell: Callable[[CellOutcome], None] | None = None,
) -> tuple[CellOutcome, list[CellOutcome]]:
    """The reference cell and every cell's outcome, in order."""
    task = load_task(settings.task, settings.data_dir)
    with tempfile.TemporaryDirectory(prefix="gpo-fault-matrix-") as scratch:
        folder = Path(scratch)
        reference = await run_reference(settings, task, folder)
        reference_outcome = judge(REFERENCE_CELL, reference.run, reference.records, settings)
        if on_cell is not None:
            on_cell(reference_outcome)
        outcomes = []
        for cell in cells:
            outcome = await run_cell(settings, task, cell, reference, folder)
            outcomes.append(outcome)
            if on_cell is not None:
                on_cell(outcome)
    return reference_outcome, outcomes


# -- the command ---------------------------------------------------------------------------------


def _yes_no(value: bool, bad: bool) -> str:
    text = "yes" if value else "no"
    return f"[red]{text}[/red]" if bad else text


def render_table(outcomes: Sequence[CellOutcome], settings: MatrixSettings) -> Any:
    from rich.table import Table

    table = Table(
        title=f"Fault matrix: {settings.requests:,} requests per cell "
        f"({settings.task}, client timeout {settings.request_timeout_s:g} s, "
        f"max {settings.max_retries} retries)"
    )
    for column in (
        "fault",
        "rate",
        "injected",
        "HTTP attempts",
        "retries",
        "identical",
        "marked failed (reasons)",
        "silent loss",
        "hang",
        "scores",
        "wall s",
    ):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        cell = outcome.cell
        if cell.kind == "rate_limit":
            injected = f"{outcome.rate_limited} x 429"
        elif cell.disruption:
            injected = f"{outcome.restarts} {cell.kind}s"
        else:
            injected = str(outcome.faults_injected)
        reasons = ", ".join(f"{kind} {count}" for kind, count in outcome.failure_reasons.items())
        failed = f"{outcome.marked_failed}" + (f" ({reasons})" if reasons else "")
        if outcome.error is not None or outcome.hang:
            scores = f"[red]{outcome.error or 'did not finish'}[/red]"
        elif outcome.silent_losses:
            scores = f"[red]{outcome.silent_losses} lost or changed[/red]"
        elif outcome.marked_failed:
            scores = "identical on answered samples"
        else:
            scores = "identical"
        retries = str(outcome.retries)
        if outcome.unbounded_retries:
            retries += " [red](unbounded)[/red]"
        table.add_row(
            cell.label,
            cell.level or "-",
            injected,
            str(outcome.http_attempts),
            retries,
            f"{outcome.identical}/{outcome.planned_records}",
            failed,
            _yes_no(outcome.silent_losses > 0, outcome.silent_losses > 0),
            _yes_no(outcome.hang, outcome.hang),
            scores,
            f"{outcome.wall_s:.1f}",
        )
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perf.fault_matrix",
        allow_abbrev=False,
        description="Run a scoring evaluation under every fault kind of the simulated server and "
        "check it against a fault-free run. Exit status 1 if any cell loses a sample silently, "
        "hangs or retries without bound.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1,000 requests per cell, short timeouts"
    )
    parser.add_argument("--requests", type=int, metavar="N", help="requests per cell")
    parser.add_argument(
        "--kind",
        action="append",
        choices=FAULT_KINDS,
        help="only these fault kinds (repeat); default all",
    )
    parser.add_argument(
        "--level", action="append", choices=(LOW, HIGH), help="only these rates (repeat)"
    )
    parser.add_argument(
        "--server",
        choices=("process", "inprocess"),
        help="run the simulated server in a child process (default) or in this event loop",
    )
    parser.add_argument("--data-dir", metavar="PATH", help="benchmark data folder")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write outcomes as JSON")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def settings_from_args(args: argparse.Namespace) -> MatrixSettings:
    settings = QUICK_SETTINGS if args.quick else MatrixSettings()
    changes: dict[str, Any] = {}
    if args.requests is not None:
        if args.requests < 2:
            raise SystemExit("--requests must be at least 2")
        changes["requests"] = args.requests
    if args.server is not None:
        changes["server"] = args.server
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    return dataclasses.replace(settings, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from_args(args)
    cells = default_cells(args.kind or FAULT_KINDS, args.level or (LOW, HIGH))
    console = Console(width=None if sys.stdout.isatty() else 200)
    status = Console(stderr=True)

    def progress(outcome: CellOutcome) -> None:
        verdict = "ok" if outcome.ok else "FAILED"
        status.print(
            f"[dim]{outcome.cell.label} {outcome.cell.level}: {verdict} "
            f"({outcome.wall_s:.1f} s)[/dim]"
        )

    from engine.event_loop import run as run_async

    reference, outcomes = run_async(run_matrix(settings, cells, on_cell=progress))
    console.print(render_table([reference, *outcomes], settings))
    bad = [o for o in [reference, *outcomes] if not o.ok]
    for outcome in bad:
        for example in outcome.loss_examples:
            console.print(f"[red]{outcome.cell.label} {outcome.cell.level}: {example}[/red]")
    if args.json is not None:
        args.json.write_bytes(
            orjson.dumps(
                {
                    "settings": dataclasses.asdict(settings),
                    "cells": [o.to_json() for o in [reference, *outcomes]],
                },
                option=orjson.OPT_INDENT_2,
            )
        )
    if bad:
        console.print(
            f"[red]{len(bad)} cell(s) with a silent loss, a hang or unbounded retries[/red]"
        )
        return 1
    console.print("no silent loss, no hang, retries bounded in every cell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
