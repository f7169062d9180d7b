"""Bad input gets one clear error that says what and where, and loses no finished work.

Each case runs the `gpo` CLI as a subprocess against a simulated server: malformed and empty data
files (file and line named), unknown task and method (valid names listed), invalid flag values,
an unknown model and a context-length error (reported once, not retried), an unreachable server
(clear error after bounded retries, also when it dies mid-run), a read-only or full run
directory (clear error before work is lost) and a corrupt cache file (set aside, run continues).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from backends.simulated import (
    SimulatedServerConfig,
    SimulatedServerProcess,
    metric_total,
    start_server_process,
)
from engine.cache import ResponseCache
from tests.gpo_fakes import DATA_DIR
from tests.gpo_process import (
    TASK,
    answer_key,
    answered_server,
    eval_args,
    run_gpo,
    start_gpo,
)


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    with answered_server(50.0) as running:
        yield running


def assert_clean_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit status 2, one `gpo ...: error:` line holding every expected text, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    error_lines = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(error_lines) == 1, done.stderr
    for text in expected:
        assert text in error_lines[0], (text, error_lines[0])


def generation_requests(server: SimulatedServerProcess) -> float:
    metrics = server.metrics()
    return metric_total(
        metrics, "sim_http_requests_total", endpoint="/v1/completions"
    ) + metric_total(metrics, "sim_http_requests_total", endpoint="/v1/chat/completions")


def data_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the data holding only the task; returns (data dir, task folder)."""
    folder = tmp_path / "data" / TASK
    shutil.copytree(DATA_DIR / TASK, folder)
    return tmp_path / "data", folder


# -- data files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"input": "Go left.", "target": ', "malformed JSON"),
        ('{"target": "Yes"}', "missing field 'input'"),
        ('["input", "target"]', "expected a JSON object"),
    ],
)
def test_a_malformed_data_file_is_named_with_its_line(server, tmp_path, bad_line, message) -> None:
    data, folder = data_copy(tmp_path)
    split = folder / "test.jsonl"
    lines = split.read_text().splitlines()
    lines[2] = bad_line
    split.write_text("\n".join(lines) + "\n")
    before = generation_requests(server)
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--data-dir", str(data)))
    assert_clean_error(done, f"{split}:3:", message)
    assert generation_requests(server) == before


def test_an_empty_data_file_is_named(server, tmp_path) -> None:
    data, folder = data_copy(tmp_path)
    (folder / "test.jsonl").write_text("\n\n")
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--data-dir", str(data)))
    assert_clean_error(done, str(folder / "test.jsonl"), "no records")


def test_a_missing_split_file_is_named(server, tmp_path) -> None:
    data, folder = data_copy(tmp_path)
    (folder / "eval.jsonl").unlink()
    done = run_gpo(
        *eval_args(server.url, tmp_path / "out", "--data-dir", str(data), "--split", "eval")
    )
    assert_clean_error(done, str(folder / "eval.jsonl"), "not found")


# -- names and flags -----------------------------------------------------------------------------


def test_an_unknown_task_lists_the_valid_names(server, tmp_path) -> None:
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--task", "bbh/navigat"))
    assert_clean_error(done, "bbh/navigat", "did you mean bbh/navigate", "bbh/boolean_expressions")
    done = run_gpo("optimize", "--task", "gsm9k", "--scorer-url", f"{server.url}/v1")
    assert_clean_error(done, "gsm9k", "gsm8k")


def test_an_unknown_method_lists_the_valid_ones(server, tmp_path) -> None:
    done = run_gpo(
        "optimize", "--task", TASK, "--method", "adam", "--run-dir", str(tmp_path / "run")
    )
    assert_clean_error(done, "--method", "adam", "gpo", "opro", "pe2")
    assert not (tmp_path / "run").exists()


