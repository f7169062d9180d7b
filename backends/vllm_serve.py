"""A managed `vllm serve MODEL` subprocess: bound to 127.0.0.1, sized for the engine, stopped.

The command is `vllm serve MODEL --host 127.0.0.1 --port P [the user's vLLM args]`. Once
`/health` answers, the served model name and its context length are read from `/v1/models`.
The engine sizes its concurrency window to vLLM's `max_num_seqs`: the value passed in the args
when there is one, else vLLM's own default for the OpenAI server, which depends on the GPU
(`EngineArgs.get_batch_defaults`): 1024 on GPUs with at least 70 GiB that are not A100s, 256
otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.argv_options import option_value, remove_options
from backends.errors import ConfigError, MalformedResponse
from backends.managed_process import LOOPBACK_HOST, ManagedServer, ManagedServerFront, http_get_json
from backends.protocol import Capabilities

logger = logging.getLogger(__name__)

VLLM_INSTALL_HINT = "install it with `pip install 'gpo-engine[vllm]'` (Linux with an NVIDIA GPU)"
VLLM_DEFAULT_MAX_NUM_SEQS = 256
VLLM_LARGE_GPU_MAX_NUM_SEQS = 1024
LARGE_GPU_MIN_MEMORY_GIB = 70.0
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One visible GPU as `nvidia-smi` reports it."""

    name: str
    memory_gib: float


@dataclass(frozen=True, slots=True)
class VllmServeConfig:
    """One `vllm serve` process. `gpus` sets CUDA_VISIBLE_DEVICES (e.g. "0" or "2,3")."""

    model: str
    extra_args: tuple[str, ...] = ()
    executable: str | None = None
    gpus: str | None = None
    startup_timeout_s: float = 900.0
    stop_timeout_s: float = 30.0


def find_vllm_executable(executable: str | None = None) -> str:
    """The `vllm` command: the one given, else next to this interpreter, else on PATH."""
    if executable:
        found = shutil.which(executable)
        if found is None:
            raise ConfigError(f"vLLM executable {executable!r} was not found or is not executable")
        return found
    beside_python = Path(sys.executable).parent / "vllm"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("vllm")
    if found is None:
        raise ConfigError(
            f"vLLM is not installed: no `vllm` command next to {sys.executable} or on PATH; "
            f"{VLLM_INSTALL_HINT}"
        )
    return found


def check_vllm_args(extra_args: Sequence[str]) -> None:
    """Refuse args that would make the server reachable beyond this machine."""
    host = option_value(extra_args, "--host")
    if host is not None and host not in _LOOPBACK_NAMES:
        raise ConfigError(
            f"vLLM args: --host {host} is not allowed; managed servers bind {LOOPBACK_HOST} only"
        )
    port = option_value(extra_args, "--port")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"vLLM args: --port {port!r} is not a port number")
    seqs = option_value(extra_args, "--max-num-seqs")
    if seqs is not None and not (seqs.isdigit() and int(seqs) > 0):
        raise ConfigError(f"vLLM args: --max-num-seqs {seqs!r} is not a positive integer")


def requested_port(extra_args: Sequence[str]) -> int | None:
    """The `--port` given in the vLLM args, if any."""
    port = option_value(extra_args, "--port")
    return int(port) if port is not None else None


def build_vllm_command(
    executable: str, model: str, port: int, extra_args: Sequence[str] = ()
) -> list[str]:
    """`vllm serve MODEL --host 127.0.0.1 --port PORT ...`, the user's --host/--port replaced."""
    check_vllm_args(extra_args)
    rest = remove_options(extra_args, "--host", "--port")
    return [executable, "serve", model, "--host", LOOPBACK_HOST, "--port", str(port), *rest]


def max_num_seqs_from_args(extra_args: Sequence[str]) -> int | None:
    """`--max-num-seqs` (or `--max_num_seqs`) as given, if it is."""
    value = option_value(extra_args, "--max-num-seqs")
    return int(value) if value is not None and value.isdigit() else None


def default_max_num_seqs(gpu: GpuInfo | None) -> int:
    """vLLM's default `max_num_seqs` for the OpenAI server on this GPU."""
    if (
        gpu is not None
        and gpu.memory_gib >= LARGE_GPU_MIN_MEMORY_GIB
        and "a100" not in gpu.name.lower()
    ):
        return VLLM_LARGE_GPU_MAX_NUM_SEQS
    return VLLM_DEFAULT_MAX_NUM_SEQS


def parse_nvidia_smi(output: str) -> tuple[GpuInfo, ...]:
    """Rows of `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` (MiB)."""
    gpus: list[GpuInfo] = []
    for line in output.splitlines():
        name, _, memory = line.rpartition(",")
        try:
            gpus.append(GpuInfo(name.strip(), float(memory.strip()) / 1024.0))
        except ValueError:
            continue
    return tuple(gpus)


