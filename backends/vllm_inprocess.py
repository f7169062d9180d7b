"""The Backend protocol over vLLM's async engine in this process (optional extra, GPU only).

No HTTP: prompts go straight to `AsyncLLMEngine.generate`, which batches everything in flight
(continuous batching), so the engine's window should be vLLM's `max_num_seqs`. vLLM is imported
only when a backend is created; a missing vLLM or GPU is a `ConfigError` that says what to do.
Chats are rendered with the model's own chat template from its tokenizer.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from backends.errors import BackendError, ConfigError
from backends.protocol import Capabilities, Completion, Message, SamplingParams

logger = logging.getLogger(__name__)

VLLM_INSTALL_HINT = "install it with `pip install 'gpo-engine[vllm]'` (Linux with an NVIDIA GPU)"
_VLLM_DEFAULT_MAX_NUM_SEQS = 256


def import_vllm() -> Any:
    """The `vllm` module, or a ConfigError when it is not installed or no CUDA GPU is visible."""
    try:
        vllm = importlib.import_module("vllm")
    except ImportError as error:
        raise ConfigError(
            "the in-process vLLM backend needs vLLM, which is not installed "
            f"({error.name or error}): {VLLM_INSTALL_HINT}"
        ) from None
    try:
        torch = importlib.import_module("torch")
        has_gpu = bool(torch.cuda.is_available())
    except (ImportError, AttributeError, RuntimeError):
        has_gpu = False
    if not has_gpu:
        raise ConfigError(
            "the in-process vLLM backend needs a CUDA GPU and none is visible "
            "(check nvidia-smi and CUDA_VISIBLE_DEVICES), or use an OpenAI-compatible endpoint"
        )
    return vllm


class VllmInProcessBackend:
    """`backends.protocol.Backend` over `vllm.AsyncLLMEngine`.

    `engine_args` are `vllm.AsyncEngineArgs` fields (e.g. `{"max_num_seqs": 256,
    "gpu_memory_utilization": 0.9}`).
    """

    def __init__(self, model: str, *, engine_args: Mapping[str, Any] | None = None) -> None:
        self._vllm = import_vllm()
        args = dict(engine_args or {})
        self._model = model
        self._max_num_seqs = int(args.get("max_num_seqs") or _VLLM_DEFAULT_MAX_NUM_SEQS)
        try:
            self._engine = self._vllm.AsyncLLMEngine.from_engine_args(
                self._vllm.AsyncEngineArgs(model=model, **args)
            )
        except TypeError as error:
            raise ConfigError(f"invalid vLLM engine args {sorted(args)}: {error}") from None
        self._tokenizer: Any = None

    @property
    def identity(self) -> str:
        return f"vllm-inprocess|{self._model}"

    @property
    def model(self) -> str:
        return self._model

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            prompt_lists=True,
            multiple_choices=True,
            chat=True,
            completions=True,
            max_concurrency=self._max_num_seqs,
            lists_confirmed=True,
        )

    def _sampling(self, params: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
        )

    async def _generate(self, prompt: str | dict[str, Any], sampling: Any) -> Completion:
        final: Any = None
        try:
            async for output in self._engine.generate(prompt, sampling, uuid.uuid4().hex):
                final = output
        except (ValueError, RuntimeError) as error:
            raise BackendError(f"vLLM generation failed: {error}", endpoint=self.identity) from None
        if final is None:
            raise BackendError("vLLM returned no output", endpoint=self.identity)
        return Completion(
            texts=tuple(choice.text for choice in final.outputs),
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=sum(len(choice.token_ids) for choice in final.outputs),
            finish_reasons=tuple(str(choice.finish_reason or "") for choice in final.outputs),
        )

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        sampling = self._sampling(params)
        return list(await asyncio.gather(*(self._generate(p, sampling) for p in prompts)))

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        # Token ids, not text: the template already holds BOS, which tokenizing text would repeat.
        token_ids = self._tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            tokenize=True,
            add_generation_prompt=True,
        )
        return await self._generate({"prompt_token_ids": list(token_ids)}, self._sampling(params))

    async def close(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            result = shutdown()
            if inspect.isawaitable(result):
                await result
