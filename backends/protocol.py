"""Values that cross the backend boundary, and the interface every backend implements.

A `Request` is one generation: a chat (`messages`) or a plain completion (`prompt`), with its
sampling settings. A backend turns requests into `Completion`s and knows nothing of caching,
retries or limits; those are the engine's policy.

An endpoint that serves embeddings too (`EmbeddingBackend`) answers a list of texts with
`Embeddings`: one vector per text, in input order, and the server's prompt-token usage.

A request may say what kind of answer it asks for (`SamplingParams.purpose`, one of `Purpose`):
the optimizer labels its meta-prompts so, and the HTTP client sends the label as the
`X-GPO-Purpose` header. Real servers ignore it; a server that imitates a model (the simulated
server) decides from it, never from the prompt's wording, whether to answer as an optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

Message = tuple[str, str]
"""One chat turn as (role, content); role is "system", "user" or "assistant"."""


PURPOSE_HEADER = "X-GPO-Purpose"
"""The HTTP header that carries `SamplingParams.purpose`."""


class Purpose(StrEnum):
    """What a request that is not an ordinary task prompt asks for (no purpose: an ordinary one).

    Both kinds expect the answer between `<START>` and `<END>`.
    """

    NEW_PROMPT = "new-prompt"
    """Write a new prompt (an optimizer meta-prompt, or a summary of prompts)."""
    REFLECTION = "reflection"
    """Say what is wrong with a prompt (a reflection, or a summary of problems)."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Generation settings sent with a request.

    Every field but `purpose` takes part in the cache key. `purpose` labels the call for the
    server (see the module docs); it is here, not on `Request`, because it travels per HTTP call,
    as these settings do: requests that share one call share their settings and their purpose.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    purpose: Purpose | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One generation request.

    Exactly one of `messages` (chat) or `prompt` (completion) is set. `sample_index` tells apart
    repeated draws of a sampled request (temperature > 0): the engine caches a sampled request
    only when it is given, so that a cache never silently turns sampling into repetition.
    """

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    sample_index: int | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of messages or prompt")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True, slots=True)
class Completion:
    """A model's answer: one text per requested choice (`n`), with the server's token usage.

    `cached` is true when the engine answered from its cache; the usage fields then hold what the
    original call cost (counted as saved by the ledger, never as spent).
    `cached_prompt_tokens` (part of `prompt_tokens`) are the prompt tokens the server served from
    its prompt cache (`usage.prompt_tokens_details.cached_tokens`), billed at a discount by hosted
    APIs; `reasoning_tokens` (part of `completion_tokens`) are the hidden reasoning a model wrote
    (`usage.completion_tokens_details.reasoning_tokens`), billed as output.
    """

    texts: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: tuple[str, ...] = ()
    cached: bool = False
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One `/v1/embeddings` answer: a vector per input text, in input order, and its usage."""

    vectors: list[list[float]]
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an endpoint accepts, so the engine can choose how to send work.

    `prompt_lists`: `/v1/completions` takes a list of prompts in one call (vLLM does).
    `multiple_choices`: `n > 1` is honoured in one call.
    `max_concurrency`: the number of sequences the server runs at once, when known
    (vLLM's `max_num_seqs`), used to size the engine's window.
    `lists_confirmed`: prompt lists are known to work there (a server that says it is vLLM, or
    capabilities a caller declared), so a 5xx on a list is the server's trouble, not the list's;
    otherwise the engine learns it from the first list answered (`engine.list_fallback`).
    """

    prompt_lists: bool = True
    multiple_choices: bool = True
    chat: bool = True
    completions: bool = True
    max_concurrency: int | None = None
    lists_confirmed: bool = False


@runtime_checkable
class Backend(Protocol):
    """A transport to one model endpoint.

    `identity` names the endpoint and model without credentials; it is part of every cache key.
    `complete` sends one HTTP call (or one engine step) for a list of prompts that share
    sampling settings and returns one `Completion` per prompt, in order. `chat` sends one
    conversation. Both raise `backends.errors.BackendError` subclasses on failure.
    """

    @property
    def identity(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def complete(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[Completion]: ...

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion: ...

    async def close(self) -> None: ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    """A backend whose endpoint also serves `/v1/embeddings`. `embed` sends one HTTP call and
    raises `backends.errors.BackendError` subclasses on failure, like `Backend.complete`."""

    async def embed(self, texts: Sequence[str], model: str | None = None) -> Embeddings: ...
