"""The real-server parts of the benchmark that need no server: the offline limit's chains (the
second turn built as the engine's chains build it), the 95% Bar line of a measured limit, and
where the peers' own code runs. The offline limit itself against the real vLLM is tested in
test_vllm_cpu.py (one model load, beside the module's server)."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

from backends.chat_template import get_chat_template
from benchmarks import PromptLayout, build_prompt, load_task
from perf import vllm_offline
from perf.bar import bar_lines
from perf.contenders import CONTENDERS
from perf.contenders.base import RunContext, Transcript
from perf.peer_env import worker_python
from perf.real_limit import offline_chains, offline_engine_args
from perf.results import ContenderMetrics, WorkloadReport
from perf.rounds import plan_rounds
from perf.scales import SCALES, TASK_NAME
from perf.workloads import build_workloads


class _FakeLLM:
    """`LLM.chat` that answers each conversation with a text naming its position."""

    def __init__(self) -> None:
        self.calls: list[list[list[dict[str, str]]]] = []

    def chat(self, conversations: list[Any], sampling: Any, use_tqdm: bool) -> list[Any]:
        self.calls.append(conversations)
        turn = len(self.calls)
        return [
            SimpleNamespace(outputs=[SimpleNamespace(text=f"answer {turn}.{i}", token_ids=[1, 2])])
            for i in range(len(conversations))
        ]


def test_the_offline_second_turn_is_the_engines_conversation(monkeypatch) -> None:
    task = load_task(TASK_NAME)
    workload = build_workloads(SCALES["smoke"])["W1"]
    chains = offline_chains(workload, task)
    monkeypatch.setattr(vllm_offline, "_sampling", lambda settings: settings)
    spec = {"first_turn": {"max_tokens": 256}, "second_turn": {"max_tokens": 100}}
    llm = _FakeLLM()
    result = vllm_offline._run_once(llm, spec, chains)
    assert len(llm.calls) == 2 and len(llm.calls[0]) == len(chains) == workload.scored_prompts
    # The engine's chain: its first turn, then RunContext.conversation (the evaluator's shape).
    ctx = RunContext(task, plan_rounds(workload, task), None, Transcript(0), 0.0)  # type: ignore[arg-type]
    render = get_chat_template("chatml")
    index = 0
    for plan in ctx.rounds:
        for group in plan.groups:
            for _, sample in group.chains:
                first = build_prompt(group.prompt, sample, PromptLayout())
                second = ctx.conversation(first, f"answer 1.{index}", sample)  # type: ignore[arg-type]
                assert second is not None
                sent = [(m["role"], m["content"]) for m in llm.calls[1][index]]
                assert render(sent) == render(second)
                assert result["answers"][index] == [f"answer 1.{index}", f"answer 2.{index}"]
                index += 1
    assert result["tokens"] == 4 * len(chains)


def test_the_offline_engine_gets_the_managed_servers_arguments() -> None:
    args = offline_engine_args(128)
    assert args["max_num_seqs"] == 128 and args["max_num_batched_tokens"] == 2048
    assert args["enforce_eager"] is True and args["dtype"] == "bfloat16"
    assert args["max_model_len"] == 8192


def _row(name: str, wall_s: float, percent: float | None) -> ContenderMetrics:
    return ContenderMetrics(
        name, "", 3, 8, 8, wall_s, 8 / wall_s, percent, None, 0.1, 1.0, 16, 0, 16, 0, 0, 1.0,
        False, "same",
    )  # fmt: skip


@pytest.mark.parametrize(("note", "percent", "passed"), [
    ("measured offline limit 1.00 s = 8 scored prompts/s", 94.0, False),
    ("measured offline limit 1.00 s = 8 scored prompts/s", 96.0, True),
    ("theoretical limit 1.00 s = 8 scored prompts/s", 94.0, True),
])  # fmt: skip
def test_a_measured_limit_asks_95_percent(note: str, percent: float, passed: bool) -> None:
    report = WorkloadReport("W1", "one GPO step", "", "", 1.0, note)
    report.rows.append(_row("engine", 100.0 / percent, percent))
    line = next(line for line in bar_lines([report], None) if "% of the" in line.name)
    assert line.passed is passed
    assert ("95%" in line.name) is note.startswith("measured")


def test_peers_run_where_their_code_is_or_are_named_as_missing() -> None:
    assert worker_python(None) == sys.executable
    assert worker_python("no_such_module_for_gpo_bench") is None
    for name in ("dspy-evaluate", "lm-eval-completions", "lm-eval-chat"):
        assert CONTENDERS[name].extra in ("dspy", "lm_eval")
