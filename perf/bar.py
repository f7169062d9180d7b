"""The Bar: the benchmark's pass/fail lines, each a claim about the engine checked against the
measured rows (W1/W2 against the limit and every contender, W3's rate limits, W4's warm cache,
W5's scaling and memory, W6's client overhead, W7's measured window, and the dry-run cost
estimate)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perf.estimate import EstimateCheck
from perf.results import ContenderMetrics, WorkloadReport


@dataclass(frozen=True, slots=True)
class BarLine:
    name: str
    passed: bool | None
    figure: str

    def render(self) -> str:
        verdict = "n/a " if self.passed is None else ("PASS" if self.passed else "FAIL")
        return f"{verdict}  {self.name}: {self.figure}"


def bar_lines(reports: Sequence[WorkloadReport], estimate: EstimateCheck | None) -> list[BarLine]:
    by_key = {r.key: r for r in reports}
    lines: list[BarLine] = []
    for key in ("W1", "W2"):
        if key in by_key:
            lines += _engine_vs_others(by_key[key])
    lines += _api_limits(by_key)
    lines += _warm_cache(by_key)
    lines += _scaling(by_key)
    lines += _client_overhead(by_key)
    lines += _measured_window(by_key)
    if estimate is not None:
        lines.append(
            BarLine(
                "dry-run estimate within 10% of the ledger's tokens and dollars (prompt cache on)",
                estimate.within(0.10),
                estimate.describe(),
            )
        )
    return lines


def _engine_vs_others(report: WorkloadReport) -> list[BarLine]:
    engine = report.row("engine")
    if engine is None:
        return []
    key = report.key
    lines = []
    if engine.percent_of_limit is not None:
        lines.append(
            BarLine(
                f"{key} engine >= 90% of the theoretical limit",
                engine.percent_of_limit >= 90.0,
                f"{engine.percent_of_limit:.1f}% ({engine.wall_s:.2f} s vs limit "
                f"{report.limit_s:.2f} s)",
            )
        )
    others = [r for r in report.rows if r.contender != "engine" and r.time_vs_engine]
    if others:
        slowest_margin = min(others, key=lambda r: r.time_vs_engine or 0.0)
        lines.append(
            BarLine(
                f"{key} engine faster than every contender",
                all((r.time_vs_engine or 0.0) > 1.0 for r in others),
                ", ".join(f"{r.contender} {r.time_vs_engine:.2f}x" for r in others)
                + f" (closest: {slowest_margin.contender})",
            )
        )
    references = [r for r in others if r.contender in ("sequential", "gpo-vllm")]
    if references:
        lines.append(
            BarLine(
                f"{key} engine >= 3x faster than both GPO reference patterns",
                all((r.time_vs_engine or 0.0) >= 3.0 for r in references) and len(references) == 2,
                ", ".join(f"{r.contender} {r.time_vs_engine:.2f}x" for r in references)
                + _limit_ceiling(report, references),
            )
        )
    return lines


def _limit_ceiling(report: WorkloadReport, rows: Sequence[ContenderMetrics]) -> str:
    """How much faster than each row the server's limit itself is: no client can beat that."""
    if not report.limit_s:
        return ""
    ceilings = ", ".join(f"{r.contender} {r.wall_s / report.limit_s:.2f}x" for r in rows)
    return f" (at the theoretical limit: {ceilings})"


def _api_limits(by_key: dict[str, WorkloadReport]) -> list[BarLine]:
    if "W3" not in by_key or (engine := by_key["W3"].row("engine")) is None:
        return []
    rate = engine.percent_of_limit
    lines = [
        BarLine(
            "W3 engine >= 98% of the allowed request rate",
            None if rate is None else rate >= 98.0,
            "-" if rate is None else f"{rate:.1f}%",
        ),
        BarLine("W3 engine zero failures", engine.failures == 0, f"{engine.failures}"),
    ]
    if engine.http_requests:
        share = 100.0 * (engine.rate_limited_429 or 0) / engine.http_requests
        lines.append(
            BarLine(
                "W3 engine 429s under 0.5% of requests",
                share < 0.5,
                f"{engine.rate_limited_429} of {engine.http_requests} ({share:.2f}%)",
            )
        )
    return lines


