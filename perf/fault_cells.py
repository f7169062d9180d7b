"""The fault matrix's cells and verdicts: which fault kind at which rate, how big and patient a
cell is (`MatrixSettings`), and the check of one cell's evaluation against the fault-free run,
record by record (`judge`): no silent loss, no hang, retries within the engine's bounds.

`perf.fault_run` runs the evaluations; `perf.fault_matrix` runs the matrix and prints it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backends.simulated import FaultRates, RateLimits, SimulatedServerConfig, metric_total
from engine.engine import EngineConfig
from engine.evaluator import EvaluationResult, SampleRecord

LOW, HIGH = "low", "high"
FAULT_KINDS = (
    "server_error",
    "connection_reset",
    "hang",
    "malformed_json",
    "truncated_body",
    "slow_body",
    "rate_limit",
    "restart",
    "outage",
)
_KIND_LABELS = {
    "none": "none (reference)",
    "server_error": "5xx answers",
    "connection_reset": "connection resets",
    "hang": "hangs past the timeout",
    "malformed_json": "malformed JSON",
    "truncated_body": "truncated bodies",
    "slow_body": "slow bodies",
    "rate_limit": "429 storms",
    "restart": "server restarts mid-run",
    "outage": "server gone 30 simulated s",
}
# Per-call probability of the injected fault at each level.
FAULT_RATES = {LOW: 0.02, HIGH: 0.25}
# Server restarts / outages spread evenly over the run, at each level.
EVENT_COUNTS = {LOW: 1, HIGH: 4}
# 429 storms: the server's token-per-minute limit as a fraction of what the fault-free run
# used per simulated minute, and the bucket's size as a fraction of the limit.
RATE_LIMIT_FRACTIONS = {LOW: (0.5, 0.1), HIGH: (0.2, 0.05)}
TOKENS_PER_CALL_CEILING = 12_000  # a full prompt-list call must always fit in the bucket


@dataclass(frozen=True, slots=True)
class MatrixSettings:
    """How big each cell is and how patient the client is. Times are real seconds unless the
    name says simulated."""

    requests: int = 10_000
    task: str = "bbh/navigate"
    split: str = "test"
    data_dir: str | None = None
    time_scale: float = 10.0
    request_timeout_s: float = 3.0
    slow_body_s: float = 1.0
    outage_simulated_s: float = 30.0
    max_batch_size: int = 8
    max_retries: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    cell_deadline_s: float = 900.0
    server: str = "process"  # "process" (a child process) or "inprocess" (this event loop)
    seed: int = 0

    @property
    def chains(self) -> int:
        """Scoring chains: each is two requests (answer, answer-pinning turn)."""
        return max(1, math.ceil(self.requests / 2))


QUICK_SETTINGS = MatrixSettings(
    requests=1_000,
    time_scale=20.0,
    request_timeout_s=1.5,
    slow_body_s=0.5,
    backoff_base_s=0.1,
    backoff_max_s=5.0,
    cell_deadline_s=240.0,
)


@dataclass(frozen=True, slots=True)
class FaultCell:
    """One cell: a fault kind at a level (the reference cell has kind "none")."""

    kind: str
    level: str = ""

    @property
    def label(self) -> str:
        return _KIND_LABELS.get(self.kind, self.kind)

    @property
    def events(self) -> int:
        """Restarts or outages during the run."""
        return EVENT_COUNTS[self.level] if self.kind in ("restart", "outage") else 0

    @property
    def disruption(self) -> str | None:
        """The whole-server disruption of this cell ("restart" or "outage"), else None."""
        return self.kind if self.kind in ("restart", "outage") else None

    def server_config(
        self, settings: MatrixSettings, reference_tokens_per_minute: float
    ) -> SimulatedServerConfig:
        """The simulated server for this cell; `reference_tokens_per_minute` (what the
        fault-free run consumed of a token-per-minute limit) sizes the 429 storms."""
        seed = settings.seed + zlib.crc32(f"{self.kind}/{self.level}".encode()) % 10_000
        faults = FaultRates(seed=seed)
        limits = RateLimits()
        if self.kind in faults.rates():
            faults = FaultRates(
                **{self.kind: FAULT_RATES[self.level]},
                slow_body_seconds=settings.slow_body_s,
                seed=seed,
            )
        elif self.kind == "rate_limit":
            fraction, burst = RATE_LIMIT_FRACTIONS[self.level]
            tpm = max(TOKENS_PER_CALL_CEILING / burst, reference_tokens_per_minute * fraction)
            limits = RateLimits(tokens_per_minute=int(tpm), burst_fraction=burst)
        return SimulatedServerConfig(
            time_scale=settings.time_scale, faults=faults, rate_limits=limits
        )


REFERENCE_CELL = FaultCell("none")


def default_cells(
    kinds: Iterable[str] = FAULT_KINDS, levels: Sequence[str] = (LOW, HIGH)
) -> list[FaultCell]:
    """Every kind at every level, in table order."""
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
    return [FaultCell(kind, level) for kind in kinds for level in levels]


@dataclass(slots=True)
class CellOutcome:
    """What one cell observed, and its verdict."""

    cell: FaultCell
    planned_records: int
    records: int = 0
    identical: int = 0
    marked_failed: int = 0
    summary_failures: int = 0
    silent_losses: int = 0
    loss_examples: list[str] = field(default_factory=list)
    hang: bool = False
    retries: int = 0
    rate_limited_retries: int = 0
    requests: int = 0
    retry_bound: int = 0
    rate_limited_retry_bound: int = 0
    http_attempts: int = 0
    faults_injected: int = 0
    rate_limited: int = 0
    restarts: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    scores_identical: bool = False
    wall_s: float = 0.0
    error: str | None = None

    @property
    def unbounded_retries(self) -> bool:
        return (
            self.retries - self.rate_limited_retries > self.retry_bound
            or self.rate_limited_retries > self.rate_limited_retry_bound
        )

    @property
    def ok(self) -> bool:
        return (
            not self.hang
            and self.silent_losses == 0
            and not self.unbounded_retries
            and self.error is None
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "cell"}
        data.update(kind=self.cell.kind, level=self.cell.level, ok=self.ok)
        return data


@dataclass(slots=True)
class EvaluationRun:
    sample_ids: tuple[str, ...]
    result: EvaluationResult | None
    summary: dict[str, Any] | None
    metrics: dict[str, float]
    wall_s: float
    hang: bool
    error: str | None


# -- verdicts ------------------------------------------------------------------------------------

RecordKey = tuple[int, str]


def record_map(result: EvaluationResult) -> dict[RecordKey, SampleRecord]:
    return {(r.prompt_index, r.sample_id): r for r in result.records}


def judge(
    cell: FaultCell,
    run: EvaluationRun,
    reference: dict[RecordKey, SampleRecord],
    settings: MatrixSettings,
) -> CellOutcome:
    """Compare a cell's evaluation with the fault-free one, record by record."""
    outcome = CellOutcome(cell, planned_records=len(reference), hang=run.hang, error=run.error)
    outcome.wall_s = run.wall_s
    metrics = run.metrics
    outcome.http_attempts = int(
        metric_total(metrics, "sim_http_requests_total", endpoint="/v1/completions")
        + metric_total(metrics, "sim_http_requests_total", endpoint="/v1/chat/completions")
    )
    outcome.faults_injected = int(metric_total(metrics, "sim_faults_injected_total"))
    outcome.rate_limited = int(metric_total(metrics, "sim_rate_limited_total"))
    outcome.restarts = int(metric_total(metrics, "sim_restarts_total"))
    if run.result is None or run.summary is None:
        if not run.hang and run.error is None:
            outcome.error = "the evaluation returned nothing"
        return outcome  # the hang or the error is the verdict

    def lose(what: str) -> None:
        outcome.silent_losses += 1
        if len(outcome.loss_examples) < 5:
            outcome.loss_examples.append(what)

    result = run.result
    seen: set[RecordKey] = set()
    column_of = {sample_id: index for index, sample_id in enumerate(run.sample_ids)}
    for record in result.records:
        key = (record.prompt_index, record.sample_id)
        outcome.records += 1
        if key in seen:
            lose(f"duplicate record for prompt {key[0]}, sample {key[1]}")
            continue
        seen.add(key)
        expected = reference.get(key)
        if expected is None:
            lose(f"record for an unplanned pair {key}")
            continue
        score_cell = result.scores[record.prompt_index, column_of[record.sample_id]]
        if record.failure is not None:
            if not record.failure.strip():
                lose(f"failed without a reason: {key}")
            elif not math.isnan(score_cell):
                lose(f"marked failed but scored: {key}")
            else:
                outcome.marked_failed += 1
            continue
        same = (record.answers, record.parsed, record.score) == (
            expected.answers,
            expected.parsed,
            expected.score,
        )
        if not same:
            lose(f"answer differs from the fault-free run without a failure mark: {key}")
        elif score_cell != record.score:
            lose(f"score matrix disagrees with the record: {key}")
        else:
            outcome.identical += 1
    for key in reference.keys() - seen:
        lose(f"no record at all for prompt {key[0]}, sample {key[1]}")
    outcome.summary_failures = int(run.summary["failures"])
    if outcome.summary_failures != outcome.marked_failed:
        lose(
            f"summary counts {outcome.summary_failures} failures, "
            f"records mark {outcome.marked_failed}"
        )
    totals = run.summary["ledger"]["totals"]
    outcome.retries = int(totals["retries"])
    outcome.rate_limited_retries = int(totals["rate_limited"])
    outcome.requests = int(totals["requests"]) + int(totals["failures"])
    outcome.retry_bound = settings.max_retries * outcome.requests
    outcome.rate_limited_retry_bound = EngineConfig().max_rate_limited_retries * outcome.requests
    outcome.failure_reasons = dict(totals["failures_by_kind"])
    outcome.scores_identical = outcome.marked_failed == 0 and outcome.silent_losses == 0
    return outcome
