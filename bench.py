"""Benchmark: the evaluation engine against the dispatch patterns peers use, on the same server.

    python bench.py                          # W1-W6, medians of 3 runs
    python bench.py --quick                  # every workload and contender, small (< 2 min)
    python bench.py --smoke                  # tiny and in-process, for the test suite
    python bench.py --workloads W1,W3 --repeat 5 --json out.json --markdown out.md
    python bench.py --full                   # adds W5 at 1M scored prompts
    python bench.py --url http://HOST:8000/v1 --model NAME   # a real `vllm serve`: ratios only
    python bench.py --check-estimate         # dry-run cost estimate vs the ledger of a real run
    python bench.py --replicas               # R4: 4 simulated replicas (perf/replicas.py)
    python bench.py --racing-replay          # racing on recorded real steps (perf/racing_replay.py)

bench.py starts the simulated vLLM-like server (`backends.simulated`) in its own process on
loopback, restarts it before every measured run (empty prefix cache, full rate-limit buckets),
and runs each contender in a fresh worker process, so that the client's CPU time and peak memory
are its own. A "scored prompt" is one (candidate prompt, dev sample) chain: the first chat turn
laid out by `benchmarks`, then the answer-pinning second turn built from the first answer, then
extraction and scoring. Every contender does exactly that work, and its answers are compared with
the engine's (the simulated server is deterministic), so no contender can win by doing less.

Workloads (bbh/navigate, reference prompts from the data as candidates):
  W1  one GPO step: 8 candidates x 48 dev samples x 2 chat turns.
  W2  one task's optimisation load as the optimizer submits it, step after step: the initial
      prompt on dev, 18 steps of W1, then initial and final prompt on the 144 test samples.
  W3  a hosted API in API mode: RPM and TPM limits enforced with 429s (W1's work).
  W4  W1 again on a warm response cache.
  W5  scale: 1k, 10k, 100k (and 1M with --full) scored prompts on a zero-service-time server.
  W6  client overhead: a zero-service-time server; client CPU per scored prompt.
  W7  the window: 3 steps of W1, no window configured (measured) vs hand-set 16/64/128/256.

Figures: wall time; scored prompts per second; percent of the server's theoretical limit (the
makespan of the workload with every round fully queued at t = 0, computed offline with the
server's own step model and answers by `backends.simulated.limit`; for W3, the workload's
requests, one per chat turn, over the requests the limits allowed during the run); the
contender's wall time over the engine's; client CPU seconds (`time.process_time` of the worker,
threads included; the server runs in another process); HTTP requests and 429s (the server's
/metrics, before and after); failures (chains the pattern gave up on); peak memory (the worker's
peak RSS during the run minus its RSS before it, libraries already imported: VmHWM reset through
/proc/self/clear_refs, ru_maxrss where /proc is unavailable). On the zero-service-time server
(W5, W6) each worker first scores up to 1,000 chains of other prompts, unmeasured, so that the
figures are a warm process's per-prompt cost, as in a long run, not its start-up (which would
fall on the smallest W5 size alone; the warm-up's freed memory may be reused by the measured run,
so its peak can read up to the warm-up's own few MB low). Every figure is the median of
`--repeat` runs. A contender too slow to finish within the run budget stops at a unit boundary
(a chain, a candidate or a round, as its pattern allows) and its totals are extrapolated linearly
from the measured prefix; the table marks them with "~". A contender that gives up on chains
re-runs them until they are answered (as a user would, from lm-eval's cache or the cookbook's
error file), with the time counted, so that every row ends with every request answered.

The simulated H100 runs `time_scale` times faster than real time (4 for W1, W2 and W4, 10 for
W3), so the whole benchmark takes about half an hour; the limit and every contender are measured
on the same clock, client CPU is real, and each pattern's fixed waits (OPRO's 30 s, tenacity's
1-10 s, the cookbook's 15 s pause) are given in simulated seconds. Against a real server
(`--url`) nothing is scaled, no limit is printed, W3, W5 and W6 are skipped (they need the
simulated server's API and zero-latency modes), and vLLM's prefix cache is reset between runs
where the server allows it (VLLM_SERVER_DEV_MODE=1).

This file is the front door: the flags, the settings, the run over the workloads, the tables.
The measurement itself lives in `perf/`: the workloads (`perf.workloads`, `perf.rounds`), the
servers and their limits (`perf.servers`, `perf.limits`), one module per contender
(`perf/contenders/`), the measuring worker (`perf.worker`), the results, tables and Bar
(`perf.results`, `perf.reports`, `perf.bar`) and the estimate check (`perf.estimate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import Task, load_task
from perf.bar import bar_lines
from perf.contenders import CONTENDERS, REFERENCE
from perf.estimate import check_estimate
from perf.limits import workload_limit
from perf.racing_replay import main as racing_replay_main
from perf.replicas import main as replicas_main
from perf.reports import render_markdown, render_table
from perf.results import (
    WorkloadReport,
    borrowed_row,
    compare_answers,
    extrapolated_wall_s,
    run_notes,
    summarise_runs,
)
from perf.rounds import WARM_UP_SCORED_PROMPTS
from perf.scales import SCALES, TASK_NAME, Scale
from perf.servers import (
    API_BURST_FRACTION,
    API_REQUESTS_PER_MINUTE,
    API_TOKENS_PER_MINUTE,
    Endpoint,
    ServerHandle,
    answer_key_for,
    describe_server,
    real_endpoint,
    reset_prefix_cache,
)
from perf.worker import RunResult, RunSpec, run_in_worker
from perf.workloads import Workload, build_workloads, select_workloads

UNLIMITED_BUDGET_S = 1e9
"""The engine is the reference: it always runs its whole workload."""


@dataclass(frozen=True, slots=True)
class BenchSettings:
    scale: Scale
    repeat: int
    workloads: tuple[str, ...]
    full: bool
    budget_s: float
    url: str | None = None
    model: str | None = None
    chat_template: str = "chatml"
    max_num_seqs: int = 256
    contenders: tuple[str, ...] | None = None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmark(settings: BenchSettings, task: Task) -> list[WorkloadReport]:
    """Measure every chosen workload; print each one's table as soon as it is done."""
    bench = _BenchRun(settings, task, Path(tempfile.mkdtemp(prefix="gpo-bench-")))
    workloads = build_workloads(settings.scale, full=settings.full)
    try:
        for key in settings.workloads:
            report = bench.run_workload(workloads[key])
            if report is not None:
                bench.reports.append(report)
                print(render_table(report), flush=True)
    finally:
        bench.close()
    return bench.reports