def visible_gpus() -> tuple[GpuInfo, ...]:
    """The machine's NVIDIA GPUs, or () when nvidia-smi is missing or fails."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return ()
    try:
        result = subprocess.run(
            [nvidia_smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else ()


def _first_gpu(gpus: Sequence[GpuInfo], selection: str | None) -> GpuInfo | None:
    """The first GPU the server will use, given CUDA_VISIBLE_DEVICES-style `selection`."""
    if not gpus:
        return None
    first = (selection or os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    index = int(first) if first.isdigit() else 0
    return gpus[index] if index < len(gpus) else gpus[0]


class ManagedVllmServer(ManagedServerFront):
    """`vllm serve` for the length of a `with` block (async or sync).

    `config` is a `VllmServeConfig`, or just the model name with `extra_args` for vLLM.
    `gpus` describes the GPUs (for vLLM's default `max_num_seqs`); by default nvidia-smi is asked.

    After start: `url` (OpenAI base URL ending in `/v1`), `model_name` (as served),
    `max_num_seqs`, `max_model_len` (when reported) and `capabilities`.
    """

    def __init__(
        self,
        config: VllmServeConfig | str,
        *,
        extra_args: Sequence[str] = (),
        log_path: Path | str | None = None,
        gpus: Sequence[GpuInfo] | None = None,
    ) -> None:
        if isinstance(config, str):
            config = VllmServeConfig(model=config, extra_args=tuple(extra_args))
        elif extra_args:
            raise ConfigError("give vLLM args either in the VllmServeConfig or as extra_args")
        check_vllm_args(config.extra_args)
        self._config = config
        self._gpus = tuple(gpus) if gpus is not None else None
        self._executable: str | None = None
        self._api_key = option_value(config.extra_args, "--api-key") or os.environ.get(
            "VLLM_API_KEY"
        )
        env = {"CUDA_VISIBLE_DEVICES": config.gpus} if config.gpus is not None else {}
        self._server = ManagedServer(
            self._command,
            name=f"vLLM ({config.model})",
            port=requested_port(config.extra_args),
            log_path=log_path,
            ready_paths=("/health", "/v1/models"),
            startup_timeout_s=config.startup_timeout_s,
            stop_timeout_s=config.stop_timeout_s,
            env=env,
            poll_interval_s=0.5,
        )
        self._model_name = ""
        self._max_model_len: int | None = None
        self._max_num_seqs = 0

    def _command(self, port: int) -> list[str]:
        assert self._executable is not None
        return build_vllm_command(
            self._executable, self._config.model, port, self._config.extra_args
        )

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def api_key(self) -> str | None:
        """The key the server requires (from --api-key or VLLM_API_KEY); never log it."""
        return self._api_key

    @property
    def max_num_seqs(self) -> int:
        return self._max_num_seqs

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            prompt_lists=True,
            multiple_choices=True,
            chat=True,
            completions=True,
            max_concurrency=self._max_num_seqs or None,
        )

    def _prepare(self) -> None:
        self._executable = find_vllm_executable(self._config.executable)

    def _read_server_facts(self) -> None:
        """Served model name and context length from /v1/models; max_num_seqs from args or GPU."""
        where = f"{self.url}/models"
        try:
            payload: Any = http_get_json(where, timeout_s=30.0, api_key=self._api_key)
            entry = payload["data"][0]
            self._model_name = str(entry["id"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
            raise MalformedResponse(
                f"cannot read the served model from /v1/models ({type(error).__name__}: {error})",
                endpoint=where,
            ) from None
        length = entry.get("max_model_len") if isinstance(entry, dict) else None
        self._max_model_len = int(length) if isinstance(length, int) else None
        given = max_num_seqs_from_args(self._config.extra_args)
        if given is not None:
            self._max_num_seqs = given
        else:
            gpus = self._gpus if self._gpus is not None else visible_gpus()
            self._max_num_seqs = default_max_num_seqs(_first_gpu(gpus, self._config.gpus))
        logger.info(
            "vLLM serves %s on %s: max_num_seqs %d, max_model_len %s",
            self._model_name,
            self.url,
            self._max_num_seqs,
            self._max_model_len,
        )

    async def start(self) -> None:
        self._prepare()
        await self._server.start()
        try:
            await asyncio.to_thread(self._read_server_facts)
        except BaseException:
            await self._server.stop()
            raise

    def start_sync(self) -> None:
        self._prepare()
        self._server.start_sync()
        try:
            self._read_server_facts()
        except BaseException:
            self._server.stop_sync()
            raise
