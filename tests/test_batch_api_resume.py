"""Issue 19's Bar: a `gpo eval --batch-api` of 1,000 prompts killed while its batch is pending
resumes and finishes with every answer, charged once, at the batch price.

The simulated server holds its batches (a test control) until the test releases them, so the
kill comes while the batch is pending whatever the machine's load; the batch then completes
while no process is alive, and the resumed run (the same command with `--overwrite`) must collect
it from the id in its output folder instead of submitting it again."""

from __future__ import annotations

import signal
import sqlite3
import urllib.request
from pathlib import Path

import orjson

from tests.gpo_process import answered_server, eval_args, run_gpo, start_gpo
from tests.waiting import CONNECTION_ERRORS, DEADLINE_S, wait_until

MODEL = "simulated-llama-2-7b-chat"
PROMPTS, LIMIT = 10, 100  # 10 prompts x 100 test samples: 1,000 scoring chains
PRICE_IN, PRICE_OUT = 2.0, 8.0


def sim_batches(url: str, **control) -> dict | None:
    """The server's batches (id -> batch object), after applying `control`; None if no answer."""
    data = orjson.dumps(control) if control else None
    method = "POST" if control else "GET"
    try:
        request = urllib.request.Request(f"{url}/sim/batches", data=data, method=method)
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            return orjson.loads(response.read())
    except CONNECTION_ERRORS:
        return None


def pending_batch(out: Path) -> str | None:
    try:
        entries = orjson.loads((out / "batches.json").read_bytes())["batches"]
    except (OSError, orjson.JSONDecodeError, KeyError):
        return None
    pending = [entry["id"] for entry in entries if entry["state"] == "pending"]
    return pending[0] if pending else None


def cached_answers(cache: Path) -> int:
    connection = sqlite3.connect(cache)
    try:
        return connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    finally:
        connection.close()


def test_eval_batch_api_killed_while_pending_resumes_charged_once_at_batch_price(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Prompt number {i}: answer carefully.\n" for i in range(PROMPTS)))
    prices = tmp_path / "prices.json"
    prices.write_bytes(
        orjson.dumps({MODEL: {"input_per_mtok": PRICE_IN, "output_per_mtok": PRICE_OUT}})
    )
    out = tmp_path / "eval"
    with answered_server(100.0, batch_delay_s=1.0) as server:
        assert sim_batches(server.url, hold=True) is not None
        arguments = eval_args(server.url, out, limit=LIMIT)
        arguments += ["--prompts-file", str(prompts), "--prices", str(prices), "--no-progress"]
        arguments += ["--batch-api", "--batch-poll-max", "0.2"]
        process = start_gpo(*arguments, capture=False)
        try:
            assert wait_until(lambda: pending_batch(out) is not None or process.poll() is not None)
            batch_id = pending_batch(out)
            assert batch_id is not None, "the eval ended before recording a pending batch"
            states = sim_batches(server.url)
            assert states is not None and states[batch_id]["status"] == "in_progress"
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=DEADLINE_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=DEADLINE_S)
        first_lines = states[batch_id]["request_counts"]["total"]
        assert first_lines == PROMPTS * LIMIT
        assert not (out / "summary.json").exists()

        # The batch completes while no process is alive.
        sim_batches(server.url, hold=False)

        def completed() -> bool:
            now = sim_batches(server.url)
            return now is not None and now[batch_id]["status"] == "completed"

        assert wait_until(completed)
        resumed = run_gpo(*arguments, "--overwrite", timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        final = sim_batches(server.url)
    assert final is not None

    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["samples"] == PROMPTS * LIMIT and summary["failures"] == 0
    records = (out / "records.jsonl").read_bytes().splitlines()
    assert len(records) == PROMPTS * LIMIT
    # Charged once: every line the server ran is one answer in the ledger and one cache entry;
    # the pending batch was collected, never submitted again.
    lines_run = sum(batch["request_counts"]["total"] for batch in final.values())
    (row,) = summary["ledger"]["rows"]
    assert row["requests"] == row["batch_requests"] == lines_run
    assert cached_answers(out / "cache.sqlite") == lines_run
    assert sum(1 for batch in final.values() if batch["request_counts"]["total"] == first_lines)
    entries = orjson.loads((out / "batches.json").read_bytes())["batches"]
    assert entries[0]["id"] == batch_id
    assert [entry["state"] for entry in entries] == ["collected"] * len(entries)
    # At the batch price: half the standard price of the tokens, to the cent.
    standard = (row["prompt_tokens"] * PRICE_IN + row["completion_tokens"] * PRICE_OUT) / 1e6
    assert abs(row["cost_usd"] - standard / 2) < 0.005
    assert row["cost_usd"] > 0
