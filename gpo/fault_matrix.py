"""The fault matrix: one scoring evaluation per fault kind and rate, each checked against a
fault-free run of the same evaluation.

    python -m gpo.fault_matrix            # 10,000 requests per cell, every kind at both rates
    python -m gpo.fault_matrix --quick    # 1,000 requests per cell, shorter timeouts

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities
from backends.simulated import (
    FaultRates,
    RateLimits,
    SimulatedServer,
    SimulatedServerConfig,
    metric_total,
    parse_prometheus,
    start_server_process,
)
from benchmarks import Task, load_task
from engine.cache import ResponseCache
from engine.engine import Engine, EngineConfig
from engine.evaluator import EvaluationResult, Evaluator, SampleRecord
from gpo.eval_job import summarise

logger = logging.getLogger(__name__)

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


# -- the server under test -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def simulated_server(
    config: SimulatedServerConfig, answer_key: dict[str, str], where: str
) -> AsyncIterator[str]:
    """A simulated server's base URL; in a child process or in this event loop."""
    if where == "inprocess":
        async with SimulatedServer(config, answer_key=answer_key) as server:
            yield server.url
        return
    if where != "process":
        raise ValueError(f"server must be 'process' or 'inprocess', got {where!r}")
    handle = await asyncio.to_thread(start_server_process, config, answer_key=answer_key)
    try:
        yield handle.url
    finally:
        await asyncio.to_thread(handle.stop)


async def _control(session: aiohttp.ClientSession, url: str, path: str, body: Any) -> None:
    async with session.post(f"{url}{path}", json=body) as response:
        await response.read()


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as response:
        return parse_prometheus(await response.text())


# -- one evaluation ------------------------------------------------------------------------------


def evaluation_prompts(count: int) -> list[str]:
    """Distinct instructions (so no two chains share a request) of varying quality."""
    styles = (
        "Let's think step by step.",
        "Answer carefully and check each option.",
        "Read the question, reason briefly, then give the final answer.",
        "Verify every step before you answer.",
        "Give the answer.",
    )
    return [f"{styles[i % len(styles)]} (variant {i})" for i in range(count)]


def plan(settings: MatrixSettings, task: Task) -> tuple[list[str], int]:
    """Prompts and samples per prompt so that chains = prompts x samples >= settings.chains."""
    available = len(task.split(settings.split))
    samples = min(available, settings.chains)
    prompts = math.ceil(settings.chains / samples)
    return evaluation_prompts(prompts), samples


async def run_evaluation(
    settings: MatrixSettings,
    task: Task,
    config: SimulatedServerConfig,
    cache_path: Path,
    *,
    disruption: str | None = None,
    events: int = 0,
) -> EvaluationRun:
    """One evaluation against a fresh server and cache; `events` restarts or outages
    (`disruption`) happen at evenly spaced fractions of its progress."""
    prompts, samples = plan(settings, task)
    answer_key = {s.input: s.target for s in task.split(settings.split)}
    planned = len(prompts) * samples
    async with (
        simulated_server(config, answer_key, settings.server) as url,
        aiohttp.ClientSession() as control,
    ):
        backend = OpenAICompatibleBackend(
            f"{url}/v1",
            config.model,
            capabilities=Capabilities(max_concurrency=config.max_num_seqs),
            request_timeout_s=settings.request_timeout_s,
            connect_timeout_s=min(settings.request_timeout_s, 5.0),
        )
        engine_config = EngineConfig(
            chat_template="chatml",
            max_batch_size=settings.max_batch_size,
            max_retries=settings.max_retries,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            seed=settings.seed,
        )
        cache = ResponseCache(cache_path)
        engine = Engine(backend, engine_config, cache=cache)
        disruptions = _Disruptions(
            control,
            url,
            disruption,
            [math.ceil(planned * (i + 1) / (events + 1)) for i in range(events)],
            settings.outage_simulated_s / settings.time_scale,
        )
        disruptions.start()
        result: EvaluationResult | None = None
        summary: dict[str, Any] | None = None
        hang = False
        error: str | None = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(settings.cell_deadline_s):
                async with engine:
                    result = await Evaluator(engine).evaluate(
                        task, prompts, settings.split, limit=samples, on_record=disruptions.seen
                    )
                    summary = summarise([result], engine)
        except TimeoutError:
            hang = True
            logger.error("the cell did not finish within %.0f s", settings.cell_deadline_s)
        except Exception as exception:  # a crash is a verdict of its own, never hidden
            logger.exception("the evaluation raised")
            error = f"{type(exception).__name__}: {exception}"
        finally:
            wall = time.monotonic() - started
            if hang:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await engine.close()
            await disruptions.finish()
            cache.close()
        async with asyncio.timeout(30):
            while True:  # an outage may still be under way; its server comes back on its own
                try:
                    metrics = await _metrics(control, url)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
    sample_ids = tuple(sample.id for sample in task.split(settings.split)[:samples])
    return EvaluationRun(sample_ids, result, summary, metrics, wall, hang, error)


class _Disruptions:
    """Restarts the server, or takes it down for a while, as the evaluation passes thresholds
    (counted in finished chains). One disruption at a time: the next waits until the server
    answers again (and, after an outage, has been up as long as it was down)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        disruption: str | None,
        thresholds: list[int],
        outage_s: float,
    ) -> None:
        self._session = session
        self._url = url
        self._disruption = disruption
        self._thresholds = thresholds if disruption else []
        self._outage_s = outage_s
        self._finished = 0
        self._due = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        if self._thresholds:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def seen(self, _record: SampleRecord) -> None:
        self._finished += 1
        while self._thresholds and self._finished >= self._thresholds[0]:
            self._thresholds.pop(0)
            self._due += 1
            self._wakeup.set()

    async def _work(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._due:
                self._due -= 1
                try:
                    if self._disruption == "outage":
                        await _control(
                            self._session, self._url, "/sim/down", {"seconds": self._outage_s}
                        )
                        await asyncio.sleep(self._outage_s)
                    else:
                        await _control(self._session, self._url, "/sim/restart", {})
                    self.sent += 1
                    await self._until_up()
                    if self._disruption == "outage":
                        # Separate outages: back-to-back ones would be one longer outage.
                        await asyncio.sleep(self._outage_s)
                except aiohttp.ClientError as error:
                    logger.warning("a server disruption could not be sent: %s", error)

    async def _until_up(self) -> None:
        await asyncio.sleep(0.1)  # the server acts 50 ms after acknowledging
        async with asyncio.timeout(30):
            while True:
                try:
                    async with self._session.get(f"{self._url}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

    async def finish(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker


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
        prog="python -m gpo.fault_matrix",
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
