"""Evaluation engine: turns "score these prompts on these samples" into requests, keeps a server's
batch full, and never loses finished work (scheduler, cache, limits, retries, budget, ledger,
evaluator).

The public names are re-exported here (see `__all__` and docs/python-api.md). A user's own
evaluation loop (a notebook, a DSPy-style program) drives the engine like this:

    from engine import (
        Completion,
        Engine,
        EngineConfig,
        OpenAICompatibleBackend,
        Request,
        SamplingParams,
    )


    async def ask_all(base_url: str, model: str, questions: list[str]) -> tuple[list[str], dict]:
        \"\"\"Ask every question at once; the engine batches, retries and counts tokens.\"\"\"
        backend = OpenAICompatibleBackend(base_url, model)  # a hosted URL reads OPENAI_API_KEY
        engine = Engine(backend, EngineConfig(max_retries=3))
        try:
            params = SamplingParams(max_tokens=64)
            requests = [Request(messages=(("user", q),), params=params) for q in questions]
            results = await engine.generate_many(requests)  # answers in input order
            answers = [r.text if isinstance(r, Completion) else f"failed: {r}" for r in results]
            usage = engine.ledger.snapshot()["totals"]  # requests, tokens, cost_usd, failures
        finally:
            await engine.close()  # also closes the backend's HTTP session
        return answers, usage

In a notebook: `answers, usage = await ask_all("http://127.0.0.1:8000/v1", "my-model", qs)`;
in a script: `asyncio.run(ask_all(...))`.
"""

from backends.errors import BackendError, ConfigError, GpoError
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Completion, Message, Purpose, Request, SamplingParams
from engine.budget import Budget, BudgetExhausted
from engine.cache import ResponseCache
from engine.config import EngineConfig
from engine.endpoint_pool import EndpointPool
from engine.engine import Engine
from engine.evaluator import EvaluationResult, Evaluator, EvaluatorSettings, SampleRecord
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from engine.queues import Priority
from engine.retry_policy import RequestFailed, RetryPolicy

__all__ = [
    "BackendError",
    "Budget",
    "BudgetExhausted",
    "Capabilities",
    "Completion",
    "ConfigError",
    "EndpointPool",
    "Engine",
    "EngineConfig",
    "EvaluationResult",
    "Evaluator",
    "EvaluatorSettings",
    "GpoError",
    "Ledger",
    "Message",
    "ModelPrice",
    "OpenAICompatibleBackend",
    "PriceTable",
    "Priority",
    "Purpose",
    "Request",
    "RequestFailed",
    "ResponseCache",
    "RetryPolicy",
    "SampleRecord",
    "SamplingParams",
]