EVAL_FLAG_ERRORS = [
    (["--limit", "0"], "--limit"),
    (["--max-tokens", "-5"], "--max-tokens"),
    (["--scorer-concurrency", "0"], "--scorer-concurrency"),
    (["--scorer-batch-size", "many"], "--scorer-batch-size"),
    (["--max-retries", "-1"], "--max-retries"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--budget-usd", "-2"], "--budget-usd"),
    (["--budget-tokens", "1.5"], "--budget-tokens"),
    (["--split", "dev"], "--split"),
    (["--position", "middle"], "--position"),
    (["--scorer-chat-template", "vicuna"], "vicuna"),
    (["--scorer-url", "ftp://127.0.0.1/v1"], "ftp://127.0.0.1/v1"),
    (["--scorer-api-key-file", "/nonexistent/key"], "--scorer-api-key-file"),
    (["--prices", "/nonexistent/prices.json"], "prices.json"),
]


@pytest.mark.parametrize(("flags", "named"), EVAL_FLAG_ERRORS)
def test_an_invalid_eval_flag_is_named(server, tmp_path, flags, named) -> None:
    before = generation_requests(server)
    done = run_gpo(*eval_args(server.url, tmp_path / "out", *flags))
    assert_clean_error(done, named)
    assert generation_requests(server) == before


OPTIMIZE_FLAG_ERRORS = [
    (["--steps", "0"], "--steps"),
    (["--candidates", "-1"], "--candidates"),
    (["--dev-size", "0"], "--dev-size"),
    (["--words-initial", "-10"], "--words-initial"),
    (["--optimizer-temperature", "hot"], "--optimizer-temperature"),
    (["--tasks-at-once", "0"], "--tasks-at-once"),
    (["--direction", "sideways"], "--direction"),
]


@pytest.mark.parametrize(("flags", "named"), OPTIMIZE_FLAG_ERRORS)
def test_an_invalid_optimize_flag_is_named_before_a_run_directory_exists(
    server, tmp_path, flags, named
) -> None:
    url = f"{server.url}/v1"
    done = run_gpo(
        "optimize",
        "--task",
        TASK,
        "--scorer-url",
        url,
        "--optimizer-url",
        url,
        "--run-dir",
        str(tmp_path / "run"),
        *flags,
    )
    assert_clean_error(done, named)
    assert not (tmp_path / "run").exists()


# -- what the server says ------------------------------------------------------------------------


def test_an_unknown_model_is_one_clear_error_before_any_work(server, tmp_path) -> None:
    before = generation_requests(server)
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--scorer-model", "llama-9-900b"))
    assert_clean_error(done, "llama-9-900b", "simulated-llama-2-7b-chat")
    assert generation_requests(server) == before


class RefusingServer:
    """Lists a model, then says it does not exist when asked to generate (a hosted API whose
    model list and serving disagree). Counts the generation calls it refused."""

    def __init__(self) -> None:
        self.generation_calls = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.path.endswith("/models"):
            return web.json_response({"object": "list", "data": [{"id": "listed-model"}]})
        if request.path.endswith("completions"):  # not the chat-template check's /tokenize
            self.generation_calls += 1
        return web.json_response(
            {"error": {"message": "The model `listed-model` does not exist", "code": 404}},
            status=404,
        )


@pytest.fixture
async def refusing_server() -> Iterator[RefusingServer]:
    server = RefusingServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


async def test_a_model_refused_mid_run_is_reported_once_and_not_retried(
    refusing_server, tmp_path
) -> None:
    done = await asyncio.to_thread(
        run_gpo, *eval_args(refusing_server.url, tmp_path / "out", "--limit", "20")
    )
    assert_clean_error(done, "listed-model", "does not exist")
    assert refusing_server.generation_calls == 1  # neither retried nor split per prompt


def test_a_context_length_error_fails_only_its_samples_without_retries(server, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    long_prompt = "Consider every word here. " * 1200  # far beyond the 4096-token context
    prompts.write_text(
        orjson.dumps({"prompt": "Think step by step."}).decode()
        + "\n"
        + orjson.dumps({"prompt": long_prompt}).decode()
        + "\n"
    )
    before = server.metrics()
    out = tmp_path / "out"
    done = run_gpo(*eval_args(server.url, out, "--prompts-file", str(prompts)))
    after = server.metrics()
    assert done.returncode == 4, done.stderr  # finished, with failed samples
    rows = {row["prompt"]: row for row in orjson.loads((out / "summary.json").read_bytes())["rows"]}
    assert rows["Think step by step."]["failed"] == 0
    assert rows[long_prompt]["failed"] == 8 and rows[long_prompt]["answered"] == 0
    records = [orjson.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["failure"]]
    assert len(failed) == 8 and all("maximum context length" in r["failure"] for r in failed)
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["ledger"]["totals"]["failures_by_kind"] == {"context_length": 8}
    refused = metric_total(after, "sim_http_requests_total", status="400") - metric_total(
        before, "sim_http_requests_total", status="400"
    )
    # Each too-long request is sent at most twice: in its prompt list, then alone to isolate it.
    assert 8 <= refused <= 16


# -- unreachable servers -------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("with_model", [False, True])
def test_an_unreachable_server_is_one_clear_error(tmp_path, with_model) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    extra = ["--scorer-model", "any-model"] if with_model else []
    started = time.monotonic()
    done = run_gpo(*eval_args(url, tmp_path / "out", *extra), timeout=60)
    assert_clean_error(done, f"{url}/v1", "cannot be reached")
    assert "Unclosed" not in done.stderr  # no leaked sessions on the way out
    assert time.monotonic() - started < 60


def test_a_server_that_dies_mid_run_stops_the_run_and_keeps_its_answers(tmp_path) -> None:
    key = answer_key()
    out = tmp_path / "out"
    cache = tmp_path / "cache.sqlite"
    slow = SimulatedServerConfig(time_scale=1.0)  # real time: the run lasts long enough to kill
    arguments = [
        "eval",
        "--task",
        TASK,
        "--prompt",
        "Think step by step.",
        "--prompt",
        "Answer carefully.",
        "--scorer-url",
        "URL",
        "--scorer-chat-template",
        "chatml",
        "--scorer-batch-size",
        "4",
        "--max-retries",
        "2",
        "--cache",
        str(cache),
        "--out",
        str(out),
    ]
    with start_server_process(slow, answer_key=key) as dying:
        arguments[arguments.index("URL")] = f"{dying.url}/v1"
        process = start_gpo(*arguments)
        records = out / "records.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if records.exists() and records.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before the server could be killed"
        os.kill(dying.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_clean_error(done, "unreachable")
    lines = records.read_bytes().splitlines()
    assert len(lines) >= 10 and all(orjson.loads(line)["failure"] is None for line in lines)
    answered = len(ResponseCache(cache))
    assert answered >= 10
    # The server back on its port: the rerun pays only for what the dead one never answered.
    port = int(dying.url.rsplit(":", 1)[1])
    back = SimulatedServerConfig(time_scale=50.0, port=port)
    with start_server_process(back, answer_key=key) as fresh:
        arguments[arguments.index("--out") + 1] = str(tmp_path / "rerun")
        rerun = run_gpo(*arguments)
        served = metric_total(fresh.metrics(), "sim_sequences_served_total")
    assert rerun.returncode == 0, rerun.stderr
    summary = orjson.loads((tmp_path / "rerun" / "summary.json").read_bytes())
    assert summary["ledger"]["totals"]["cache_hits"] >= answered
    assert served == summary["ledger"]["totals"]["requests"] == 2 * 144 * 2 - answered


# -- the run directory ---------------------------------------------------------------------------


def without_root_privileges() -> None:
    """Make permission bits bind this child even when the tests run as root (containers): drop
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before exec."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_a_read_only_output_folder_fails_before_any_request(server, read_only) -> None:
    before = generation_requests(server)
    done = run_gpo(*eval_args(server.url, read_only), preexec=without_root_privileges)
    assert_clean_error(done, "--out", str(read_only))
    done = run_gpo(
        "optimize",
        "--task",
        TASK,
        "--scorer-url",
        f"{server.url}/v1",
        "--optimizer-url",
        f"{server.url}/v1",
        "--run-dir",
        str(read_only / "run"),
        preexec=without_root_privileges,
    )
    assert_clean_error(done, "--run-dir", str(read_only / "run"))
    assert generation_requests(server) == before


def test_resuming_a_read_only_run_directory_fails_before_any_request(server, tmp_path) -> None:
    url = f"{server.url}/v1"
    run_dir = tmp_path / "run"
    stopped = run_gpo(
        "optimize",
        "--task",
        TASK,
        "--steps",
        "1",
        "--candidates",
        "2",
        "--dev-size",
        "4",
        "--test-size",
        "4",
        "--scorer-url",
        url,
        "--optimizer-url",
        url,
        "--run-dir",
        str(run_dir),
        "--budget-tokens",
        "1",
        "--no-progress",
    )
    assert stopped.returncode == 3, stopped.stderr
    before = generation_requests(server)
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        done = run_gpo(
            "optimize",
            "--resume",
            str(run_dir),
            "--budget-tokens",
            "10000000",
            preexec=without_root_privileges,
        )
    finally:
        for path in [run_dir, *run_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert_clean_error(done, "--resume", "not writable")
    assert generation_requests(server) == before


def file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A child whose files cannot grow past `limit_bytes`: writes fail with EFBIG, as they fail
    with ENOSPC on a full disk (same code path: an OSError from write)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_full_disk_mid_run_is_one_clear_error_and_keeps_what_was_written(
    server, tmp_path
) -> None:
    out = tmp_path / "out"
    arguments = eval_args(server.url, out, "--limit", "144")
    for index in range(6):
        arguments += ["--prompt", f"Think step by step, variant {index}."]
    done = run_gpo(*arguments, preexec=file_size_limit(96 * 1024))
    assert_clean_error(done, "cannot", str(out))  # names the file it could not write
    for line in (out / "records.jsonl").read_bytes().splitlines():
        orjson.loads(line)  # only whole records, no torn line
    connection = sqlite3.connect(out / "cache.sqlite")
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    kept = connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    connection.close()
    assert kept > 0
    # With room again, a rerun on the same cache finishes, paying nothing for what was kept.
    rerun_args = [*arguments]
    rerun_args[rerun_args.index("--out") + 1] = str(tmp_path / "rerun")
    rerun = run_gpo(*rerun_args, "--cache", str(out / "cache.sqlite"))
    assert rerun.returncode == 0, rerun.stderr
    totals = orjson.loads((tmp_path / "rerun" / "summary.json").read_bytes())["ledger"]["totals"]
    assert totals["cache_hits"] >= kept and totals["failures"] == 0


# -- the cache file ------------------------------------------------------------------------------


def test_a_corrupt_cache_file_is_set_aside_and_the_run_continues(server, tmp_path) -> None:
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 4000)
    out = tmp_path / "out"
    done = run_gpo(*eval_args(server.url, out, "--cache", str(cache)))
    assert done.returncode == 0, done.stderr
    assert "unreadable" in done.stderr and "moved it to" in done.stderr
    set_aside = list(tmp_path.glob("cache.sqlite.corrupt-*"))
    assert len(set_aside) == 1 and set_aside[0].read_bytes().endswith(b"\xde\xad\xbe\xef")
    assert len(ResponseCache(cache)) == 16  # 8 samples, two turns each
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["failures"] == 0
