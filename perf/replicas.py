"""Workload R4: the engine on 4 simulated replicas (issue 17's "many replicas" Bar line).

    python bench.py --replicas                 # medians of 3 runs
    python -m perf.replicas --repeat 1 --candidates 8 --samples 24

Each replica is its own simulated vLLM-like server process (`backends.simulated`, the H100 step
model with prefix caching, as `perf.servers` starts them), on loopback; the engine (Engine +
Evaluator, ChatML prompt lists, as the "engine" contender runs) scores `candidates` x `samples`
chains of bbh/navigate (2 chat turns each) in this process. Every run starts fresh servers, so
every prefix cache starts empty. Per repeat, interleaved:

- `one`: the work on one replica (the throughput reference);
- `affinity`: on 4 replicas, `--scorer-routing affinity` (prefix affinity, bounded loads);
- `least-loaded`: on 4 replicas, `--scorer-routing least-loaded` (equal replicas take turns:
  round-robin in effect);
- `kill`: on 4 replicas with affinity, one replica SIGKILLed once 30 % of the chains are scored;
  counted: chains lost (failed or never answered) and calls the pool re-sent (its hit rate is
  the surviving replicas').

Figures: scored prompts per second; speed-up over `one`; the prefix-cache hit rate over all
replicas (`vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total` from each server's
/metrics: prompt tokens found cached over prompt tokens looked up). The servers' clock runs at
`time_scale` (default 1, real time: slower than the other workloads' 4) so that neither the
client nor the 4 server processes, which share the machine, are the bottleneck: the client's CPU
seconds per wall second are printed beside each run to show it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from backends.protocol import Capabilities
from backends.simulated import SimulatedServerConfig, start_server_process
from backends.simulated.process import SimulatedServerProcess
from benchmarks import Task, load_task
from engine.endpoint_spec import EndpointSpec, EngineSetSpec
from gpo.endpoints import open_engines
from perf.scales import TASK_NAME
from perf.servers import answer_key_for
from perf.workloads import candidate_prompts

REPLICAS = 4
MODES = ("one", "affinity", "least-loaded", "kill")
KILL_AT = 0.3
SPEED_UP_BAR = 3.6


@dataclass(frozen=True, slots=True)
class ReplicaRun:
    mode: str
    chains: int
    wall_s: float
    client_cpu_s: float
    hit_rate: float
    lost: int
    resent: int

    @property
    def rate(self) -> float:
        return self.chains / self.wall_s if self.wall_s > 0 else 0.0


def _hit_rate(servers: Sequence[SimulatedServerProcess], killed: int | None) -> float:
    """Prompt tokens found cached over those looked up, over every replica still serving."""
    hits = queries = 0.0
    for index, server in enumerate(servers):
        if index == killed:
            continue
        for key, value in server.metrics().items():
            name = key.partition("{")[0]
            hits += value if name == "vllm:prefix_cache_hits_total" else 0.0
            queries += value if name == "vllm:prefix_cache_queries_total" else 0.0
    return hits / queries if queries else 0.0


async def _score(
    task: Task, urls: Sequence[str], config: SimulatedServerConfig, mode: str, work: tuple
) -> tuple[int, int, int]:
    """(chains answered, chains lost, calls re-sent) for one run; `work` is (prompts,
    samples, the pid to SIGKILL at KILL_AT or None)."""
    from engine.evaluator import Evaluator, SampleRecord
    from gpo.task_view import TaskView

    prompts, samples, kill_pid = work
    spec = EndpointSpec(
        role="scorer",
        urls=tuple(urls),
        model=config.model,
        capabilities=Capabilities(max_concurrency=config.max_num_seqs),
        chat_template="chatml",
        probe=False,
        routing="least-loaded" if mode == "least-loaded" else "affinity",
    )
    total = len(prompts) * len(samples)
    done = lost = 0

    def record(item: SampleRecord) -> None:
        nonlocal done, lost
        done += 1
        lost += item.failure is not None
        if kill_pid is not None and done == int(total * KILL_AT):
            os.kill(kill_pid, signal.SIGKILL)

    async with open_engines(EngineSetSpec((spec,))) as engines:
        engine = engines["scorer"]
        evaluator = Evaluator(engine)
        view = TaskView(task, {"eval": samples})
        await evaluator.evaluate(view, prompts, "eval", on_record=record, keep_records=False)
        statuses = getattr(engine.backend, "status", lambda: ())()
        resent = sum(status.resent for status in statuses)
    return done - lost, lost + (total - done), resent


def run_once(task: Task, mode: str, candidates: int, samples: int, time_scale: float) -> ReplicaRun:
    """One measured run of `mode` on fresh servers."""
    config = SimulatedServerConfig(time_scale=time_scale)
    count = 1 if mode == "one" else REPLICAS
    servers = [start_server_process(config, answer_key=answer_key_for(task)) for _ in range(count)]
    try:
        prompts = candidate_prompts(candidates)
        chosen = task.split("eval")[:samples]
        killed = 1 if mode == "kill" else None
        kill_pid = servers[1].pid if killed is not None else None
        urls = [f"{server.url}/v1" for server in servers]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        answered, lost, resent = asyncio.run(
            _score(task, urls, config, mode, (prompts, chosen, kill_pid))
        )
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        hit_rate = _hit_rate(servers, killed)
    finally:
        for server in servers:
            server.stop()
    return ReplicaRun(mode, answered, wall, cpu, hit_rate, lost, resent)


def _median(runs: Sequence[ReplicaRun], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def run_replica_bench(
    repeat: int = 3, candidates: int = 64, samples: int = 48, time_scale: float = 1.0
) -> dict[str, list[ReplicaRun]]:
    """Every mode `repeat` times, interleaved; prints each run and the Bar lines."""
    task = load_task(TASK_NAME)
    runs: dict[str, list[ReplicaRun]] = {mode: [] for mode in MODES}
    print(
        f"R4: {candidates} candidates x {samples} dev samples x 2 chat turns, {REPLICAS} "
        f"simulated replicas (one process each), time_scale {time_scale:g}"
    )
    for index in range(repeat):
        for mode in MODES:
            run = run_once(task, mode, candidates, samples, time_scale)
            runs[mode].append(run)
            print(
                f"  run {index + 1} {mode:>12}: {run.rate:7.1f} scored/s, wall {run.wall_s:6.2f}"
                f" s, client CPU {run.client_cpu_s / run.wall_s:4.0%} of a core, prefix-cache "
                f"hit rate {run.hit_rate:.1%}, lost {run.lost}, re-sent calls {run.resent}"
            )
    for line in bar_lines(runs):
        print(line)
    return runs


def bar_lines(runs: dict[str, list[ReplicaRun]]) -> list[str]:
    """The Bar: speed-up >= 3.6x, affinity's hit rate above least-loaded's, nothing lost."""
    one = _median(runs["one"], "rate")
    four = _median(runs["affinity"], "rate")
    speed_up = four / one if one else 0.0
    hit_affinity = _median(runs["affinity"], "hit_rate")
    hit_even = _median(runs["least-loaded"], "hit_rate")
    lost = max(run.lost for run in runs["kill"])
    mark = {True: "PASS", False: "FAIL"}
    return [
        f"[{mark[speed_up >= SPEED_UP_BAR]}] R4 4 replicas: {speed_up:.2f}x one replica's "
        f"throughput (median {four:.1f} vs {one:.1f} scored/s; bar >= {SPEED_UP_BAR}x)",
        f"[{mark[hit_affinity > hit_even]}] R4 prefix-cache hit rate: affinity "
        f"{hit_affinity:.1%} vs least-loaded (round-robin) {hit_even:.1%}",
        f"[{mark[lost == 0]}] R4 one replica SIGKILLed at {KILL_AT:.0%}: {lost} chains lost "
        f"(worst of {len(runs['kill'])} runs), "
        f"{_median(runs['kill'], 'resent'):g} calls re-sent (median)",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    runs = run_replica_bench(args.repeat, args.candidates, args.samples, args.time_scale)
    return 0 if all(line.startswith("[PASS]") for line in bar_lines(runs)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
