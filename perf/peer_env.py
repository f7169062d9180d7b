"""Where the peers' own code runs: the interpreter a contender's worker uses.

The real peers (DSPy, lm-eval) come from the optional `bench` extra. Their pins fight this
project's (lm-eval's and DSPy's dependency trees replace packages of the project's environment),
so they live in an environment of their own, `GPO_VLLM_HOME/bench-venv` (default
`~/.cache/gpo-engine/bench-venv`), made by `python -m perf.peer_env`: the project's dependencies
plus the extra. A contender whose module this interpreter can import runs here; otherwise in
that environment when it has it; otherwise it is skipped, with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import venv
from functools import cache
from pathlib import Path

from backends.vllm_cpu import vllm_home

BENCH_PACKAGES = ("dspy==3.4.1", "lm-eval[api]==0.4.13")
PROJECT_PACKAGES = (
    "aiohttp>=3.9",
    "asyncio-throttle>=1.0.2",
    "uvloop>=0.19",
    "orjson>=3.9",
    "numpy>=1.26",
    "rich>=13",
    "rouge==1.0.1",
    "rouge-score>=0.1.2",
    "matplotlib>=3.8",
    "openai>=1.30",
    "tenacity>=8.2",
)
INSTALL_HINT = "python -m perf.peer_env (makes the bench environment with the `bench` extra)"


def bench_venv_python() -> Path:
    return vllm_home() / "bench-venv" / "bin" / "python"


@cache
def _importable_by(python: str, module: str) -> bool:
    if python == sys.executable:
        return importlib.util.find_spec(module) is not None
    if not Path(python).is_file():
        return False
    probe = f"import importlib.util,sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", probe], capture_output=True, check=False).returncode == 0


def worker_python(extra: str | None) -> str | None:
    """The interpreter that runs a contender needing `extra` (a module name), or None."""
    if extra is None or _importable_by(sys.executable, extra):
        return sys.executable
    python = str(bench_venv_python())
    return python if _importable_by(python, extra) else None


def make_bench_venv() -> Path:
    """Create (or update) the bench environment: the project's dependencies and the extra."""
    target = bench_venv_python().parent.parent
    if not bench_venv_python().is_file():
        venv.create(target, with_pip=True)
    pip = [str(bench_venv_python()), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *PROJECT_PACKAGES, *BENCH_PACKAGES], check=True)
    return target


if __name__ == "__main__":
    print(make_bench_venv())
