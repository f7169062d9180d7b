"""The limit on a real vLLM server, measured: the managed vLLM CPU server bench starts
(`--vllm-cpu`), and the offline limit of a workload on the same model and engine arguments.

The offline limit is what vLLM's own offline engine does with the workload when it has all of
it at once: every chain's first turn through `LLM.chat` in one call, then every second turn
(built from the first answers as the engine's chains build them) in a second call, same
sampling (greedy, the evaluator's max tokens), timed without the model load, after a warm-up,
median of the repeats (`perf/vllm_offline.py`, run by the vLLM environment's interpreter). No
client of the server can beat it by more than noise: the server runs the same engine, and
the client may only add HTTP, queueing and its own CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import PromptLayout, Task, answer_turn, build_prompt
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.rounds import plan_rounds
from perf.workloads import Workload

OFFLINE_SCRIPT = Path(__file__).with_name("vllm_offline.py")
CPU_MAX_NUM_BATCHED_TOKENS = 2048
"""vLLM's default for its OpenAI server on CPU (`EngineArgs.get_batch_defaults`); the offline
`LLM` class defaults to 4096, so it is given the server's value explicitly."""
OFFLINE_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class ManagedVllm:
    """The managed vLLM CPU server bench started: where it is and what it runs."""

    url: str
    model: str
    max_num_seqs: int
    model_dir: str
    description: str

    def settings(self, settings: Any) -> Any:
        """Bench settings pointed at this server (its URL, name, batch and model directory), with
        the model's own chat template: SmolLM2's adds a system turn where a chat has none, which
        the hand-written ChatML does not, so the engine would rightly refuse to send ChatML
        prompt lists and fall back to one chat per call."""
        return dataclasses.replace(
            settings,
            url=self.url,
            model=self.model,
            max_num_seqs=self.max_num_seqs,
            model_dir=settings.model_dir or self.model_dir,
            chat_template=self.model_dir,
            vllm_cpu=False,
        )


@contextlib.contextmanager
def managed_vllm_cpu() -> Iterator[ManagedVllm]:
    """The project's managed vLLM CPU server on the embedded SmolLM2, as `gpo serve --vllm
    embedded` starts it, with VLLM_SERVER_DEV_MODE=1 so its prefix cache can be reset between
    runs; stopped on leaving."""
    from backends.vllm_cpu import embedded_model_dir
    from backends.vllm_serve import ManagedVllmServer, VllmServeConfig

    os.environ.setdefault("VLLM_SERVER_DEV_MODE", "1")
    with ManagedVllmServer(VllmServeConfig(model="embedded", runtime="cpu")) as server:
        yield ManagedVllm(
            server.url,
            server.model_name,
            server.max_num_seqs,
            str(embedded_model_dir()),
            server.description,
        )


def offline_engine_args(max_num_seqs: int) -> dict[str, Any]:
    """The managed server's engine arguments for the embedded model on CPU (`plan_launch`)."""
    from backends.vllm_cpu import EMBEDDED_VLLM_CONTEXT_TOKENS

    return {
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": CPU_MAX_NUM_BATCHED_TOKENS,
        "enforce_eager": True,
        "max_model_len": EMBEDDED_VLLM_CONTEXT_TOKENS,
        "dtype": "bfloat16",
    }


def offline_chains(workload: Workload, task: Task) -> list[dict[str, Any]]:
    """Every chain of the workload's (single) round: first-turn messages and follow-up, in the
    engine's chain order (prompt-major)."""
    layout = PromptLayout()
    chains = []
    for plan in plan_rounds(workload, task):
        for group in plan.groups:
            for _, sample in group.chains:
                messages = build_prompt(group.prompt, sample, layout)
                assert not isinstance(messages, str), "the benchmark scores chat scorers"
                chains.append(
                    {
                        "messages": [{"role": r, "content": c} for r, c in messages],
                        "follow_up": answer_turn(task, sample),
                    }
                )
    return chains


@dataclass(frozen=True, slots=True)
class OfflineLimit:
    seconds: list[float]
    tokens: list[int]
    load_s: float
    digests: list[str | None]
    engine_args: dict[str, Any]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def note(self, scored_prompts: int) -> str:
        runs = ", ".join(f"{s:.2f}" for s in self.seconds)
        return (
            f"measured offline limit {self.median_s:.2f} s = {scored_prompts / self.median_s:,.1f}"
            f" scored prompts/s, {statistics.median(self.tokens) / self.median_s:,.0f} generated"
            f" tokens/s (vLLM LLM.chat, turn 1 then turn 2, median of {runs} s; engine args "
            f"{json.dumps(self.engine_args, sort_keys=True)})"
        )


def digest(answers: list[str]) -> str:
    """The same digest as `Transcript.digests`, so offline answers compare with a contender's."""
    return hashlib.blake2b("\x1e".join(answers).encode(), digest_size=8).hexdigest()


def measure_offline_limit(
    workload: Workload, task: Task, model_dir: str, max_num_seqs: int, repeat: int
) -> OfflineLimit:
    """Run `perf/vllm_offline.py` with the vLLM environment's interpreter on the workload."""
    from backends.vllm_cpu import CPU_KV_CACHE_ENV, CPU_KV_CACHE_GIB, vllm_venv_python

    if len(workload.rounds) != 1:
        raise ValueError(f"{workload.key}: the offline limit is measured on one-round workloads")
    python = vllm_venv_python()
    if not python.is_file():
        raise FileNotFoundError(f"no vLLM environment at {python}: run `gpo setup-local --vllm`")
    spec = {
        "model_dir": model_dir,
        "engine_args": offline_engine_args(max_num_seqs),
        "first_turn": {"max_tokens": FIRST_TURN_PARAMS.max_tokens},
        "second_turn": {"max_tokens": FOLLOW_UP_PARAMS.max_tokens},
        "repeat": repeat,
        "chains": offline_chains(workload, task),
    }
    env = dict(os.environ)
    env.setdefault(CPU_KV_CACHE_ENV, CPU_KV_CACHE_GIB)
    with tempfile.TemporaryDirectory(prefix="gpo-bench-offline-") as folder:
        spec_path, result_path = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec_path.write_text(json.dumps(spec))
        completed = subprocess.run(
            [str(python), str(OFFLINE_SCRIPT), str(spec_path), str(result_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=OFFLINE_TIMEOUT_S,
            check=False,
        )
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"the offline limit run failed:\n{completed.stderr[-3000:]}")
        result = json.loads(result_path.read_text())
    return OfflineLimit(
        result["seconds"],
        result["tokens"],
        result["load_s"],
        [digest(a) for a in result["answers"]],
        result["engine_args"],
    )


@dataclass(frozen=True, slots=True)
class RealLimit:
    """A workload's measured offline limit as bench reports it."""

    limit_s: float
    note: str
    digests: list[str | None]

    def compare(self, runs: Sequence[Any]) -> str:
        """The engine's answers (its first run's digests) against the offline engine's."""
        from perf.results import compare_answers

        return compare_answers(self.digests, runs[0].digests)


def real_limit(
    workload: Workload, task: Task, model_dir: str, endpoint: Any, repeat: int
) -> RealLimit:
    """Measure the offline limit of `workload` for the real `endpoint`'s model and batch, with
    at least 3 timed repeats (medians)."""
    offline = measure_offline_limit(
        workload, task, model_dir, endpoint.max_num_seqs, max(3, repeat)
    )
    return RealLimit(offline.median_s, offline.note(workload.scored_prompts), offline.digests)
