"""Running the `gpo` CLI as a user does: a subprocess against a simulated server that knows the
answers. Shared by the end-to-end tests.

- `answer_key` maps a task's questions to their gold answers, so the simulated scorer can be
  right or wrong by the prompt's merit; `answered_server` starts a simulated server process that
  holds it.
- `gpo_environment` is what a run inherits: the shared data, a wide terminal (one-line errors),
  no `OPENAI_BASE_URL` from the developer's shell and, unless asked, no API keys either.
- `run_gpo` runs `python -m gpo ...` in the repository and returns the finished process,
  `start_gpo` starts it and returns at once (for runs a test kills or runs side by side);
  `optimize_args` is a small two-role optimisation against one server, `eval_args` a short
  evaluation of `TASK`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backends.simulated import SimulatedServerConfig, SimulatedServerProcess, start_server_process
from benchmarks import load_task
from tests.gpo_fakes import DATA_DIR

REPO = Path(__file__).resolve().parents[1]
TASK = "bbh/navigate"


def answer_key(
    task_name: str = TASK, splits: tuple[str, ...] = ("train", "eval", "test")
) -> dict[str, str]:
    """Question -> gold answer for every sample of `splits`."""
    task = load_task(task_name, DATA_DIR)
    return {sample.input: sample.target for split in splits for sample in task.split(split)}


@contextmanager
def answered_server(time_scale: float, **config: Any) -> Iterator[SimulatedServerProcess]:
    """A simulated server process at `time_scale` that knows `TASK`'s answers."""
    settings = SimulatedServerConfig(time_scale=time_scale, **config)
    with start_server_process(settings, answer_key=answer_key()) as server:
        yield server


def gpo_environment(
    extra: Mapping[str, str] | None = None, *, keep_api_keys: bool = False
) -> dict[str, str]:
    """The environment a `gpo` subprocess gets; `extra` is added last."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "OPENAI_BASE_URL" and (keep_api_keys or "API_KEY" not in name)
    }
    env.update({"GPO_DATA_DIR": str(DATA_DIR), "COLUMNS": "200"})
    env.update(extra or {})
    return env


def run_gpo(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    preexec: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m gpo ARGS` in the repository, with `gpo_environment()` unless `env` is given."""
    return subprocess.run(
        [sys.executable, "-m", "gpo", *args],
        cwd=REPO,
        env=dict(env) if env is not None else gpo_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        check=False,
    )


def start_gpo(
    *args: str, env: Mapping[str, str] | None = None, capture: bool = True
) -> subprocess.Popen[str]:
    """`python -m gpo ARGS` started in the repository; output captured, or discarded."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "gpo", *args],
        cwd=REPO,
        env=dict(env) if env is not None else gpo_environment(),
        stdout=output,
        stderr=output,
        text=True,
    )


def optimize_args(
    url: str, run_dir: Path, *extra: str, steps: int = 2, chat_template: str | None = "chatml"
) -> list[str]:
    """`gpo optimize` of `TASK`: 4 candidates a step, 16 train, 8 dev and 8 test samples, one
    server (`url` ends in /v1) as scorer and optimizer."""
    arguments = ["optimize", "--task", TASK, "--steps", str(steps), "--candidates", "4"]
    arguments += ["--train-size", "16", "--dev-size", "8", "--test-size", "8"]
    arguments += ["--scorer-url", url, "--optimizer-url", url]
    if chat_template is not None:
        arguments += ["--scorer-chat-template", chat_template]
    return [*arguments, "--run-dir", str(run_dir), "--no-progress", *extra]


def eval_args(server_root: str, out: Path, *extra: str, limit: int = 8) -> list[str]:
    """`gpo eval` of `TASK` on `limit` samples against the server at `server_root` (no /v1)."""
    arguments = ["eval", "--task", TASK, "--limit", str(limit), "--scorer-url", f"{server_root}/v1"]
    return [*arguments, "--scorer-chat-template", "chatml", "--out", str(out), *extra]
