"""A simulated vLLM-like OpenAI server: the load and fault instrument for tests and the benchmark.

It is faithful where throughput is decided (continuous batching with `max_num_seqs` and a token
budget per step, prefill vs decode cost, prefix caching in 16-token blocks; see `batching.py`),
speaks the OpenAI protocol as vLLM serves it (`openai_schema.py`, `app.py`), imitates hosted APIs'
rate limits (`rate_limits.py`), injects faults on demand (`faults.py`), and answers scoring and
optimizer prompts plausibly and deterministically (`answers.py`, `meta_prompts.py`). Its physical
limit for a workload is computed offline by `limit.py`. Run it in-process (`SimulatedServer`), in
a child process (`start_server_process`) or from the command line (`python -m backends.simulated`).
"""

from __future__ import annotations

from backends.simulated.answer_key import AnswerKey
from backends.simulated.answers import correctness_probability, is_correct
from backends.simulated.config import FaultRates, OutputLengths, RateLimits, SimulatedServerConfig
from backends.simulated.embeddings import embed_text
from backends.simulated.limit import (
    ThroughputLimit,
    analyse_workload,
    theoretical_makespan,
    theoretical_throughput,
    workload_from_prompts,
)
from backends.simulated.metrics import metric_total, parse_prometheus
from backends.simulated.process import SimulatedServerProcess, start_server_process
from backends.simulated.server import SimulatedServer
from backends.simulated.tokens import count_tokens, prefix_block_hashes, truncate_to_tokens

__all__ = [
    "AnswerKey",
    "FaultRates",
    "OutputLengths",
    "RateLimits",
    "SimulatedServer",
    "SimulatedServerConfig",
    "SimulatedServerProcess",
    "ThroughputLimit",
    "analyse_workload",
    "correctness_probability",
    "count_tokens",
    "embed_text",
    "is_correct",
    "metric_total",
    "parse_prometheus",
    "prefix_block_hashes",
    "start_server_process",
    "theoretical_makespan",
    "theoretical_throughput",
    "truncate_to_tokens",
    "workload_from_prompts",
]
