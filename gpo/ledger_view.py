"""Reading ledger snapshots: one view over several engines and several sessions of a run.

The engines of a run usually share one ledger; when they do not (a scorer and an optimizer
built separately), their snapshots are merged. A resumed run keeps each earlier session's
snapshot, so "what did this run cost" is the sum over sessions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SUMMED_TOTALS = (
    "requests",
    "http_calls",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "batch_prompt_tokens",
    "batch_cached_prompt_tokens",
    "batch_completion_tokens",
    "cache_hits",
    "deduplicated",
    "saved_tokens",
    "retries",
    "rate_limited",
    "failures",
    "cost_usd",
)


def merge_snapshots(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One snapshot with every row and the summed totals; wall time is the longest."""
    if len(snapshots) == 1:
        return dict(snapshots[0])
    rows: list[Any] = []
    totals: dict[str, Any] = {name: 0 for name in SUMMED_TOTALS}
    unpriced: set[str] = set()
    failures_by_kind: dict[str, int] = {}
    wall = 0.0
    for snapshot in snapshots:
        rows.extend(snapshot.get("rows", []))
        part = snapshot.get("totals", {})
        for name in SUMMED_TOTALS:
            totals[name] += part.get(name, 0) or 0
        unpriced.update(part.get("unpriced_models", []))
        for kind, count in (part.get("failures_by_kind") or {}).items():
            failures_by_kind[kind] = failures_by_kind.get(kind, 0) + count
        wall = max(wall, float(snapshot.get("wall_time_s", 0.0)))
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    totals["unpriced_models"] = sorted(unpriced)
    totals["failures_by_kind"] = failures_by_kind
    return {"rows": rows, "totals": totals, "wall_time_s": wall}


def engines_snapshot(engines: Iterable[Any]) -> dict[str, Any]:
    """The snapshot of every distinct ledger among `engines`."""
    ledgers: list[Any] = []
    for engine in engines:
        ledger = getattr(engine, "ledger", None)
        if ledger is not None and all(ledger is not seen for seen in ledgers):
            ledgers.append(ledger)
    if not ledgers:
        return {"rows": [], "totals": {name: 0 for name in SUMMED_TOTALS}, "wall_time_s": 0.0}
    return merge_snapshots([ledger.snapshot() for ledger in ledgers])


def run_totals(sessions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over the sessions of a run (wall time adds up across sessions)."""
    merged = merge_snapshots(sessions) if sessions else {"totals": {}, "wall_time_s": 0.0}
    totals = dict(merged.get("totals", {}))
    totals["wall_time_s"] = round(sum(float(s.get("wall_time_s", 0.0)) for s in sessions), 3)
    totals["sessions"] = len(sessions)
    return totals


def of_which(totals: Mapping[str, Any]) -> str:
    """ ", of which N cached, M reasoning, K by batch" for a summary line; "" when none are."""
    parts = [
        f"{int(totals.get(name, 0) or 0):,} {label}"
        for name, label in (
            ("cached_prompt_tokens", "cached"),
            ("reasoning_tokens", "reasoning"),
            ("batch_prompt_tokens", "prompt by batch"),
        )
        if totals.get(name)
    ]
    return f" ({', '.join(parts)})" if parts else ""
