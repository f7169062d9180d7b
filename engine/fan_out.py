"""One call's trip to the backend, with `n` fanned out for endpoints that ignore it.

A call is either a prompt list (`/v1/completions`, one `Completion` per prompt) or one chat.
Endpoints whose capabilities say they do not honour `n` (several choices per request) get `n`
calls of one choice each per request instead, seeded `seed, seed + 1, ...` when the request is
seeded, and the choices are merged into one `Completion` (texts and finish reasons in order,
token counts summed), so callers see the same answer shape either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from backends.protocol import Backend, Completion, Message, SamplingParams


async def call_backend(
    backend: Backend,
    params: SamplingParams,
    prompts: Sequence[str] | None,
    messages: Sequence[Message] = (),
    *,
    honours_n: bool = True,
) -> list[Completion]:
    """The answers to `prompts` (one prompt-list call), or, when `prompts` is None, to one chat
    of `messages`; `n` is fanned out when the endpoint does not honour it."""
    if params.n > 1 and not honours_n:
        return await one_choice_at_a_time(backend, params, prompts, messages)
    if prompts is not None:
        return await backend.complete(list(prompts), params)
    return [await backend.chat(messages, params)]


async def one_choice_at_a_time(
    backend: Backend,
    params: SamplingParams,
    prompts: Sequence[str] | None,
    messages: Sequence[Message] = (),
) -> list[Completion]:
    """For endpoints that ignore `n`: n calls of one choice each per request, merged."""
    queries: Sequence[str | None] = prompts if prompts is not None else [None]
    merged: list[Completion] = []
    for prompt in queries:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = completion_tokens = cached_prompt = reasoning = 0
        for choice in range(params.n):
            seed = None if params.seed is None else params.seed + choice
            single = replace(params, n=1, seed=seed)
            if prompt is not None:
                (answer,) = await backend.complete([prompt], single)
            else:
                answer = await backend.chat(messages, single)
            texts.append(answer.text)
            reasons.extend(answer.finish_reasons)
            prompt_tokens += answer.prompt_tokens
            completion_tokens += answer.completion_tokens
            cached_prompt += answer.cached_prompt_tokens
            reasoning += answer.reasoning_tokens
        merged.append(
            Completion(
                tuple(texts),
                prompt_tokens,
                completion_tokens,
                tuple(reasons),
                cached_prompt_tokens=cached_prompt,
                reasoning_tokens=reasoning,
            )
        )
    return merged
