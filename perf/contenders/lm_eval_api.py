"""Contenders "lm-eval-completions" and "lm-eval-chat" (lm-evaluation-harness's own code, from
the `bench` extra): its `local-completions` and `local-chat-completions` models driven as the
harness drives them, `generate_until` over every request of a pass, one pass per turn per
candidate, as an evaluation of a task with 2 turns would. Model arguments as its users give them
for a vLLM server: `num_concurrent=32`, `max_retries=3`, no tokenizer (`tokenizer_backend=None`,
`tokenized_requests=False`), greedy; completions get the chat rendered with the model's template
(what `--apply_chat_template` renders), chat gets the messages as `JsonChatStr`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from backends.chat_template import get_chat_template
from backends.protocol import Message
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.contenders.base import Contender, RunContext, chat_messages, first_turn
from perf.rounds import PromptGroup

NUM_CONCURRENT = 32
MAX_RETRIES = 3


def _model(ctx: RunContext, chat: bool) -> Any:
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

    endpoint = ctx.endpoint
    kind, route = (
        (LocalChatCompletion, "chat/completions") if chat else (LocalCompletionsAPI, "completions")
    )
    return kind(
        base_url=f"{endpoint.base_url}/{route}",
        model=endpoint.model,
        num_concurrent=NUM_CONCURRENT,
        max_retries=MAX_RETRIES,
        tokenizer_backend=None,
        tokenized_requests=False,
        header={"Authorization": f"Bearer {endpoint.api_key}"},
    )


def _context(chat: bool, template: str, messages: Sequence[Message]) -> Any:
    from lm_eval.models.api_models import JsonChatStr

    if chat:
        return JsonChatStr(json.dumps(chat_messages(messages), ensure_ascii=False))
    return get_chat_template(template)(messages)


def _generate(
    lm: Any, chat: bool, template: str, conversations: Sequence[Sequence[Message]], max_tokens: int
) -> list[str | None]:
    from lm_eval.api.instance import Instance

    kwargs = {"until": [], "max_gen_toks": max_tokens, "do_sample": False, "temperature": 0}
    requests = [
        Instance("generate_until", {}, (_context(chat, template, m), dict(kwargs)), i)
        for i, m in enumerate(conversations)
    ]
    try:
        return list(lm.generate_until(requests, disable_tqdm=True))
    except Exception:  # the harness stops the pass on a request that failed for good
        return [None] * len(requests)


def _score_candidate(ctx: RunContext, lm: Any, chat: bool, group: PromptGroup) -> None:
    template = ctx.endpoint.chat_template
    firsts = [first_turn(ctx, group.prompt, sample) for _, sample in group.chains]
    first_answers = _generate(lm, chat, template, firsts, FIRST_TURN_PARAMS.max_tokens)
    seconds: dict[int, tuple[Message, ...]] = {}
    for i, (_, sample) in enumerate(group.chains):
        answer = first_answers[i]
        conversation = None if answer is None else ctx.conversation(firsts[i], answer, sample)
        if conversation is not None:
            seconds[i] = conversation
    second_answers = dict(
        zip(
            seconds,
            _generate(lm, chat, template, list(seconds.values()), FOLLOW_UP_PARAMS.max_tokens),
            strict=True,
        )
    )
    for i, (chain, sample) in enumerate(group.chains):
        answers = [first_answers[i], *([second_answers[i]] if i in seconds else [])]
        if any(a is None for a in answers):
            ctx.fail(chain)
        else:
            ctx.finish(chain, sample, answers)  # type: ignore[arg-type]


def _runner(chat: bool) -> Any:
    def run(ctx: RunContext) -> None:
        lm = _model(ctx, chat)
        for plan in ctx.rounds:
            for group in plan.groups:
                if ctx.chains_done and ctx.out_of_time():
                    return
                _score_candidate(ctx, lm, chat, group)

    return run


COMPLETIONS = Contender(
    "lm-eval-completions",
    f"lm-eval 0.4 local-completions, num_concurrent {NUM_CONCURRENT}, a pass per turn",
    "candidate",
    _runner(chat=False),
    extra="lm_eval",
)
CHAT = Contender(
    "lm-eval-chat",
    f"lm-eval 0.4 local-chat-completions, num_concurrent {NUM_CONCURRENT}, a pass per turn",
    "candidate",
    _runner(chat=True),
    extra="lm_eval",
)
