"""A managed vLLM server subprocess: bound to 127.0.0.1, sized for the engine, stopped.

On a GPU the command is `vllm serve MODEL --host 127.0.0.1 --port P [the user's vLLM args]`;
without one it is the CPU build's `python -m vllm.entrypoints.openai.api_server --model MODEL ...`
from the environment `gpo setup-local --vllm` made (see `backends.vllm_cpu`, which also turns the
model name `embedded` into the converted SmolLM2). Once `/health` answers, the served model name
and its context length are read from `/v1/models`, and vLLM's version from `/version`.
The engine sizes its concurrency window to vLLM's `max_num_seqs`: the value passed in the args
when there is one, else vLLM's own default for the OpenAI server (`EngineArgs.get_batch_defaults`):
on a GPU 1024 with at least 70 GiB that is not an A100, 256 otherwise; 128 on CPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.argv_options import option_value, remove_options
from backends.errors import ConfigError, MalformedResponse
from backends.managed_process import (
    LOOPBACK_HOST,
    ManagedServer,
    ManagedServerFront,
    ServerStartFailed,
    http_get_json,
)
from backends.protocol import Capabilities
from backends.vllm_cpu import VllmLaunch, find_vllm_executable, plan_launch

logger = logging.getLogger(__name__)

__all__ = ["ManagedVllmServer", "VllmServeConfig", "build_vllm_command", "find_vllm_executable"]

VLLM_DEFAULT_MAX_NUM_SEQS = 256
VLLM_CPU_MAX_NUM_SEQS = 128
STARTUP_TIMEOUT_ENV = "GPO_VLLM_STARTUP_TIMEOUT_S"
DEFAULT_STARTUP_TIMEOUT_S = 900.0
VLLM_LARGE_GPU_MAX_NUM_SEQS = 1024
LARGE_GPU_MIN_MEMORY_GIB = 70.0
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One visible GPU as `nvidia-smi` reports it."""

    name: str
    memory_gib: float