class _BenchRun:
    """The state one benchmark run shares across workloads: the simulated servers (one per
    kind), the response caches workloads filled for later ones, the finished reports."""

    def __init__(self, settings: BenchSettings, task: Task, temp_dir: Path) -> None:
        self.settings = settings
        self.task = task
        self.answer_key = answer_key_for(task)
        self.temp_dir = temp_dir
        self.servers: dict[str, ServerHandle] = {}
        self.filled_caches: dict[str, str] = {}
        self.reports: list[WorkloadReport] = []

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        for path in self.temp_dir.glob("*"):
            path.unlink(missing_ok=True)
        self.temp_dir.rmdir()

    def report(self, key: str) -> WorkloadReport | None:
        return next((r for r in self.reports if r.key == key), None)

    def server_for(self, workload: Workload) -> tuple[ServerHandle | None, Endpoint] | None:
        """The simulated server for the workload's kind (started once), or the real endpoint;
        None when the workload needs a simulated server's mode and the endpoint is real."""
        settings = self.settings
        if settings.url is not None:
            if workload.server in ("api", "zero"):
                return None
            args = (settings.model or "", settings.chat_template, settings.max_num_seqs)
            return None, real_endpoint(settings.url, *args)
        if workload.server not in self.servers:
            self.servers[workload.server] = ServerHandle(
                workload.server, settings.scale, self.answer_key
            )
        server = self.servers[workload.server]
        return server, server.endpoint()

    def run_workload(self, workload: Workload) -> WorkloadReport | None:
        settings = self.settings
        found = self.server_for(workload)
        if found is None:
            _log(
                f"{workload.key}: skipped against a real endpoint "
                "(needs the simulated server's mode)"
            )
            return None
        server, endpoint = found
        limit_s, limit_note = workload_limit(workload, server, endpoint, self.task, self.answer_key)
        report = WorkloadReport(
            workload.key,
            workload.title,
            workload.description,
            describe_server(server.config) if server else f"{settings.url} ({settings.model})",
            limit_s,
            limit_note,
        )
        names = [
            n
            for n in workload.contenders
            if settings.contenders is None or n in settings.contenders or n == REFERENCE
        ]
        budget_s = (
            settings.scale.zero_latency_budget_s if workload.zero_latency else settings.budget_s
        )
        borrowed = self._borrowed(workload, names)
        runs: dict[str, list[RunResult]] = {n: [] for n in names if n not in borrowed}
        for repeat in range(settings.repeat):
            for name in runs:
                if server is not None:
                    server.fresh()
                else:
                    reset_prefix_cache(endpoint)
                runs[name].append(self._measure(workload, name, repeat, endpoint, budget_s))
        self._fill_rows(report, workload, names, runs, budget_s, endpoint)
        return report

    def _borrowed(self, workload: Workload, names: Sequence[str]) -> set[str]:
        """Contenders without a cache on a warm-cache workload that show the cold one's row."""
        source = self.report(workload.warm_from) if workload.warm_from else None
        if source is None:
            return set()
        return {n for n in names if not CONTENDERS[n].has_cache and source.row(n) is not None}

    def _measure(
        self, workload: Workload, name: str, repeat: int, endpoint: Endpoint, budget_s: float
    ) -> RunResult:
        """One run of one contender, with the response cache the workload calls for."""
        settings, scale, key = self.settings, self.settings.scale, workload.key
        cache, warm_from = CONTENDERS[name].cache, workload.warm_from
        cache_path: str | None = None
        warm_up = False
        if cache == "file" and workload.fills_cache:
            cache_path = str(self.temp_dir / f"{key.lower()}-{repeat}.sqlite")
            self.filled_caches.setdefault(key, cache_path)
        elif cache == "file" and warm_from is not None:
            warm_up = warm_from not in self.filled_caches
            cache_path = self.filled_caches.get(warm_from) or str(
                self.temp_dir / f"{key.lower()}.sqlite"
            )
        elif cache == "memory" and warm_from is not None:
            warm_up = True
        spec = RunSpec(
            key,
            scale.name,
            settings.full,
            name,
            endpoint.to_json(),
            budget_s if name != REFERENCE else UNLIMITED_BUDGET_S,
            chain_cap=_chain_cap(workload, name, scale.round_cap),
            cache_path=cache_path,
            warm_up_first=warm_up,
            warm_up_process=workload.zero_latency,
        )
        _log(f"{key} run {repeat + 1}/{settings.repeat}: {name} ...")
        result = run_in_worker(spec, scale.in_process, self.task)
        _log(
            f"    {result.wall_s:.2f} s for {result.scored_prompts_run:,} of "
            f"{result.scored_prompts_total:,} scored prompts, "
            f"cpu {result.client_cpu_s:.2f} s, failures {result.failures}"
        )
        if cache == "file" and warm_from is not None and warm_up and cache_path is not None:
            self.filled_caches[warm_from] = cache_path
        return result

    def _fill_rows(
        self,
        report: WorkloadReport,
        workload: Workload,
        names: Sequence[str],
        runs: dict[str, list[RunResult]],
        budget_s: float,
        endpoint: Endpoint,
    ) -> None:
        """One row per contender, in table order; answers compared with the engine's."""
        engine_runs = runs.get(REFERENCE) or []
        engine_wall = extrapolated_wall_s(engine_runs)
        reference = engine_runs[0].digests if engine_runs else None
        for name in names:
            if name not in runs:
                assert workload.warm_from is not None
                source = self.report(workload.warm_from)
                row = source.row(name) if source is not None else None
                assert row is not None
                report.rows.append(borrowed_row(row, workload.warm_from, engine_wall))
                continue
            name_runs = runs[name]
            if not name_runs:
                continue
            answers = "reference"
            if name != REFERENCE and reference is not None:
                answers = compare_answers(reference, name_runs[0].digests)
            report.rows.append(
                summarise_runs(
                    name,
                    name_runs,
                    report.limit_s,
                    engine_wall,
                    answers,
                    api_limits=endpoint.api_limits,
                    time_scale=endpoint.time_scale,
                    note=run_notes(name_runs, budget_s),
                )
            )


