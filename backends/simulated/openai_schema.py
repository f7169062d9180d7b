"""The OpenAI protocol as vLLM serves it: request validation and response bodies.

Requests are validated into a `GenerationRequest`; errors are raised as the project's
`ClientRequestError` family carrying the HTTP status vLLM would answer (400 for a bad request or a
too-long prompt, 404 for an unknown model). Defaults follow vLLM: `max_tokens` 16 for
completions and "the rest of the context" for chat, `temperature` 1.0, `n` 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backends.chat_template import render_chatml
from backends.errors import ClientRequestError, ContextLengthExceeded, UnknownModel
from backends.simulated.answers import GeneratedText
from backends.simulated.config import SimulatedServerConfig
from backends.simulated.tokens import count_tokens, token_ids

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated `/v1/completions` or `/v1/chat/completions` request."""

    prompts: tuple[str, ...]
    prompt_tokens: tuple[int, ...]
    n: int
    max_tokens: int
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    chat: bool

    @property
    def rate_limit_tokens(self) -> int:
        """What a tokens-per-minute limit charges: prompt tokens + max_tokens x n, per prompt."""
        return sum(self.prompt_tokens) + self.max_tokens * self.n * len(self.prompts)


def _bad(message: str) -> ClientRequestError:
    return ClientRequestError(message, status=400)


def _require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    return body


def check_model(body: dict[str, Any], config: SimulatedServerConfig) -> None:
    model = body.get("model")
    if model is not None and model != config.model:
        raise UnknownModel(f"The model `{model}` does not exist.", status=404)


def _integer(body: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise _bad(f"{name} must be at least {minimum}, got {value}")
    return value


def _sampling(body: dict[str, Any]) -> tuple[int, float, int | None, tuple[str, ...]]:
    if body.get("stream"):
        raise _bad("stream=true is not supported by the simulated server")
    n = _integer(body, "n", 1, 1)
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise _bad(f"temperature must be a number, got {temperature!r}")
    if temperature < 0:
        raise _bad(f"temperature must be non-negative, got {temperature}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad(f"seed must be an integer, got {seed!r}")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _bad(f"stop must be a string or a list of strings, got {stop!r}")
    return n, float(temperature), seed, stops


def _check_context(prompt_tokens: int, max_tokens: int, config: SimulatedServerConfig) -> None:
    if prompt_tokens + max_tokens > config.max_model_len:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {config.max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion.",
            status=400,
        )


def parse_completion_request(body: object, config: SimulatedServerConfig) -> GenerationRequest:
    data = _require_object(body)
    check_model(data, config)
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        prompts: tuple[str, ...] = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    else:
        raise _bad("prompt must be a string or a non-empty list of strings")
    n, temperature, seed, stop = _sampling(data)
    max_tokens = _integer(data, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS, 1)
    counts = tuple(count_tokens(p) for p in prompts)
    for position, tokens in enumerate(counts):
        if tokens == 0:
            raise _bad(f"prompt {position} is empty")
        _check_context(tokens, max_tokens, config)
    return GenerationRequest(prompts, counts, n, max_tokens, temperature, seed, stop, chat=False)


def _content_text(content: object, position: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(f"messages[{position}].content: only text parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise _bad(f"messages[{position}].content must be a string or a list of text parts")


def render_chat_body(data: dict[str, Any]) -> str:
    """The ChatML prompt for a chat request's `messages`."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list")
    turns = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _bad(f"messages[{position}] must be an object with a role in {_ROLES}")
        turns.append((message["role"], _content_text(message.get("content"), position)))
    return render_chatml(turns)


def tokenize_body(body: object, config: SimulatedServerConfig) -> dict[str, Any]:
    """vLLM's `/tokenize`: the ids of `prompt`, or of `messages` rendered as a chat is."""
    data = _require_object(body)
    check_model(data, config)
    if "messages" in data:
        text = render_chat_body(data)
    elif isinstance(data.get("prompt"), str):
        text = data["prompt"]
    else:
        raise _bad("give either 'prompt' (a string) or 'messages'")
    tokens = token_ids(text)
    return {"count": len(tokens), "max_model_len": config.max_model_len, "tokens": tokens}


def parse_chat_request(body: object, config: SimulatedServerConfig) -> GenerationRequest:
    data = _require_object(body)
    check_model(data, config)
    prompt = render_chat_body(data)
    n, temperature, seed, stop = _sampling(data)
    tokens = count_tokens(prompt)
    default = max(1, config.max_model_len - tokens)
    name = (
        "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _integer(data, name, default, 1)
    _check_context(tokens, max_tokens, config)
    return GenerationRequest((prompt,), (tokens,), n, max_tokens, temperature, seed, stop, True)


def _usage(
    request: GenerationRequest, outputs: Sequence[GeneratedText], cached_tokens: int = 0
) -> dict[str, Any]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens`: the prompt tokens the prefix
    cache served (vLLM reports them so with `--enable-prompt-tokens-details`)."""
    prompt_tokens = sum(request.prompt_tokens)
    completion_tokens = sum(o.completion_tokens for o in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": min(cached_tokens, prompt_tokens)},
    }


def completion_body(
    request: GenerationRequest,
    outputs: Sequence[GeneratedText],
    *,
    model: str,
    request_id: str,
    created: int,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """`/v1/completions` answer; `outputs` are ordered prompt-major, then choice."""
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "text": output.text,
                "logprobs": None,
                "finish_reason": output.finish_reason,
                "stop_reason": None,
            }
            for index, output in enumerate(outputs)
        ],
        "usage": _usage(request, outputs, cached_tokens),
    }


def chat_body(
    request: GenerationRequest,
    outputs: Sequence[GeneratedText],
    *,
    model: str,
    request_id: str,
    created: int,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """`/v1/chat/completions` answer."""
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": output.text},
                "logprobs": None,
                "finish_reason": output.finish_reason,
                "stop_reason": None,
            }
            for index, output in enumerate(outputs)
        ],
        "usage": _usage(request, outputs, cached_tokens),
    }


def parse_embedding_request(body: object, config: SimulatedServerConfig) -> tuple[str, ...]:
    data = _require_object(body)
    check_model(data, config)
    value = data.get("input")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _bad("input must be a string or a non-empty list of strings")


def models_body(config: SimulatedServerConfig, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": config.model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": config.model,
                "parent": None,
                "max_model_len": config.max_model_len,
            }
        ],
    }
