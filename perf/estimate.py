"""The estimate check (`bench.py --check-estimate`): estimate a small GPO run dry, run it against
the simulated server, and compare the estimate with the engines' ledgers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks import Task
from engine.evaluator import FIRST_TURN_PARAMS
from perf.contenders.base import run_async
from perf.engines import open_estimate_engines
from perf.servers import answer_key_for

CHECK_STEPS = 4
CHECK_CANDIDATES = 8
CHECK_DEV = 24
CHECK_TEST = 48


@dataclass(frozen=True, slots=True)
class EstimateCheck:
    estimated: dict[str, int]
    measured: dict[str, int]

    def error(self, key: str) -> float:
        measured = self.measured[key]
        return (self.estimated[key] - measured) / measured if measured else 0.0

    def within(self, tolerance: float) -> bool:
        return all(abs(self.error(k)) <= tolerance for k in ("scorer_tokens", "total_tokens"))

    def describe(self) -> str:
        parts = []
        for key in (
            "scorer_calls",
            "optimizer_calls",
            "scorer_tokens",
            "optimizer_tokens",
            "total_tokens",
        ):
            parts.append(
                f"{key} {self.estimated[key]:,} vs {self.measured[key]:,} "
                f"({100 * self.error(key):+.1f}%)"
            )
        return "; ".join(parts)


def check_estimate(task: Task) -> EstimateCheck:
    """Estimate a small GPO run dry, run it against the simulated server, compare with the ledger.

    Scorer and optimizer are both the simulated server (zero service time, so the run is quick);
    the estimate uses the server's tokenizer and its expected output lengths.
    """
    from backends.simulated import SimulatedServerConfig, start_server_process
    from backends.simulated.tokens import count_tokens
    from gpo.config import OptimizerConfig
    from gpo.cost_estimate import estimate_for_config, expected_output_tokens

    config = OptimizerConfig(
        steps=CHECK_STEPS,
        candidates=CHECK_CANDIDATES,
        dev_size=CHECK_DEV,
        test_size=CHECK_TEST,
    )
    server_config = SimulatedServerConfig(zero_latency=True)
    estimate = estimate_for_config(
        task,
        config,
        tokenizer=count_tokens,
        first_turn_output_tokens=expected_output_tokens(
            server_config.output_lengths, FIRST_TURN_PARAMS.max_tokens
        ),
        chat_template="chatml",
    )
    with start_server_process(server_config, answer_key=answer_key_for(task)) as server:
        ledgers = _run_optimization(task, config, f"{server.url}/v1", server_config.model)
    scorer, optimizer = ledgers
    measured = {
        "scorer_calls": scorer["requests"],
        "optimizer_calls": optimizer["requests"],
        "scorer_tokens": scorer["total_tokens"],
        "optimizer_tokens": optimizer["total_tokens"],
        "total_tokens": scorer["total_tokens"] + optimizer["total_tokens"],
    }
    estimated = {
        "scorer_calls": estimate.scorer_calls,
        "optimizer_calls": estimate.optimizer_calls,
        "scorer_tokens": estimate.scorer_prompt_tokens + estimate.scorer_completion_tokens,
        "optimizer_tokens": estimate.optimizer_prompt_tokens + estimate.optimizer_completion_tokens,
        "total_tokens": estimate.prompt_tokens + estimate.completion_tokens,
    }
    return EstimateCheck(estimated, measured)


def _run_optimization(
    task: Task, config: Any, base_url: str, model: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    from engine.evaluator import Evaluator
    from gpo.embedders import EmbedderConfig, make_embedder
    from gpo.optimizer import PromptOptimizer

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        embedder = make_embedder(EmbedderConfig())
        async with open_estimate_engines(base_url, model) as (scorer, optimizer):
            loop = PromptOptimizer(
                config, evaluator=Evaluator(scorer), optimizer=optimizer, embedder=embedder
            )
            await loop.run(task)
        await embedder.close()
        return scorer.ledger.snapshot()["totals"], optimizer.ledger.snapshot()["totals"]

    return run_async(main(), uvloop_loop=True)
