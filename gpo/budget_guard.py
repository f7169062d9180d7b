"""Budget checks made before any paid request: a dollar cap needs prices, a resumed run's cap
counts what its earlier sessions spent.

- `refuse_unpriced_dollar_cap`: `--budget-usd` with a model the price table does not know could
  never stop (an unpriced model's tokens cost $0 on the ledger), so it is refused with the flag,
  the role and the model named, and how to give a price.
- `resume_stop_message` and `spent_cap`: a resumed run's budgets hold for the whole run, not each
  session. The spend its run directory recorded (earlier sessions' ledgers and the last
  session's `ledger.json`) counts against the cap (the runner also carries it into the engines'
  ledgers); a resume whose cap is already spent stops before it starts anything.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from backends.errors import ConfigError
from engine.prices import PriceTable
from gpo.ledger_view import run_totals
from gpo.run_dir import RunDirectory


def refuse_unpriced_dollar_cap(
    cap: float | None, engines: Mapping[str, Any], prices: PriceTable
) -> None:
    """Raise `ConfigError` when the dollar cap (`--budget-usd`) is set and a role's model has no
    price."""
    if cap is None:
        return
    for role, engine in engines.items():
        model = engine.backend.model
        if prices.price(model) is None:
            raise ConfigError(
                f"--budget-usd {cap:g}: the {role} model {model!r} has no price, so its spend "
                f"cannot be counted in dollars; give one with --prices FILE "
                f'({{"{model}": {{"input_per_mtok": IN, "output_per_mtok": OUT}}}}) or '
                f"--{role}-gpu-hour-usd USD, or cap tokens with --budget-tokens"
            )


# (argument, flag, ledger total) of each cap
_CAPS = (
    ("budget_tokens", "--budget-tokens", "total_tokens"),
    ("budget_usd", "--budget-usd", "cost_usd"),
)


def session_budgets(engines: Sequence[Any]) -> dict[str, float | None]:
    """The caps the engines run under (their shared `Budget`), as `state.json` records them
    for the next resume."""
    for engine in engines:
        budget = getattr(engine, "budget", None)
        if budget is not None:
            return budget.describe()
    return {}


def spent_cap(
    args: argparse.Namespace, spent: Mapping[str, Any], state: Mapping[str, Any]
) -> str | None:
    """Why a resumed run may send nothing, naming the cap's flag, or None.

    A cap is spent when the earlier sessions' spend reaches it, or when the last session was
    stopped by the budget and no cap was raised since (the engine stops a little below a cap,
    keeping room for the requests in flight, so "reached" is not always "spent in full").
    """
    sessions = int(spent.get("sessions", 0) or 0)
    where = f"over {sessions} earlier session{'s' if sessions != 1 else ''}"
    amounts = {
        "total_tokens": f"{int(spent.get('total_tokens', 0) or 0):,} tokens",
        "cost_usd": f"${float(spent.get('cost_usd', 0.0) or 0.0):.4f}",
    }
    caps = [(name, flag, key, getattr(args, name, None)) for name, flag, key in _CAPS]
    for _, flag, key, cap in caps:
        if cap is not None and float(spent.get(key, 0) or 0) >= cap:
            return f"{flag} {cap:g}: already spent ({amounts[key]} {where})"
    before = state.get("budgets") or {}
    if state.get("status") != "stopped" or not any(before.get(name) for name, *_ in caps):
        return None
    for name, _, _, cap in caps:
        if before.get(name) is not None and (cap is None or cap > before[name]):
            return None  # a cap was raised (or lifted): the run may go on
    name, flag, key, cap = next(c for c in caps if before.get(c[0]) is not None)
    return f"{flag} {cap:g}: already spent (the last session stopped at it; {amounts[key]} {where})"


def resume_stop_message(args: argparse.Namespace, run_dir: RunDirectory) -> str | None:
    """What to tell a user whose resumed run's budget is already spent, or None."""
    reason = spent_cap(args, run_totals(run_dir.recorded_ledgers()), run_dir.read_state())
    if reason is None:
        return None
    flag = reason.split(" ", 1)[0]
    return (
        f"stopped: {reason}; nothing was sent. Continue with a larger budget: "
        f"gpo optimize --resume {run_dir.path} {flag} ..."
    )
