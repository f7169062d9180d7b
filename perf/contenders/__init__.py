"""The contenders: one module per dispatch pattern (this project's engine and the patterns peers
use), each defining its `CONTENDER`; `CONTENDERS` is the registry, by name, in table order."""

from __future__ import annotations

from perf.contenders import (
    async_openai,
    cookbook,
    dspy_evaluate,
    dspy_threads,
    engine,
    engine_windows,
    gpo_vllm,
    lm_eval,
    lm_eval_api,
    sequential,
)
from perf.contenders.base import Contender, RunContext, Transcript

REFERENCE = "engine"
"""The contender every other is compared with; it always runs its whole workload."""

CONTENDERS: dict[str, Contender] = {
    contender.name: contender
    for contender in (
        *(m.CONTENDER for m in (engine, sequential, gpo_vllm, dspy_threads, lm_eval)),
        *(m.CONTENDER for m in (async_openai, cookbook)),
        dspy_evaluate.CONTENDER,
        lm_eval_api.COMPLETIONS,
        lm_eval_api.CHAT,
    )
}
CONTENDERS.update((contender.name, contender) for contender in engine_windows.CONTENDERS)

__all__ = ["CONTENDERS", "REFERENCE", "Contender", "RunContext", "Transcript"]