def _chain_cap(workload: Workload, contender: str, cap: int) -> int | None:
    """Patterns that gather a whole round at once cannot stop early: on the big zero-latency
    workloads they are measured on a prefix of whole prompts instead."""
    if contender == REFERENCE or CONTENDERS[contender].unit != "round":
        return None
    if not workload.zero_latency or workload.scored_prompts <= cap:
        return None
    return cap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Measure the engine against peers' dispatch patterns on the simulated server.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, one run (< 2 minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, in-process (seconds)")
    parser.add_argument("--full", action="store_true", help="add W5 at 1M scored prompts")
    parser.add_argument("--replicas", action="store_true", help="only R4 (perf/replicas.py)")
    parser.add_argument("--racing-replay", action="store_true", help="only the racing replay")
    parser.add_argument("--workloads", help="comma-separated, e.g. W1,W3 (default: all)")
    parser.add_argument("--contenders", help="comma-separated subset (the engine always runs)")
    parser.add_argument("--repeat", type=int, help="runs per contender; medians are reported")
    parser.add_argument("--budget-s", type=float, help="run budget before extrapolating")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write Markdown tables")
    parser.add_argument("--url", help="a real OpenAI-compatible server (e.g. vllm serve), /v1")
    parser.add_argument("--model", help="the model name the real server serves")
    parser.add_argument(
        "--chat-template", default="chatml", help="the real model's chat template (chatml, ...)"
    )
    parser.add_argument("--max-num-seqs", type=int, default=256, help="the real server's batch")
    parser.add_argument(
        "--check-estimate", action="store_true", help="compare the dry-run cost estimate"
    )
    args = parser.parse_args(argv)
    if args.url and not args.model:
        parser.error("--url needs --model NAME")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.contenders:
        unknown = [c.strip() for c in args.contenders.split(",") if c.strip() not in CONTENDERS]
        if unknown:
            parser.error(
                f"--contenders: unknown {', '.join(unknown)}; known: {', '.join(CONTENDERS)}"
            )
    return args


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    available = list(build_workloads(scale, full=args.full))
    order = sorted(available, key=lambda k: (k[:2], k != "W5-1k", len(k), k))
    return BenchSettings(
        scale=scale,
        repeat=args.repeat or scale.repeat,
        workloads=()
        if args.check_estimate and not args.workloads
        else select_workloads(args.workloads, order),
        full=args.full,
        budget_s=args.budget_s if args.budget_s is not None else scale.run_budget_s,
        url=args.url,
        model=args.model,
        chat_template=args.chat_template,
        max_num_seqs=args.max_num_seqs,
        contenders=tuple(c.strip() for c in args.contenders.split(","))
        if args.contenders
        else None,
    )