def default_startup_timeout_s() -> float:
    """Seconds a managed vLLM may take to answer: `GPO_VLLM_STARTUP_TIMEOUT_S`, default 900."""
    text = os.environ.get(STARTUP_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_STARTUP_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{STARTUP_TIMEOUT_ENV}={text!r}: must be a positive number of seconds")
    return value


@dataclass(frozen=True, slots=True)
class VllmServeConfig:
    """One vLLM server process. `gpus` sets CUDA_VISIBLE_DEVICES (e.g. "0" or "2,3");
    `runtime` is "auto" (the CPU build when no GPU is visible), "cpu" or "gpu"; `model` may be
    `embedded` (the converted SmolLM2). `startup_timeout_s` None means
    `GPO_VLLM_STARTUP_TIMEOUT_S` or 900 s."""

    model: str
    extra_args: tuple[str, ...] = ()
    executable: str | None = None
    gpus: str | None = None
    startup_timeout_s: float | None = None
    stop_timeout_s: float = 30.0
    runtime: str = "auto"


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
    """A managed vLLM server for the length of a `with` block (async or sync).

    `config` is a `VllmServeConfig`, or just the model name with `extra_args` for vLLM.
    `gpus` describes the GPUs (for the CPU-or-GPU choice and vLLM's default `max_num_seqs`); by
    default nvidia-smi is asked.

    After start: `url` (OpenAI base URL ending in `/v1`), `model_name` (as served),
    `max_num_seqs`, `max_model_len` (when reported), `capabilities`, `runtime` ("cpu" or
    "gpu"), `version` (vLLM's, when reported) and `description` (one line saying which server).
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
        self._log_path = log_path
        self._launch_plan: VllmLaunch | None = None
        self._api_key = option_value(config.extra_args, "--api-key") or os.environ.get(
            "VLLM_API_KEY"
        )
        self._server = self._make_server(f"vLLM ({config.model})", {})
        self._model_name = ""
        self._max_model_len: int | None = None
        self._max_num_seqs = 0
        self._version: str | None = None

    def _make_server(self, name: str, env: dict[str, str]) -> ManagedServer:
        if self._config.gpus is not None:
            env = {**env, "CUDA_VISIBLE_DEVICES": self._config.gpus}
        timeout = self._config.startup_timeout_s
        return ManagedServer(
            self._command,
            name=name,
            port=requested_port(self._config.extra_args),
            log_path=self._log_path,
            ready_paths=("/health", "/v1/models"),
            startup_timeout_s=timeout if timeout is not None else default_startup_timeout_s(),
            stop_timeout_s=self._config.stop_timeout_s,
            env=env,
            poll_interval_s=0.5,
        )

    def _command(self, port: int) -> list[str]:
        assert self._launch_plan is not None
        check_vllm_args(self._config.extra_args)
        return self._launch_plan.command(port, self._config.extra_args)

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
    def runtime(self) -> str | None:
        """ "cpu" (the CPU build) or "gpu" (`vllm serve`), once started."""
        return self._launch_plan.runtime if self._launch_plan is not None else None

    @property
    def version(self) -> str | None:
        return self._version

    @property
    def description(self) -> str:
        """Which server this is, in one line: build, version, model, URL."""
        build = {"cpu": "CPU build", "gpu": "vllm serve"}.get(self.runtime or "", "not started")
        version = f" {self._version}" if self._version else ""
        return f"managed vLLM{version} ({build}) serving {self._model_name} at {self.url}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            prompt_lists=True,
            multiple_choices=True,
            chat=True,
            completions=True,
            max_concurrency=self._max_num_seqs or None,
            lists_confirmed=True,
        )

    def _prepare(self) -> None:
        """Choose how to launch (CPU build or `vllm serve`); the process is not started yet."""
        gpus = self._gpus if self._gpus is not None else visible_gpus()
        if self._gpus is None:
            self._gpus = gpus
        plan = plan_launch(
            self._config.model,
            has_gpu=bool(gpus),
            executable=self._config.executable,
            runtime=self._config.runtime,
        )
        self._launch_plan = plan
        self._server = self._make_server(plan.description, dict(plan.env))

    def _timeout_hint(self, error: ServerStartFailed) -> ServerStartFailed:
        if "did not answer" not in str(error):
            return error
        return ServerStartFailed(
            f"{error}\nvLLM may need longer on its first start (it loads and may compile the "
            f"model): set {STARTUP_TIMEOUT_ENV} (seconds), or `gpo serve --startup-timeout`"
        )

    def _read_server_facts(self) -> None:
        """Served model name and context length from /v1/models; max_num_seqs from args or the
        hardware; vLLM's version from /version."""
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
        elif self.runtime == "cpu":
            self._max_num_seqs = VLLM_CPU_MAX_NUM_SEQS
        else:
            gpus = self._gpus if self._gpus is not None else visible_gpus()
            self._max_num_seqs = default_max_num_seqs(_first_gpu(gpus, self._config.gpus))
        self._version = _read_version(self.root_url, self._api_key)
        logger.info(
            "%s: max_num_seqs %d, max_model_len %s",
            self.description,
            self._max_num_seqs,
            self._max_model_len,
        )

    async def start(self) -> None:
        self._prepare()
        try:
            await self._server.start()
        except ServerStartFailed as error:
            raise self._timeout_hint(error) from None
        try:
            await asyncio.to_thread(self._read_server_facts)
        except BaseException:
            await self._server.stop()
            raise

    def start_sync(self) -> None:
        self._prepare()
        try:
            self._server.start_sync()
        except ServerStartFailed as error:
            raise self._timeout_hint(error) from None
        try:
            self._read_server_facts()
        except BaseException:
            self._server.stop_sync()
            raise


def _read_version(root_url: str, api_key: str | None) -> str | None:
    """vLLM's version from `GET /version`, or None when it does not say."""
    try:
        payload = http_get_json(f"{root_url}/version", timeout_s=10.0, api_key=api_key)
    except (OSError, ValueError):
        return None
    version = payload.get("version") if isinstance(payload, dict) else None
    return str(version) if isinstance(version, str) else None
