"""The measuring worker: one contender on one workload in a fresh process (`python -m perf.worker
SPEC`), so that its client CPU time and peak memory are its own; a run that gives up on chains
re-runs them until they are answered, with the time counted.

Peak memory is the worker's peak RSS during the run minus its RSS before it, libraries already
imported: VmHWM reset through /proc/self/clear_refs, ru_maxrss where /proc is unavailable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import Task, load_task
from perf.contenders import CONTENDERS, RunContext, Transcript
from perf.peer_env import INSTALL_HINT, worker_python
from perf.rounds import RoundPlan, failed_chains, plan_rounds, warm_up_rounds
from perf.scales import SCALES, TASK_NAME
from perf.servers import Endpoint, server_counts
from perf.workloads import build_workloads

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_RERUN_PASSES = 100
RERUN_TIME_LIMIT_S = 600.0


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One measured run, passed to a worker process as JSON."""

    workload: str
    scale: str
    full: bool
    contender: str
    endpoint: dict[str, Any]
    budget_s: float
    chain_cap: int | None = None
    cache_path: str | None = None
    warm_up_first: bool = False
    """Run the whole workload once, unmeasured, first: fills the contender's own cache."""
    warm_up_process: bool = False
    """Score other prompts first, unmeasured: a warm process's per-prompt cost (W5, W6)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run measured (before extrapolation)."""

    contender: str
    workload: str
    scored_prompts_total: int
    scored_prompts_run: int
    wall_s: float
    client_cpu_s: float
    peak_memory_mb: float
    memory_method: str
    http_requests: int | None
    rate_limited_429: int | None
    answered_requests: int | None
    failures: int
    rerun_passes: int
    unanswered: int
    answered_turns: int
    digests: list[str | None]


def _read_status_kb(name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _PeakMemory:
    """The worker's peak RSS from `start()` on, over its RSS at `start()`, in MB."""

    def start(self) -> None:
        gc.collect()
        self.peak_reset = _reset_peak_rss()
        self.rss_before_kb = _read_status_kb("VmRSS") or 0
        self.maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def read(self) -> tuple[float, str]:
        if self.peak_reset and (peak_kb := _read_status_kb("VmHWM")) is not None:
            return max(0, peak_kb - self.rss_before_kb) / 1024, "VmHWM - VmRSS before (clear_refs)"
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_kb = max(0, maxrss - max(self.rss_before_kb, self.maxrss_before_kb))
        return peak_kb / 1024, "ru_maxrss delta"


CLIENT_MODULES = (
    "aiohttp",
    "openai",
    "tenacity",
    "uvloop",
    "dspy",
    "lm_eval.models.openai_completions",
    "backends.openai_client",
    "backends.simulated.tokens",
    "engine.backend_kinds",
    "engine.cache",
    "engine.engine",
    "engine.evaluator",
    "gpo.endpoints",
    "gpo.task_view",
)


def preload_client_modules() -> None:
    """Import every contender's libraries before measuring, so no run pays for imports."""
    for name in CLIENT_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def measure(spec: RunSpec, task: Task | None = None) -> RunResult:
    """Run one contender on one workload and measure it."""
    preload_client_modules()
    task = task or load_task(TASK_NAME)
    workload = build_workloads(SCALES[spec.scale], full=spec.full)[spec.workload]
    endpoint = Endpoint.from_json(spec.endpoint, os.environ.get("OPENAI_API_KEY", "sk-bench"))
    run = CONTENDERS[spec.contender].run
    rounds = plan_rounds(workload, task, spec.chain_cap)
    total = workload.scored_prompts
    memory_cache: dict[str, str] | None = {} if spec.warm_up_first else None

    def context(budget_s: float, plans: list[RoundPlan], size: int) -> RunContext:
        deadline = time.perf_counter() + budget_s
        return RunContext(
            task,
            plans,
            endpoint,
            Transcript(size),
            deadline,
            cache_path=spec.cache_path,
            memory_cache=memory_cache,
        )

    if spec.warm_up_first:
        run(context(float("inf"), rounds, total))
    if spec.warm_up_process:
        # Bounded by the run budget like the measured run, so slow patterns warm up briefly.
        warm = warm_up_rounds(workload, task)
        run(context(spec.budget_s, warm, sum(plan.chains for plan in warm)))
    ctx = context(spec.budget_s, rounds, total)
    memory = _PeakMemory()
    memory.start()
    counts_before = server_counts(endpoint.metrics_url)
    cpu_started = time.process_time()
    started = time.perf_counter()
    run(ctx)
    passes = _rerun_failures(run, ctx, rounds, started)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    counts_after = server_counts(endpoint.metrics_url)
    peak_mb, method = memory.read()
    http = limited = answered = None
    if counts_before is not None and counts_after is not None:
        http, limited, answered = (a - b for a, b in zip(counts_after, counts_before, strict=True))
    transcript = ctx.transcript
    return RunResult(
        spec.contender,
        spec.workload,
        total,
        ctx.chains_done,
        wall,
        cpu,
        peak_mb,
        method,
        http,
        limited,
        answered,
        transcript.failed,
        passes,
        len(transcript.unanswered),
        sum(len(a) for a in transcript.answers if a is not None),
        transcript.digests(),
    )


def _rerun_failures(
    run: Callable[[RunContext], None], ctx: RunContext, rounds: list[RoundPlan], started: float
) -> int:
    """Re-run what failed, as a user would (lm-eval's cache, the cookbook's error file make that
    easy), until every chain is answered or the bounds are reached; returns the passes made.
    The time counts, so that every contender ends with every request answered."""
    passes = 0
    rerun_deadline = started + RERUN_TIME_LIMIT_S
    while (
        ctx.transcript.unanswered
        and passes < MAX_RERUN_PASSES
        and time.perf_counter() < rerun_deadline
    ):
        passes += 1
        rerun = dataclasses.replace(
            ctx,
            rounds=failed_chains(rounds, ctx.transcript.unanswered),
            deadline=float("inf"),
            chains_done=0,
        )
        run(rerun)
    return passes


def worker_main(spec_path: Path) -> int:
    """`python -m perf.worker PATH`: run the RunSpec in PATH, write the RunResult to PATH.result."""
    spec = RunSpec(**json.loads(spec_path.read_text()))
    result = measure(spec)
    spec_path.with_suffix(".result").write_text(json.dumps(dataclasses.asdict(result)))
    return 0


def run_in_worker(spec: RunSpec, in_process: bool, task: Task) -> RunResult:
    """Measure `spec` in a fresh worker process (or in this one, for the smoke test); a peer's
    own code runs under the interpreter that has it (`perf.peer_env`)."""
    python = worker_python(CONTENDERS[spec.contender].extra)
    if python is None:
        raise RuntimeError(f"{spec.contender} needs the bench extra: {INSTALL_HINT}")
    if in_process and python == sys.executable:
        return measure(spec, task)
    with tempfile.TemporaryDirectory(prefix="gpo-bench-run-") as folder:
        spec_path = Path(folder) / "spec.json"
        spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
        completed = subprocess.run(
            [python, "-m", "perf.worker", str(spec_path)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"worker for {spec.contender} on {spec.workload} failed:\n"
                f"{completed.stderr[-3000:]}"
            )
        return RunResult(**json.loads(spec_path.with_suffix(".result").read_text()))


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1])))