def _warm_cache(by_key: dict[str, WorkloadReport]) -> list[BarLine]:
    if "W4" not in by_key or (warm := by_key["W4"].row("engine")) is None:
        return []
    lines = [
        BarLine(
            "W4 zero server requests on a warm cache",
            warm.http_requests == 0,
            f"{warm.http_requests}",
        )
    ]
    cold = by_key["W1"].row("engine") if "W1" in by_key else None
    if cold is not None:
        speedup = cold.wall_s / warm.wall_s if warm.wall_s > 0 else float("inf")
        lines.append(
            BarLine(
                "W4 warm cache >= 20x faster than cold W1",
                speedup >= 20.0,
                f"{speedup:,.1f}x ({cold.wall_s:.2f} s -> {warm.wall_s:.3f} s)",
            )
        )
    return lines


def _scaling(by_key: dict[str, WorkloadReport]) -> list[BarLine]:
    w5 = [by_key[k] for k in by_key if k.startswith("W5-")]
    w5_engine = [(r, row) for r in w5 if (row := r.row("engine")) is not None]
    if len(w5_engine) < 2:
        return []
    per_prompt = [(r.key, 1e6 * row.wall_s / row.scored_prompts) for r, row in w5_engine]
    base_us = per_prompt[0][1]
    spread = max(abs(us / base_us - 1.0) for _, us in per_prompt)
    sized = [row for _, row in w5_engine if row.scored_prompts <= 100_000]
    largest = max(sized, key=lambda row: row.scored_prompts)
    return [
        BarLine(
            "W5 time per scored prompt within +-10% as the work grows",
            spread <= 0.10,
            ", ".join(f"{k} {us:.1f} us" for k, us in per_prompt)
            + f" (largest deviation {100 * spread:.1f}%)",
        ),
        BarLine(
            f"W5 peak memory at {largest.scored_prompts:,} scored prompts under 150 MB",
            largest.peak_memory_mb < 150.0,
            f"{largest.peak_memory_mb:.1f} MB",
        ),
    ]


def _client_overhead(by_key: dict[str, WorkloadReport]) -> list[BarLine]:
    if "W6" not in by_key or (engine := by_key["W6"].row("engine")) is None:
        return []
    peer = by_key["W6"].row("async-openai")
    peer_text = f"; AsyncOpenAI {peer.client_cpu_us_per_scored_prompt:,.0f} us" if peer else ""
    return [
        BarLine(
            "W6 client CPU <= 50 us per scored prompt",
            engine.client_cpu_us_per_scored_prompt <= 50.0,
            f"engine {engine.client_cpu_us_per_scored_prompt:.1f} us{peer_text}",
        ),
        BarLine(
            "W6 >= 5,000 scored prompts/s against a zero-service-time server",
            engine.scored_prompts_per_s >= 5_000,
            f"{engine.scored_prompts_per_s:,.0f} scored prompts/s",
        ),
    ]


def _measured_window(by_key: dict[str, WorkloadReport]) -> list[BarLine]:
    """W7: no window configured against the best window set by hand, in throughput."""
    if "W7" not in by_key or (auto := by_key["W7"].row("engine-auto")) is None:
        return []
    hand_set = [r for r in by_key["W7"].rows if r.contender.startswith("engine-w")]
    if not hand_set:
        return []
    best = max(hand_set, key=lambda r: r.scored_prompts_per_s)
    share = 100.0 * auto.scored_prompts_per_s / best.scored_prompts_per_s
    return [
        BarLine(
            "W7 no window configured >= 95% of the best hand-set window's throughput",
            share >= 95.0,
            f"{share:.1f}% ({auto.scored_prompts_per_s:,.1f} vs {best.contender} "
            f"{best.scored_prompts_per_s:,.1f} scored prompts/s; "
            + ", ".join(f"{r.contender} {r.scored_prompts_per_s:,.1f}" for r in hand_set)
            + ")",
        )
    ]
