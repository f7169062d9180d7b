"""End to end against a real vLLM: the CPU build serving the embedded SmolLM2 (`--vllm embedded`).

They need `gpo setup-local --vllm` to have run, as the README's test command does; set
GPO_SKIP_REAL_MODEL=1 to skip them (they are never skipped otherwise: a missing install fails).

One server, started through `gpo serve --vllm embedded` (so that command is tested as a user runs
it), is shared by the whole module: a start takes about a minute on two cores. The module is the
only user of it, so it is started once per test session and stopped as soon as the module ends,
instead of holding a core through the rest of the suite. Each test checks the engine against the
server's own account of what happened: vLLM's Prometheus counters at `/metrics` (tokens, prefix
cache hits, HTTP requests by status), read before and after. Tests run one at a time, so the
deltas are theirs. The last test starts its own managed vLLM through `gpo optimize
--scorer-vllm embedded`, kills it mid-run, and resumes the run on a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import orjson
import pytest

from backends.errors import UnknownModel
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Request, SamplingParams
from backends.vllm_cpu import EMBEDDED_VLLM_SERVED_NAME, cpu_build_installed, embedded_model_ready
from engine.engine import Engine, EngineConfig, RequestFailed
from engine.ledger import Ledger
from gpo.run_servers import read_servers
from tests.gpo_process import REPO, gpo_environment, run_gpo

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        os.environ.get("GPO_SKIP_REAL_MODEL") == "1", reason="GPO_SKIP_REAL_MODEL=1"
    ),
]

START_DEADLINE_S = 600.0
METRICS_SETTLE_S = 30.0
HTTP_COUNTER = "http_requests_total"
VLLM_CAPABILITIES = Capabilities(
    prompt_lists=True, multiple_choices=True, chat=True, completions=True, max_concurrency=128
)
_METRIC_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")
_HTTP_ERRORS = (OSError, HTTPException, ValueError)  # URLError, resets, RemoteDisconnected...


@dataclass(frozen=True)
class LiveServer:
    root: str  # http://127.0.0.1:PORT
    url: str  # .../v1
    model: str
    pid: int  # the vLLM server's, not gpo serve's


def _wait_for(condition: Callable[[], bool], deadline_s: float, poll_s: float = 1.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return condition()


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop_group(pid: int, deadline_s: float = 60.0) -> None:
    """SIGTERM a server's process group, then SIGKILL what is left after `deadline_s`."""
    for signum, wait_s in ((signal.SIGTERM, deadline_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
        if _wait_for(lambda: not _pid_alive(pid), wait_s, 0.5):
            return


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`gpo serve --vllm embedded`, shared by this module; stopped with SIGINT at its end."""
    assert cpu_build_installed() and embedded_model_ready(), (
        "vLLM's CPU build or the converted SmolLM2 is missing: run `gpo setup-local --vllm`"
    )
    folder = tmp_path_factory.mktemp("vllm-serve")
    out_path, log_path = folder / "serve.out", folder / "vllm.log"
    with out_path.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "gpo", "serve", "--vllm", "embedded", "--log", str(log_path)],
            cwd=REPO,
            env=gpo_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    started = time.monotonic()
    vllm_pid = None
    try:
        ready = _wait_for(
            lambda: "OpenAI base URL" in out_path.read_text() or serve.poll() is not None,
            START_DEADLINE_S,
        )
        text = out_path.read_text()
        assert ready and serve.poll() is None, f"gpo serve --vllm embedded failed:\n{text}"
        print(f"\nvLLM CPU server ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
        url = re.search(r"OpenAI base URL:\s+(\S+)", text).group(1)  # type: ignore[union-attr]
        model = re.search(r"model:\s+(\S+)", text).group(1)  # type: ignore[union-attr]
        vllm_pid = int(re.search(r"\(pid (\d+)\)", text).group(1))  # type: ignore[union-attr]
        assert "managed vLLM" in text and "CPU build" in text, text
        yield LiveServer(url.removesuffix("/v1"), url, model, vllm_pid)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=90)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(timeout=30)
        if vllm_pid is not None and _pid_alive(vllm_pid):
            _stop_group(vllm_pid)


# ---- reading the server's own account ----------------------------------------------------------


def metrics(server: LiveServer) -> dict[tuple[str, str], float]:
    """vLLM's Prometheus counters: (name, labels) -> value."""
    for _ in range(10):
        try:
            with urllib.request.urlopen(f"{server.root}/metrics", timeout=30) as response:
                text = response.read().decode()
            break
        except _HTTP_ERRORS:
            time.sleep(1.0)
    else:
        raise AssertionError(f"{server.root}/metrics did not answer")
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match and not line.startswith("#"):
            found[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return found


def counter(values: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    """The sum of `name` over the label sets that hold every one of `labels`."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        value
        for (metric, label_text), value in values.items()
        if metric == name and all(item in label_text for item in wanted)
    )


def deltas(
    server: LiveServer, before: dict[tuple[str, str], float], expect: Callable[[dict], bool]
) -> dict[str, float]:
    """Counter changes since `before`, polled until `expect(changes)` holds (vLLM records its
    stats as it finishes a step, which may trail the HTTP answer) or a deadline passes."""

    def changes() -> dict[str, float]:
        now = metrics(server)

        def grew(name: str, **labels: str) -> float:
            return counter(now, name, **labels) - counter(before, name, **labels)

        return {
            "prompt_tokens": grew("vllm:prompt_tokens_total"),
            "generation_tokens": grew("vllm:generation_tokens_total"),
            "prefix_cache_hits": grew("vllm:prefix_cache_hits_total"),
            "completions_2xx": grew(HTTP_COUNTER, handler="/v1/completions", status="2xx"),
            "completions_4xx": grew(HTTP_COUNTER, handler="/v1/completions", status="4xx"),
            "chat_2xx": grew(HTTP_COUNTER, handler="/v1/chat/completions", status="2xx"),
        }

    latest = changes()
    deadline = time.monotonic() + METRICS_SETTLE_S
    while not expect(latest) and time.monotonic() < deadline:
        time.sleep(0.5)
        latest = changes()
    return latest


def engine_on(server: LiveServer, model: str | None = None, **config: object) -> Engine:
    backend = OpenAICompatibleBackend(
        server.url, model or server.model, capabilities=VLLM_CAPABILITIES
    )
    return Engine(backend, EngineConfig(**config), ledger=Ledger())  # type: ignore[arg-type]


def totals(engine: Engine) -> dict:
    return engine.ledger.snapshot()["totals"]


LONG_INSTRUCTION = (
    "Read every instruction carefully and keep track of your position on a grid: start at the "
    "origin facing north, count each step along the direction you face, and update your facing "
    "after every turn. Steps to the left, right, forward or backward move you without changing "
    "the direction you face. Turning around reverses your facing. After the last instruction, "
    "compare your position with the origin and answer Yes if they are the same, otherwise No. "
    "Think step by step, writing your position after each instruction."
)
"""Long enough (about 110 tokens) that a first turn fills a 128-token KV block."""


# ---- the shared server -------------------------------------------------------------------------


async def test_prompt_lists_batch_and_the_ledger_counts_the_servers_tokens(vllm: LiveServer):
    prompts = [f"Count from {i} to {i + 3}:" for i in range(12)]
    before = metrics(vllm)
    async with engine_on(vllm) as engine:
        answers = await engine.generate_many(
            [Request(prompt=p, params=SamplingParams(max_tokens=8)) for p in prompts]
        )
        spent = totals(engine)
    assert all(not isinstance(a, RequestFailed) and a.texts[0] for a in answers), answers
    change = deltas(
        vllm,
        before,
        lambda c: (
            c["generation_tokens"] >= spent["completion_tokens"]
            and c["prompt_tokens"] >= spent["prompt_tokens"]
        ),
    )
    assert 1 <= change["completions_2xx"] < len(prompts), change  # lists, not one call a prompt
    assert spent["requests"] == len(prompts) and spent["failures"] == 0
    assert spent["prompt_tokens"] == change["prompt_tokens"] > 0, (spent, change)
    assert spent["completion_tokens"] == change["generation_tokens"] > 0, (spent, change)


async def test_n_above_one_returns_every_choice_and_counts_its_tokens(vllm: LiveServer):
    params = SamplingParams(max_tokens=8, temperature=0.9, n=3, seed=7)
    before = metrics(vllm)
    async with engine_on(vllm) as engine:
        answer = await engine.generate(Request(prompt="A short poem about rain:", params=params))
        spent = totals(engine)
    assert len(answer.texts) == 3 and all(answer.texts), answer
    change = deltas(vllm, before, lambda c: c["generation_tokens"] >= spent["completion_tokens"])
    assert spent["completion_tokens"] == change["generation_tokens"] > 0, (spent, change)
    # vLLM counts the prompt once per choice in /metrics, once per request in `usage`.
    assert spent["prompt_tokens"] * 3 == change["prompt_tokens"] > 0, (spent, change)


async def test_a_second_turn_hits_vllms_prefix_cache(vllm: LiveServer):
    salt = uuid.uuid4().hex  # a first turn nothing was cached for
    system = f"Session {salt}. You answer questions about walking directions, briefly. " * 8
    first = (
        ("system", system),
        ("user", "Always face forward. Take 3 steps. Take 3 steps backward. Are you back?"),
    )
    async with engine_on(vllm) as engine:
        before = metrics(vllm)
        answer = await engine.generate(
            Request(messages=first, params=SamplingParams(max_tokens=16))
        )
        turn1_prompt = totals(engine)["prompt_tokens"]
        first_turn = deltas(vllm, before, lambda c: c["prompt_tokens"] >= turn1_prompt)
        middle = metrics(vllm)
        second = (*first, ("assistant", answer.texts[0]), ("user", "So: Yes or No?"))
        await engine.generate(Request(messages=second, params=SamplingParams(max_tokens=4)))
    assert turn1_prompt > 256
    second_turn = deltas(vllm, middle, lambda c: c["prefix_cache_hits"] >= turn1_prompt - 128)
    assert first_turn["prefix_cache_hits"] == 0, first_turn
    # Every full KV block of the first turn is reused (blocks are 128 tokens on the CPU build).
    assert second_turn["prefix_cache_hits"] >= turn1_prompt - 128, (turn1_prompt, second_turn)


async def test_a_context_length_error_is_reported_once_and_not_retried(vllm: LiveServer):
    too_long = "walk " * 9000  # over the 8192-token context
    before = metrics(vllm)
    async with engine_on(vllm, max_retries=3) as engine:
        outcomes = await engine.generate_many(
            [
                Request(prompt=too_long, params=SamplingParams(max_tokens=4)),
                Request(prompt="Hello", params=SamplingParams(max_tokens=9000)),
            ]
        )
        spent = totals(engine)
    assert all(isinstance(o, RequestFailed) for o in outcomes), outcomes
    assert [o.kind for o in outcomes] == ["context_length", "context_length"], outcomes
    assert all(o.attempts == 1 for o in outcomes) and spent["retries"] == 0, spent
    assert "maximum context length" in outcomes[0].reason
    assert "max_model_len" in outcomes[1].reason
    change = deltas(vllm, before, lambda c: c["completions_4xx"] >= 2)
    assert change["completions_4xx"] == 2, change  # one request each: not retried


async def test_an_unknown_model_is_named(vllm: LiveServer, tmp_path: Path):
    backend = OpenAICompatibleBackend(vllm.url, "no-such-model", capabilities=VLLM_CAPABILITIES)
    try:
        with pytest.raises(UnknownModel, match="no-such-model"):
            await backend.complete(["Hello"], SamplingParams(max_tokens=2))
    finally:
        await backend.close()
    done = run_gpo(
        "eval",
        "--task",
        "bbh/navigate",
        "--limit",
        "1",
        "--scorer-url",
        vllm.url,
        "--scorer-model",
        "no-such-model",
        "--out",
        str(tmp_path / "eval"),
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "'no-such-model'" in done.stderr and EMBEDDED_VLLM_SERVED_NAME in done.stderr
    assert "Traceback" not in done.stderr


def test_gpo_eval_chats_match_the_servers_usage_and_say_which_server(
    vllm: LiveServer, tmp_path: Path
):
    out = tmp_path / "eval"
    before = metrics(vllm)
    done = run_gpo(
        "eval",
        "--task",
        "bbh/navigate",
        "--split",
        "test",
        "--limit",
        "3",
        "--prompt",
        LONG_INSTRUCTION,
        "--max-tokens",
        "24",
        "--follow-up-max-tokens",
        "4",
        "--scorer-url",
        vllm.url,
        "--out",
        str(out),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    spent = summary["ledger"]["totals"]
    records = [orjson.loads(line) for line in (out / "records.jsonl").read_bytes().splitlines()]
    assert len(records) == 3 and all(len(r["answers"]) == 2 for r in records)
    assert spent["requests"] == 6 and spent["failures"] == 0
    change = deltas(vllm, before, lambda c: c["chat_2xx"] >= 6)
    assert change["chat_2xx"] == 6 and change["completions_2xx"] == 0, change  # chats as chats
    assert spent["prompt_tokens"] == change["prompt_tokens"], (spent, change)
    assert spent["completion_tokens"] == change["generation_tokens"], (spent, change)
    # Each follow-up reuses its first turn's KV blocks (128 tokens a block on the CPU build).
    assert change["prefix_cache_hits"] >= 3 * 128, change
    servers = read_servers(out)
    assert [s["role"] for s in servers] == ["scorer"] and servers[0]["url"] == vllm.url
    assert f"gpo: scorer: {vllm.url} serving {vllm.model}" in done.stderr


# ---- a managed vLLM of its own: killed mid-run, resumed -----------------------------------------


def _vllm_children(parent: int) -> list[int]:
    """Pids of vLLM API servers whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == parent and b"vllm.entrypoints.openai.api_server" in cmdline:
            found.append(int(entry.name))
    return found


def _scored(run_dir: Path) -> bool:
    try:
        ledger = orjson.loads((run_dir / "ledger.json").read_bytes())
    except (OSError, ValueError):
        return False
    return ledger.get("totals", {}).get("requests", 0) >= 4


OPTIMIZE_ARGS = (
    "optimize",
    "--task",
    "bbh/navigate",
    "--steps",
    "2",
    "--candidates",
    "2",
    "--train-size",
    "8",
    "--dev-size",
    "3",
    "--test-size",
    "3",
    "--max-tokens",
    "24",
    "--follow-up-max-tokens",
    "4",
    "--optimizer-max-tokens",
    "48",
    "--max-retries",
    "2",
    "--no-progress",
)


def test_benchs_offline_limit_answers_as_the_engine_does_through_the_server(vllm: LiveServer):
    """bench's measured limit on a real vLLM (`perf.real_limit`): the offline engine with the
    managed server's arguments, turn 1 of every chain in one `LLM.chat`, then every turn 2, on
    the same model. It does the engine's work: the same answers, chain by chain, as the engine
    gets from the server for the same chains (one model load; the module's server)."""
    from backends.vllm_cpu import embedded_model_dir
    from benchmarks import load_task
    from perf.real_limit import measure_offline_limit
    from perf.results import compare_answers
    from perf.scales import SCALES, TASK_NAME
    from perf.servers import real_endpoint
    from perf.worker import RunSpec, measure
    from perf.workloads import build_workloads

    task = load_task(TASK_NAME)
    workload = build_workloads(SCALES["smoke"])["W1"]
    endpoint = real_endpoint(vllm.url, vllm.model, "chatml", 128)
    engine = measure(RunSpec("W1", "smoke", False, "engine", endpoint.to_json(), 1e9), task)
    offline = measure_offline_limit(workload, task, str(embedded_model_dir()), 128, 1)
    assert engine.unanswered == 0 and len(offline.seconds) == 1 and offline.seconds[0] > 0
    assert offline.tokens[0] > 0
    assert compare_answers(offline.digests, engine.digests) == "same"


def test_managed_vllm_killed_mid_run_then_the_run_resumes_and_finishes(
    vllm: LiveServer, tmp_path: Path
):
    run_dir = tmp_path / "run"
    args = [
        *OPTIMIZE_ARGS,
        "--scorer-vllm",
        "embedded",
        "--optimizer-vllm",
        "embedded",
        "--run-dir",
        str(run_dir),
    ]
    out_path = tmp_path / "first.out"
    with out_path.open("wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "gpo", *args],
            cwd=REPO,
            env=gpo_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    killed: list[int] = []
    try:
        assert _wait_for(lambda: _scored(run_dir) or run.poll() is not None, START_DEADLINE_S)
        assert run.poll() is None, out_path.read_text()
        servers = _vllm_children(run.pid)
        assert len(servers) == 1, servers  # both roles share one server
        for pid in servers:
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        code = run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)
        for pid in _vllm_children(run.pid):
            _stop_group(pid)
    first = out_path.read_text()
    assert code == 2, first
    assert "Traceback" not in first
    assert "managed vLLM" in first and "CPU build" in first  # said which server
    assert "exited" in first or "killed" in first, first  # says the server went away
    assert f"gpo optimize --resume {run_dir}" in first, first

    resumed = run_gpo("optimize", "--resume", str(run_dir), "--no-progress", timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["status"] == "finished"
    assert all(task["steps_done"] == 2 for task in summary["tasks"])
    servers = read_servers(run_dir)
    assert len(servers) == 4 and {s["kind"] for s in servers} == {"managed-vllm"}, servers
    assert all("CPU build" in s["description"] and s["version"] for s in servers)
    assert (run_dir / "vllm-scorer.log").exists()
    assert not _vllm_children(os.getpid())
