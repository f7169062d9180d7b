"""Contender "dspy-evaluate" (DSPy's own code, from the `bench` extra): per candidate, one
`dspy.Evaluate` with its defaults (threads from `dspy.settings`, 8) over the samples; the
program is a `dspy.Module` whose two chat turns go through a real `dspy.LM` (LiteLLM's OpenAI
client, 3 retries, DSPy's in-memory cache; the on-disk cache off, so a repeat starts cold)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks import Sample
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, chat_messages, first_turn

# LiteLLM would fetch its model price map from the network at import; DSPy would write its
# disk cache under the home directory. Neither belongs in a measurement.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), "gpo-bench-dspy"))


def run_dspy_evaluate(ctx: RunContext) -> None:
    """Per candidate, `dspy.Evaluate(devset=..., metric=...)` with DSPy's defaults."""
    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    endpoint = ctx.endpoint
    lm = dspy.LM(
        f"openai/{endpoint.model}",
        api_base=endpoint.base_url,
        api_key=endpoint.api_key,
        temperature=0.0,
    )

    class TwoTurns(dspy.Module):  # type: ignore[misc]
        def __init__(self, prompt: str) -> None:
            super().__init__()
            self.prompt = prompt

        def forward(self, sample: Sample) -> Any:
            first = first_turn(ctx, self.prompt, sample)
            first_tokens = FIRST_TURN_PARAMS.max_tokens
            answers = [lm(messages=chat_messages(first), max_tokens=first_tokens)[0]]
            second = ctx.conversation(first, answers[0], sample)
            if second is not None:
                answers.append(
                    lm(messages=chat_messages(second), max_tokens=FOLLOW_UP_PARAMS.max_tokens)[0]
                )
            return dspy.Prediction(answers=answers)

    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        from benchmarks import score_answer

        return score_answer(ctx.task, example.sample, prediction.answers[-1])

    with dspy.context(lm=lm):
        for plan in ctx.rounds:
            for group in plan.groups:
                if ctx.chains_done and ctx.out_of_time():
                    return
                devset = [dspy.Example(sample=s).with_inputs("sample") for _, s in group.chains]
                evaluate = dspy.Evaluate(devset=devset, metric=metric, max_errors=len(devset))
                result = evaluate(TwoTurns(group.prompt))
                for (chain, sample), (_, prediction, _) in zip(
                    group.chains, result.results, strict=True
                ):
                    answers = getattr(prediction, "answers", None)
                    if answers:
                        ctx.finish(chain, sample, answers)
                    else:
                        ctx.fail(chain)


CONTENDER = Contender(
    "dspy-evaluate",
    "DSPy 3 dspy.Evaluate, its defaults (8 threads), dspy.LM two-turn module, candidates in turn",
    "candidate",
    run_dspy_evaluate,
    extra="dspy",
)
