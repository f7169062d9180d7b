"""Contender "gpo-vllm" (the GPO reference with vLLM): per candidate, all first turns as one
offline batch, then all second turns as another; candidates in turn."""

from __future__ import annotations

from backends.chat_template import get_chat_template
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, first_turn


def run_gpo_vllm(ctx: RunContext) -> None:
    """Per candidate: all first turns as one offline batch, then all second turns as another.

    The reference calls `LLM.generate` with the rendered prompts of one candidate; over HTTP the
    same batch is one `/v1/completions` call with a prompt list, answered when all are done.
    """
    import openai

    render = get_chat_template(ctx.endpoint.chat_template)
    client = openai.OpenAI(
        base_url=ctx.endpoint.base_url, api_key=ctx.endpoint.api_key, max_retries=0
    )

    def generate(prompts: list[str], max_tokens: int) -> list[str]:
        response = client.completions.create(
            model=ctx.endpoint.model, prompt=prompts, max_tokens=max_tokens, temperature=0.0
        )
        texts = [""] * len(prompts)
        for choice in response.choices:
            texts[choice.index] = choice.text
        return texts

    try:
        for plan in ctx.rounds:
            for group in plan.groups:
                if ctx.chains_done and ctx.out_of_time():
                    return
                samples = group.samples
                firsts = [first_turn(ctx, group.prompt, sample) for sample in samples]
                try:
                    first_answers = generate(
                        [render(m) for m in firsts], FIRST_TURN_PARAMS.max_tokens
                    )
                    seconds = [
                        ctx.conversation(m, a, sample)
                        for m, a, sample in zip(firsts, first_answers, samples, strict=True)
                    ]
                    pending = [i for i, c in enumerate(seconds) if c is not None]
                    second_answers = (
                        generate(
                            [render(seconds[i]) for i in pending],  # type: ignore[arg-type]
                            FOLLOW_UP_PARAMS.max_tokens,
                        )
                        if pending
                        else []
                    )
                except openai.APIError:
                    for chain, _ in group.chains:
                        ctx.fail(chain)
                    continue
                by_sample = dict(zip(pending, second_answers, strict=True))
                for s, (chain, sample) in enumerate(group.chains):
                    answers = [first_answers[s]]
                    if s in by_sample:
                        answers.append(by_sample[s])
                    ctx.finish(chain, sample, answers)
    finally:
        client.close()


CONTENDER = Contender(
    "gpo-vllm",
    "GPO reference with vLLM: one candidate's samples per batch, candidates in turn",
    "candidate",
    run_gpo_vllm,
)
