"""Results: a contender's runs summarised into one table row (medians over the repeats,
extrapolated linearly to the whole workload when a run stopped at its budget, ratios to the
engine and to the server's limit), the answers compared with the engine's, a workload's report."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from perf.contenders import CONTENDERS
from perf.servers import ApiLimits
from perf.worker import RunResult


@dataclass(frozen=True, slots=True)
class ContenderMetrics:
    """One table row: medians over the repeats, extrapolated to the whole workload if needed."""

    contender: str
    pattern: str
    runs: int
    scored_prompts: int
    measured_scored_prompts: int
    wall_s: float
    scored_prompts_per_s: float
    percent_of_limit: float | None
    time_vs_engine: float | None
    client_cpu_s: float
    client_cpu_us_per_scored_prompt: float
    http_requests: int | None
    rate_limited_429: int | None
    answered_requests: int | None
    failures: int
    unanswered: int
    peak_memory_mb: float
    extrapolated: bool
    answers_vs_engine: str
    note: str = ""
    wall_s_runs: tuple[float, ...] = ()
    """Each run's wall time (extrapolated where it was): the run-to-run spread."""


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def extrapolated_wall_s(runs: Sequence[RunResult]) -> float | None:
    """The median wall time over the runs, each extrapolated to the whole workload."""
    if not runs:
        return None
    return _median(r.wall_s * r.scored_prompts_total / max(1, r.scored_prompts_run) for r in runs)


def summarise_runs(
    name: str,
    runs: Sequence[RunResult],
    limit_s: float | None,
    engine_wall_s: float | None,
    answers: str,
    *,
    api_limits: ApiLimits | None = None,
    time_scale: float = 1.0,
    note: str = "",
) -> ContenderMetrics:
    total = runs[0].scored_prompts_total
    factors = [r.scored_prompts_total / max(1, r.scored_prompts_run) for r in runs]
    wall = _median(r.wall_s * f for r, f in zip(runs, factors, strict=True))
    cpu = _median(r.client_cpu_s * f for r, f in zip(runs, factors, strict=True))

    def scaled(values: Sequence[int | None]) -> int | None:
        if any(v is None for v in values):
            return None
        return round(_median(v * f for v, f in zip(values, factors, strict=True)))  # type: ignore[operator]

    useful = scaled([r.answered_turns for r in runs]) or 0
    percent = None
    if api_limits is not None:
        # Requests that carry the workload's answers (one per chat turn); repeated work done by
        # re-runs is not counted, so a contender cannot score by spending the allowance twice.
        per_s = api_limits.requests_per_minute * time_scale / 60.0
        percent = 100.0 * useful / (api_limits.request_burst + per_s * wall)
    elif limit_s is not None and wall > 0:
        percent = 100.0 * limit_s / wall
    return ContenderMetrics(
        contender=name,
        pattern=CONTENDERS[name].pattern,
        runs=len(runs),
        scored_prompts=total,
        measured_scored_prompts=round(_median(r.scored_prompts_run for r in runs)),
        wall_s=wall,
        scored_prompts_per_s=total / wall if wall > 0 else float("inf"),
        percent_of_limit=percent,
        time_vs_engine=(wall / engine_wall_s) if engine_wall_s else None,
        client_cpu_s=cpu,
        client_cpu_us_per_scored_prompt=cpu / total * 1e6,
        http_requests=scaled([r.http_requests for r in runs]),
        rate_limited_429=scaled([r.rate_limited_429 for r in runs]),
        answered_requests=scaled([r.answered_requests for r in runs]),
        failures=scaled([r.failures for r in runs]) or 0,
        unanswered=max(r.unanswered for r in runs),
        peak_memory_mb=_median(r.peak_memory_mb for r in runs),
        extrapolated=any(r.scored_prompts_run < r.scored_prompts_total for r in runs),
        answers_vs_engine=answers,
        note=note,
        wall_s_runs=tuple(r.wall_s * f for r, f in zip(runs, factors, strict=True)),
    )


def compare_answers(reference: Sequence[str | None], other: Sequence[str | None]) -> str:
    """ "same" when every chain both answered has the same answers; else how many differ."""
    both = [(a, b) for a, b in zip(reference, other, strict=True) if a is not None and b]
    differ = sum(1 for a, b in both if a != b)
    if not both:
        return "none to compare"
    return "same" if differ == 0 else f"{differ} of {len(both)} differ"


def run_notes(runs: Sequence[RunResult], budget_s: float) -> str:
    """The row's note: extrapolated, chains re-run, chains never answered."""
    notes = []
    if any(r.scored_prompts_run < r.scored_prompts_total for r in runs):
        notes.append(
            f"extrapolated from the first {runs[0].scored_prompts_run:,} "
            f"scored prompts (run budget {budget_s:g} s)"
        )
    if any(r.rerun_passes for r in runs):
        notes.append(
            "gave up on some chains (column fail); re-ran them until answered ("
            + ", ".join(str(r.rerun_passes) for r in runs)
            + " extra passes), time included"
        )
    if any(r.unanswered for r in runs):
        notes.append(
            "still unanswered after re-runs: " + ", ".join(str(r.unanswered) for r in runs)
        )
    return "; ".join(notes)


def borrowed_row(
    row: ContenderMetrics, source: str, engine_wall_s: float | None
) -> ContenderMetrics:
    """A contender without a cache on a warm-cache workload: the cold workload's row, as is."""
    return dataclasses.replace(
        row,
        percent_of_limit=None,
        time_vs_engine=row.wall_s / engine_wall_s if engine_wall_s else None,
        note=f"no cache in this pattern: {source}'s figures (not re-run)",
    )


@dataclass(slots=True)
class WorkloadReport:
    key: str
    title: str
    description: str
    server: str
    limit_s: float | None
    limit_note: str
    rows: list[ContenderMetrics] = field(default_factory=list)

    def row(self, name: str) -> ContenderMetrics | None:
        return next((r for r in self.rows if r.contender == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "description": self.description,
            "server": self.server,
            "theoretical_limit_s": self.limit_s,
            "limit_note": self.limit_note,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }
