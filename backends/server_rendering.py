"""Ask a live server whether a client-side chat rendering is what it would feed its model.

One conversation and the prompt rendered from it are compared the way each server allows, the
first route it answers winning (a 404/405/501 means "not this server"):

1. vLLM `POST /tokenize`: token ids of `{"messages", "add_generation_prompt": true}` (what
   `/v1/chat/completions` feeds the model) against those of `{"prompt": rendered}` with the
   default `add_special_tokens` (what `/v1/completions` feeds it). Ids, not text, so a BOS the
   tokenizer adds on top of one the template printed shows up as a difference.
2. llama.cpp's C++ server `POST /apply-template`: the prompt text it renders, compared as text.
3. llama-cpp-python (0.3.x has no route that renders a chat): the prompt-token count a one-token
   `/v1/chat/completions` call reports against the length of `/extras/tokenize` of the rendered
   prompt (it tokenizes `/v1/completions` prompts the same way). A count is weaker than ids, but
   a missing or extra turn, or a doubled BOS, changes it.

No doubled BOS: a template that prints the BOS text itself, sent to a server whose tokenizer adds
a BOS to every completion prompt, would give the model two. When the rendering as printed does
not match and it starts with the BOS text, the same check is made on the rendering without it
(`RenderingCheck.strip_bos`): the server then supplies the BOS exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backends.errors import AuthenticationError, BackendError, UnknownModel
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Message, SamplingParams

CHECK_TIMEOUT_S = 120.0
_ABSENT = (404, 405, 501)


@dataclass(frozen=True, slots=True)
class RenderingCheck:
    """The server's verdict on one rendering. `method` names the route that decided;
    `strip_bos`: send the rendering without its leading BOS text; `detail` says what differed."""

    matches: bool
    method: str
    strip_bos: bool = False
    detail: str = ""


def _absent(error: BackendError) -> bool:
    """A route this server lacks; a model it does not serve or refused credentials are not."""
    return error.status in _ABSENT and not isinstance(error, UnknownModel | AuthenticationError)


def _chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


def _tokens(payload: Any) -> list[int]:
    tokens = payload.get("tokens") if isinstance(payload, dict) else None
    if not isinstance(tokens, list):
        raise ValueError("the answer has no token list")
    return [int(token) for token in tokens]


def _first_difference(left: Sequence[Any], right: Sequence[Any]) -> str:
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return f"first difference at position {index} ({a!r} vs {b!r})"
    return f"lengths differ ({len(left)} vs {len(right)})"


def _candidates(rendered: str, bos_token: str) -> list[tuple[str, bool]]:
    """The renderings to try, in order: as printed, then without a leading BOS text."""
    found = [(rendered, False)]
    if bos_token and rendered.startswith(bos_token):
        found.append((rendered[len(bos_token) :], True))
    return found


async def _by_tokenize(
    backend: OpenAICompatibleBackend, messages: Sequence[Message], rendered: str, bos: str
) -> RenderingCheck:
    model = backend.model
    body = {"model": model, "messages": _chat(messages), "add_generation_prompt": True}
    server = _tokens(await backend.post_to_server("/tokenize", body, CHECK_TIMEOUT_S))
    detail = ""
    for prompt, strip in _candidates(rendered, bos):
        body = {"model": model, "prompt": prompt}
        mine = _tokens(await backend.post_to_server("/tokenize", body, CHECK_TIMEOUT_S))
        if mine == server:
            return RenderingCheck(True, "/tokenize", strip)
        detail = detail or f"token ids differ: {_first_difference(server, mine)}"
    return RenderingCheck(False, "/tokenize", detail=detail)


async def _by_apply_template(
    backend: OpenAICompatibleBackend, messages: Sequence[Message], rendered: str, bos: str
) -> RenderingCheck:
    body = {"model": backend.model, "messages": _chat(messages)}
    payload = await backend.post_to_server("/apply-template", body, CHECK_TIMEOUT_S)
    text = payload.get("prompt") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        raise ValueError("the answer has no prompt text")
    for prompt, strip in _candidates(rendered, bos):
        if prompt == text:
            return RenderingCheck(True, "/apply-template", strip)
    return RenderingCheck(
        False, "/apply-template", detail=f"text differs: {_first_difference(text, rendered)}"
    )


async def _by_token_count(
    backend: OpenAICompatibleBackend, messages: Sequence[Message], rendered: str, bos: str
) -> RenderingCheck:
    method = "/extras/tokenize + chat usage"
    counts: list[int] = []
    server = -1
    for prompt, strip in _candidates(rendered, bos):
        body = {"model": backend.model, "input": prompt}
        counts.append(
            len(_tokens(await backend.post_to_server("/extras/tokenize", body, CHECK_TIMEOUT_S)))
        )
        if len(counts) == 1:
            answer = await backend.chat(messages, SamplingParams(max_tokens=1, temperature=0.0))
            server = answer.prompt_tokens
        if counts[-1] == server:
            return RenderingCheck(True, method, strip)
    return RenderingCheck(
        False, method, detail=f"prompt tokens differ: server {server}, rendered {counts[0]}"
    )


_METHODS = (_by_tokenize, _by_apply_template, _by_token_count)


async def check_rendering(
    backend: OpenAICompatibleBackend, messages: Sequence[Message], rendered: str, bos_token: str
) -> RenderingCheck:
    """The server's verdict on `rendered` as the prompt of `messages`.

    Raises `BackendError` when the server fails otherwise than by lacking a route; a verdict of
    no match with method "none" when it has none of the routes (the rendering is unverifiable).
    """
    for method in _METHODS:
        try:
            return await method(backend, messages, rendered, bos_token)
        except BackendError as error:
            if not _absent(error):
                raise
        except (ValueError, TypeError, AttributeError):
            continue  # an answer of another shape: not this server's route
    return RenderingCheck(
        False, "none", detail="the server has no /tokenize, /apply-template or /extras/tokenize"
    )
