"""Budgets that cannot be silently ignored: a dollar cap needs prices, and a cap holds for the
whole run, not for each session.

- `--budget-usd` with a model the price table does not know is refused before any request (an
  unpriced model costs $0 on the ledger, so the cap could never stop the run), for `gpo optimize`
  and `gpo eval` alike, with the flag, the model and how to give a price named.
- A resumed run counts what its earlier sessions spent against its cap: a resume whose cap is
  already spent stops at once (exit 3, nothing sent), and a resume with a larger cap stops when
  the run as a whole reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.simulated import SimulatedServerProcess, metric_total
from tests.gpo_process import answered_server, eval_args, optimize_args, run_gpo

MODEL = "simulated-llama-2-7b-chat"
PRICE_IN, PRICE_OUT = 10.0, 30.0  # dollars per million tokens


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    with answered_server(20.0) as handle:
        yield handle


@pytest.fixture(scope="module")
def prices(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    path.write_bytes(
        orjson.dumps({MODEL: {"input_per_mtok": PRICE_IN, "output_per_mtok": PRICE_OUT}})
    )
    return path


def served(server: SimulatedServerProcess) -> float:
    return metric_total(server.metrics(), "sim_sequences_served_total")


def read(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line]


@pytest.mark.parametrize("command", ["optimize", "eval"])
def test_a_dollar_cap_on_an_unpriced_model_is_refused_before_any_request(
    server, tmp_path, command
) -> None:
    if command == "optimize":
        arguments = optimize_args(f"{server.url}/v1", tmp_path / "run", "--budget-usd", "0.0001")
    else:
        arguments = eval_args(server.url, tmp_path / "out", "--budget-usd", "0.0001")
    before = served(server)
    done = run_gpo(*arguments)
    assert done.returncode == 2, (done.stdout, done.stderr)
    (error,) = error_lines(done.stderr)  # one line
    assert "--budget-usd" in error and repr(MODEL) in error
    assert "--prices" in error and "no price" in error
    assert served(server) == before  # not one sequence generated


@pytest.fixture(scope="module")
def whole(server, prices, tmp_path_factory) -> dict[str, Any]:
    """The ledger totals of an uninterrupted, priced 3-step run."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    done = run_gpo(*optimize_args(f"{server.url}/v1", run_dir, "--prices", str(prices), steps=3))
    assert done.returncode == 0, done.stderr
    return read(run_dir / "ledger.json")["totals"]


@pytest.mark.parametrize("budget", ["tokens", "usd"])
def test_a_budget_holds_across_resumes(server, prices, whole, tmp_path, budget) -> None:
    flag, key = (
        ("--budget-tokens", "total_tokens") if budget == "tokens" else ("--budget-usd", "cost_usd")
    )

    def cap(fraction: float) -> str:
        value = whole[key] * fraction
        return str(int(value)) if budget == "tokens" else f"{value:.6f}"

    run_dir = tmp_path / "run"
    url = f"{server.url}/v1"
    first = run_gpo(*optimize_args(url, run_dir, "--prices", str(prices), flag, cap(0.25), steps=3))
    assert first.returncode == 3, first.stderr
    spent = read(run_dir / "ledger.json")["totals"][key]
    assert 0 < spent <= float(cap(0.25))

    # Resumed with the same cap (the stored one): it is spent, so nothing runs and nothing is sent.
    before = served(server)
    again = run_gpo("optimize", "--resume", str(run_dir), "--no-progress")
    assert again.returncode == 3, again.stderr
    assert "already spent" in again.stdout and flag in again.stdout
    assert "--resume" in again.stdout
    assert served(server) == before
    assert read(run_dir / "ledger.json")["totals"][key] == spent
    assert not list(run_dir.glob("ledger.session-*.json"))

    # Resumed with a larger cap: the two sessions together stop at it, not each session.
    before = served(server)
    larger = run_gpo("optimize", "--resume", str(run_dir), flag, cap(0.5), "--no-progress")
    assert larger.returncode == 3, larger.stderr
    assert served(server) > before
    summary = read(run_dir / "summary.json")
    totals = summary["run_totals"]
    assert totals["sessions"] == 2
    first_session = read(run_dir / "ledger.session-1.json")["totals"][key]
    second_session = read(run_dir / "ledger.json")["totals"][key]
    assert first_session == spent and second_session > 0
    assert totals[key] == pytest.approx(first_session + second_session)
    assert totals[key] <= float(cap(0.5))