def describe_parameters(settings: BenchSettings) -> dict[str, Any]:
    """What the run measured and how, printed first and written with the results."""
    scale = settings.scale
    return {
        "mode": scale.name,
        "task": TASK_NAME,
        "repeat": settings.repeat,
        "run budget s": settings.budget_s,
        "scorer model": "simulated Llama-2-7b-chat, one H100 80GB, vLLM "
        "(max_num_seqs 256, 8192 batched tokens, chunked prefill, prefix caching)"
        if not settings.url
        else f"{settings.model} at {settings.url}",
        "time_scale": f"{scale.time_scale:g} (W1, W2, W4), {scale.api_time_scale:g} (W3): "
        "simulated seconds per real second",
        "peak memory": "worker's peak RSS during the run minus its RSS before (VmHWM reset via "
        "/proc/self/clear_refs; ru_maxrss where /proc is unavailable)",
        "W3 engine limits": f"{API_REQUESTS_PER_MINUTE * API_BURST_FRACTION:g} requests and "
        f"{API_TOKENS_PER_MINUTE * API_BURST_FRACTION:,.0f} tokens per "
        f"{60 * API_BURST_FRACTION:g} simulated s (the limits as the server enforces them); "
        "the cookbook is given the per-minute figures, which is all it takes",
        "client CPU": "worker's process_time (all threads); the server is another process",
        "W5/W6 warm-up": f"each worker first scores up to {WARM_UP_SCORED_PROMPTS:,} chains of "
        "other prompts, unmeasured (a warm process's per-prompt cost, not its start-up)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replicas:
        return replicas_main(["--repeat", str(args.repeat or 3)])
    if args.racing_replay:
        return racing_replay_main([])
    settings = settings_from_args(args)
    task = load_task(TASK_NAME)
    parameters = describe_parameters(settings)
    print("bench.py parameters:")
    for name, value in parameters.items():
        print(f"  {name}: {value}")
    reports = run_benchmark(settings, task)
    estimate = check_estimate(task) if args.check_estimate else None
    bar = bar_lines(reports, estimate)
    print("\n== Bar ==")
    for line in bar:
        print(line.render())
    if args.json:
        payload = {
            "parameters": parameters,
            "workloads": [r.to_json() for r in reports],
            "bar": [dataclasses.asdict(line) for line in bar],
            "estimate": dataclasses.asdict(estimate) if estimate else None,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    if args.markdown:
        args.markdown.write_text(render_markdown(reports, parameters, bar))
    return 0


if __name__ == "__main__":
    sys.exit(main())
