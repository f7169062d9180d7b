"""The documented Python API: `engine` and `gpo` export what `__all__` says, and the examples of
docs/python-api.md (the same code as the packages' docstrings) run as written against the
simulated server: a user's own loop gets the model's answers and a ledger that matches what the
server billed, and a GPO run driven from Python improves its prompt."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import engine
import gpo
from backends.simulated import OutputLengths, SimulatedServer, SimulatedServerConfig, is_correct
from tests.gpo_fakes import DATA_DIR
from tests.gpo_process import answer_key

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "python-api.md"
MODEL = SimulatedServerConfig().model
ANSWER = re.compile(r"So the answer is (.+?)\.?$")


def example(index: int, package: ModuleType) -> dict[str, Any]:
    """Run the `index`-th Python block of the docs, after checking the package shows the same."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    code = blocks[index]
    assert textwrap.indent(code, "    ").strip() in (package.__doc__ or "")
    namespace: dict[str, Any] = {"__name__": f"docs_example_{index}"}
    exec(compile(code, f"{DOCS}[{index}]", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("package", [engine, gpo], ids=["engine", "gpo"])
def test_every_exported_name_resolves(package: ModuleType) -> None:
    names = package.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(package, name) is not None, name
    star: dict[str, Any] = {}
    exec(f"from {package.__name__} import *", star)
    assert set(star) - {"__builtins__"} == set(names)


def test_the_packages_import_in_a_fresh_interpreter_without_cycles() -> None:
    # A submodule first, then the packages: the order a cycle through __init__ would break.
    code = "import gpo.optimizer, engine.evaluator, gpo, engine; print(len(gpo.__all__))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(gpo.__all__))


async def test_the_engine_example_returns_the_models_answers_and_their_usage() -> None:
    key = answer_key()
    questions = list(key)[:12]
    questions.append(questions[0])  # asked twice: shared, paid once
    # Short fixed-length answers, so that none is cut by the example's max_tokens.
    config = SimulatedServerConfig(
        zero_latency=True, output_lengths=OutputLengths(distribution="fixed", mean=40)
    )
    ask_all = example(0, engine)["ask_all"]
    async with SimulatedServer(config, answer_key=key) as server:
        answers, usage = await ask_all(f"{server.url}/v1", MODEL, questions)
        served = server.counters
    assert len(answers) == len(questions)
    for question, answer in zip(questions, answers, strict=True):
        found = ANSWER.search(answer)
        assert found is not None, answer[-80:]
        # The simulated model answers right exactly when its hash says so: these are its answers.
        assert (found.group(1) == key[question]) == is_correct("", question)
    assert answers[-1] == answers[0]
    assert usage["requests"] == 12 and usage["deduplicated"] == 1
    assert usage["failures"] == 0 and usage["cost_usd"] == 0
    assert usage["prompt_tokens"] == served.prompt_tokens_served > 0
    assert usage["completion_tokens"] == served.completion_tokens_served > 0
    assert served.sequences_served == 12
    assert served.purposes == {"none": 12}  # ordinary requests carry no purpose


async def test_the_gpo_example_improves_the_prompt_with_labelled_optimizer_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPO_DATA_DIR", str(DATA_DIR))
    optimize = example(1, gpo)["optimize"]
    config = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(config, answer_key=answer_key()) as server:
        summary = await optimize(f"{server.url}/v1", MODEL)
        purposes = dict(server.counters.purposes)
    (task,) = summary["tasks"]
    assert summary["status"] == "finished" and task["steps_done"] == 3
    assert task["final_dev"] > task["initial_dev"]
    assert task["final_prompt"] != task["initial_prompt"]
    # One n=4 request for new prompts per step, each labelled; scoring requests are not.
    assert purposes["new-prompt"] == 3
    assert "reflection" not in purposes and purposes["none"] > 0
