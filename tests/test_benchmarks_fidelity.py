"""Faithful to the reference implementation (RUCAIBox/GPO) by default.

- The default answer rules agree with every verdict in ../shared/data/reference_verdicts.jsonl
  (outputs scored by the reference's own functions), and `lenient` differs from them only where
  docs/fidelity.md lists a deviation.
- The scorer's second turn is the reference's text, byte for byte, for every task.
- WebNLG's ROUGE-L is the `rouge` package's (1.0.1), mean over references.
- ` is the answer` cuts the answer in both rule sets.
- A multi-task run's format examples come from one numpy generator carried across its tasks.
- With `--score-scale raw` the meta-prompts print scores and word the edits as the reference.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.protocol import Message, SamplingParams
from benchmarks import (
    AnswerType,
    PromptLayout,
    Sample,
    Task,
    answer_turn,
    build_prompt,
    extract_answer,
    load_task,
    score_answer,
)
from benchmarks.metrics import rouge_l
from benchmarks.task_registry import PAPER_TASK_NAMES
from gpo.methods import config_for_method
from tests.gpo_fakes import DATA_DIR, FakeOptimizer
from tests.test_gpo_optimizer import SMALL, optimize

REPO_ROOT = Path(__file__).resolve().parents[1]
VERDICTS = DATA_DIR / "reference_verdicts.jsonl"
FIDELITY_DOC = REPO_ROOT / "docs" / "fidelity.md"


def task_name(row: dict[str, Any]) -> str:
    return (
        row["dataset"] if row["dataset"] in ("gsm8k", "wsc") else f"{row['dataset']}/{row['task']}"
    )


@pytest.fixture(scope="module")
def verdicts() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in VERDICTS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) > 2_900
    return rows


@pytest.fixture(scope="module")
def reference_tasks() -> dict[str, Task]:
    return {name: load_task(name, DATA_DIR) for name in PAPER_TASK_NAMES}


@pytest.fixture(scope="module")
def lenient_tasks() -> dict[str, Task]:
    return {name: load_task(name, DATA_DIR, answer_rules="lenient") for name in PAPER_TASK_NAMES}


def verdict(task: Task, row: dict[str, Any]) -> int:
    return int(score_answer(task, Sample("x", "", str(row["gold"])), row["output"]))


# -- (a) the default rules are the reference's ------------------------------------------------


def test_default_rules_agree_with_every_reference_verdict(
    verdicts: list[dict[str, Any]], reference_tasks: dict[str, Task]
) -> None:
    disagreements = []
    for row in verdicts:
        task = reference_tasks[task_name(row)]
        assert task.answer_rules == "reference"
        parsed = extract_answer(task, row["output"])
        if verdict(task, row) != row["reference_correct"] or parsed != row["reference_parsed"]:
            disagreements.append((task.name, row["output"], parsed, row["reference_parsed"]))
    agreement = 1 - len(disagreements) / len(verdicts)
    assert not disagreements, f"agreement {agreement:.2%}; e.g. {disagreements[:5]}"


# -- (b) lenient differs only by documented deviations ----------------------------------------

_PRIMARY_CUES = ("answer is ", "answer: ", "answer is: ")
_NUMBER_WORD = re.compile(r"\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b")
_BOOLEAN_WORDS = {"true", "false", "yes", "no", "valid", "invalid"}
_BOOLEAN_PAIRS = ({"true", "false"}, {"yes", "no"}, {"valid", "invalid"})
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _plain(text: str) -> str:
    return " ".join(text.translate(_NO_PUNCTUATION).lower().split())


# Each deviation of docs/fidelity.md: (the side it credits, does it explain this line?).
Case = tuple[AnswerType, str, str, str]  # answer type, gold, output, the reference's parse
DEVIATIONS: dict[str, tuple[str, Callable[[Case], bool]]] = {
    "cue-case": (
        "lenient",
        lambda c: (
            any(cue in c[2].lower() for cue in _PRIMARY_CUES)
            and not any(cue in c[2] for cue in _PRIMARY_CUES)
        ),
    ),
    "boolean-word": ("lenient", lambda c: c[0] is AnswerType.BOOLEAN and len(c[3].split()) > 1),
    "boolean-classes": (
        "lenient",
        lambda c: (
            c[0] is AnswerType.BOOLEAN
            and c[3] in _BOOLEAN_WORDS
            and not any(c[3] in pair and c[1].lower() in pair for pair in _BOOLEAN_PAIRS)
        ),
    ),
    "number-words": (
        "lenient",
        lambda c: c[0] is AnswerType.NUMERIC and _NUMBER_WORD.search(c[2].lower()) is not None,
    ),
    "number-in-token": (
        "lenient",
        lambda c: c[0] is AnswerType.NUMERIC and re.search(r"\d[^\s\d]+\d", c[2]) is not None,
    ),
    "number-sign": (
        "reference",
        lambda c: c[0] is AnswerType.NUMERIC and c[3].lstrip("-") == c[1].lstrip("-"),
    ),
    "dyck-spacing": ("lenient", lambda c: c[0] is AnswerType.DYCK),
    "word-list-layout": ("lenient", lambda c: c[0] is AnswerType.WORD_SORTING),
    "word-list-line": (
        "reference",
        lambda c: (
            c[0] is AnswerType.WORD_SORTING
            and any(line.strip() == c[1] for line in c[2].lower().splitlines())
        ),
    ),
    "option-brackets": (
        "reference",
        lambda c: (
            c[0] is AnswerType.MULTIPLE_CHOICE
            and re.fullmatch(r"[\W_]*[A-Za-z][\W_]*", c[2]) is not None
        ),
    ),
    "text-punctuation": ("reference", lambda c: _plain(c[2]) == _plain(c[1])),
}


def test_lenient_differs_only_by_documented_deviations(
    verdicts: list[dict[str, Any]],
    reference_tasks: dict[str, Task],
    lenient_tasks: dict[str, Task],
) -> None:
    documented = FIDELITY_DOC.read_text(encoding="utf-8")
    for name in DEVIATIONS:
        assert f"`{name}`" in documented, f"deviation {name} is not in {FIDELITY_DOC}"
    by_deviation: Counter[str] = Counter()
    unexplained = []
    differing = 0
    for row in verdicts:
        name = task_name(row)
        lenient = verdict(lenient_tasks[name], row)
        if lenient == row["reference_correct"]:
            continue
        differing += 1
        task = reference_tasks[name]
        case = (task.answer_type, str(row["gold"]), row["output"].strip(), row["reference_parsed"])
        credited_by = "lenient" if lenient else "reference"
        reasons = [
            deviation
            for deviation, (side, explains) in DEVIATIONS.items()
            if side == credited_by and explains(case)
        ]
        if reasons:
            by_deviation[reasons[0]] += 1
        else:
            unexplained.append((name, row["gold"], row["output"], credited_by))
    assert not unexplained, unexplained[:10]
    assert differing == sum(by_deviation.values()) > 0
    # Every documented deviation shows up in the verdicts file.
    assert set(by_deviation) == set(DEVIATIONS), by_deviation


def test_lenient_no_longer_credits_hedges(lenient_tasks: dict[str, Task]) -> None:
    navigate = lenient_tasks["bbh/navigate"]
    for gold in ("Yes", "No"):
        sample = Sample("x", "", gold)
        assert score_answer(navigate, sample, "I cannot say yes or no.") == 0.0
        assert score_answer(navigate, sample, "It could be Yes or No; hard to say.") == 0.0
    sample = Sample("x", "", "No")
    assert score_answer(navigate, sample, "There is no way back. No.") == 1.0
    assert score_answer(navigate, sample, "Not Yes, so No.") == 1.0


# -- (e) the ` is the answer` cue --------------------------------------------------------------


@pytest.mark.parametrize("rules", ["reference", "lenient"])
@pytest.mark.parametrize("name", ["gsm8k", "bbh/object_counting", "bbh/multistep_arithmetic_two"])
def test_is_the_answer_cuts_the_text(name: str, rules: str) -> None:
    task = load_task(name, DATA_DIR, answer_rules=rules)  # type: ignore[arg-type]
    assert extract_answer(task, "3 is the answer, not 5.") == "3"
    assert score_answer(task, Sample("x", "", "3"), "3 is the answer, not 5.") == 1.0
    assert score_answer(task, Sample("x", "", "5"), "3 is the answer, not 5.") == 0.0


# -- (c) the second turn, byte for byte ---------------------------------------------------------

YES_NO = 'Directly tell me your answer using only "Yes" or "No".'
NUMERIC = "Therefore, summarize your final answer with just one number in your response."
BBH_OPTIONS = "bbh options"  # "... among (A) and {end_choice}." read from the first turn
SECOND_TURNS: dict[str, str | None] = {
    "boolean_expressions": 'Directly tell me your answer using only "True" or "False".',
    "causal_judgement": YES_NO,
    "navigate": YES_NO,
    "sports_understanding": YES_NO,
    "web_of_lies": YES_NO,
    "formal_fallacies": 'Directly tell me your answer using only "valid" or "invalid".',
    "object_counting": NUMERIC,
    "multistep_arithmetic_two": NUMERIC,
    "dyck_languages": (
        "Directly output the newly added parentheses that make the parentheses close correctly."
    ),
    "word_sorting": (
        "Directly output the result of sorting the words alphabetically, separating each word "
        "with a space."
    ),
    "mmlu": "Therefore, summarize your answer with an option among (A) and (D).",
    "wsc": "Therefore, summarize your answer with an option between (A) and (B).",
    "gsm8k": NUMERIC,
    "webnlg": None,
}


def expected_second_turn(name: str, first_turn: str, position: str) -> str | None:
    key = name.split("/", 1)[1] if name.startswith("bbh/") else name.split("/", 1)[0]
    expected = SECOND_TURNS.get(key, BBH_OPTIONS)
    if expected != BBH_OPTIONS:
        return expected
    # The reference: the line before the instruction (Q_end) or the last line (Q_begin), its
    # first bracketed letter, else the whole line.
    line = first_turn.split("\n")[-2 if position == "Q_end" else -1]
    letters = re.findall(r"\([A-Za-z]\)", line)
    end_choice = letters[0] if letters else line
    return f"Therefore, summarize your answer with an option among (A) and {end_choice}."


@pytest.mark.parametrize(
    ("instruction", "position"),
    [("Let's think step by step.", "Q_end"), ("", "Q_end"), ("Think.", "Q_begin")],
)
def test_second_turn_is_the_references_for_every_task(
    reference_tasks: dict[str, Task], instruction: str, position: str
) -> None:
    layout = PromptLayout(position)  # type: ignore[arg-type]
    bbh_options = 0
    for name, task in reference_tasks.items():
        for sample in task.split("test")[:20]:
            first = build_prompt(instruction, sample, layout)
            assert not isinstance(first, str)
            content = first[-1][1]
            expected = expected_second_turn(name, content, position)
            assert answer_turn(task, sample, content, position) == expected, (name, sample.id)
            bbh_options += name.startswith("bbh/") and name.split("/")[1] not in SECOND_TURNS
    assert bbh_options == 17 * 20


def test_empty_instruction_names_the_second_to_last_option(
    reference_tasks: dict[str, Task],
) -> None:
    """The reference's quirk, kept: with no instruction the line before it is an option."""
    task = reference_tasks["bbh/date_understanding"]
    sample = task.split("test")[0]
    first = build_prompt("", sample, PromptLayout())
    assert not isinstance(first, str)
    assert sample.input.splitlines()[-1].startswith("(F)")
    assert answer_turn(task, sample, first[-1][1]) == (
        "Therefore, summarize your answer with an option among (A) and (E)."
    )


# -- (d) WebNLG ROUGE-L -------------------------------------------------------------------------


def rouge_package_mean(prediction: str, references: Sequence[str]) -> float:
    from rouge import Rouge

    rouge = Rouge()
    scores = [rouge.get_scores(prediction, ref)[0]["rouge-l"]["f"] for ref in references]
    return sum(scores) / len(scores)


def test_webnlg_rouge_l_is_the_rouge_packages(reference_tasks: dict[str, Task]) -> None:
    task = reference_tasks["webnlg"]
    assert task.rouge_package == "rouge"
    checked = 0
    for sample in task.split("test"):
        for prediction in (*sample.references, sample.input):
            expected = rouge_package_mean(prediction, sample.references)
            assert score_answer(task, sample, prediction) == pytest.approx(expected, abs=1e-6)
            checked += 1
    assert checked > 600


def test_rouge_score_stays_an_option() -> None:
    task = load_task("webnlg", DATA_DIR, rouge_package="rouge_score")
    sample = task.split("test")[0]
    lower = sample.references[0].lower()
    # rouge_score lowercases; the reference's package is case-sensitive.
    assert score_answer(task, sample, lower) == pytest.approx(
        rouge_l(lower, sample.references, "mean", "rouge_score")
    )
    assert rouge_l(lower, sample.references, "mean", "rouge_score") > rouge_l(
        lower, sample.references, "mean", "rouge"
    )


# -- (f) format examples drawn across the run's tasks -------------------------------------------

TWO_TASKS = ("bbh/navigate", "bbh/date_understanding")


def reference_format_draws(tasks: Sequence[Task], count: int) -> list[list[int]]:
    """The reference's sequence: numpy's global generator seeded once, then for each task in
    order a permutation of train, eval and test and `count` sorted format indices."""
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        drawn = []
        for task in tasks:
            for split in ("train", "eval", "test"):
                size = len(task.split(split))
                np.random.choice(size, size=size, replace=False)
            fmt = np.random.choice(len(task.split("format")), size=count, replace=False)
            drawn.append(sorted(int(i) for i in fmt))
        return drawn
    finally:
        np.random.set_state(saved)


class RecordingOptimizer(FakeOptimizer):
    """The fake optimizer, keeping every update meta-prompt it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.meta_prompts: list[str] = []

    def answer(self, messages: Sequence[Message], params: SamplingParams, choice: int) -> str:
        if choice == 0 and messages[-1][1].startswith("Your task is to write a prompt"):
            self.meta_prompts.append(messages[-1][1])
        return super().answer(messages, params, choice)


async def test_two_task_run_carries_the_generator_to_the_second_task(tmp_path: Path) -> None:
    tasks = [load_task(name, DATA_DIR) for name in TWO_TASKS]
    first, second = reference_format_draws(tasks, 3)
    alone = reference_format_draws(tasks[1:], 3)[0]
    assert second != alone  # the carried state matters for this pair
    optimizer = RecordingOptimizer()
    config = config_for_method("gpo", **(SMALL | {"steps": 1}))
    await optimize(tmp_path / "run", config, optimizer_backend=optimizer, tasks=TWO_TASKS)
    for task, indices in zip(tasks, (first, second), strict=True):
        formats = task.split("format")
        shown = [p for p in optimizer.meta_prompts if formats[indices[0]].input in p]
        assert shown, f"{task.name}: no meta-prompt shows format example {indices[0]}"
        for index in range(len(formats)):
            example = f"Input:\n{formats[index].input}\n<Prompt>\nOutput:\n{formats[index].target}"
            assert (example in shown[0]) == (index in indices), (task.name, index)


# -- meta-prompts under --score-scale raw --------------------------------------------------------


def test_raw_scale_prints_a_single_score_rounded_and_edits_in_the_references_words() -> None:
    from gpo.meta_prompts import FormatExample, render_update_prompt
    from gpo.trajectory import TrajectoryEntry

    current = TrajectoryEntry(0, "Think carefully.", 0.5208333333333334)
    examples = [FormatExample("Is 2 even?", "Yes")]
    ape = render_update_prompt(
        style="generate", current=current, examples=examples, position="Q_end", score_scale="raw"
    )
    assert "Prompt: Think carefully.\nScore: 0.52\n\n" in ape
    apo = render_update_prompt(
        style="edit",
        current=current,
        examples=examples,
        position="Q_end",
        problems="It ignores the options.",
        score_scale="raw",
    )
    assert apo.endswith(
        "Modify the current prompt and get a new improved prompt to replace <Prompt> at the end "
        "of the question in the task examples.\nWrap the modified prompt with <START> and <END>."
    )
    shown = [TrajectoryEntry(1, "Be brief.", 0.4375), current]
    edit = render_update_prompt(
        style="edit",
        current=current,
        examples=examples,
        position="Q_end",
        shown=shown,
        score_scale="raw",
    )
    assert "Score: 0.4375\n" in edit
    assert (
        "Carefully analyze the previous prompts and their scores, modify the current prompt, "
        "and get a new improved prompt"
    ) in edit
    assert "you replace <Prompt> in each input with your text, then" in edit


# -- the flags and the run's record ---------------------------------------------------------------


def test_answer_rules_flags_reach_the_run_and_its_config() -> None:
    from gpo.cli import build_parser
    from gpo.cli_eval import build_job
    from gpo.cli_optimize import build_optimize_parser, run_config, spec_from_args

    base = ["--task", "bbh/navigate", "--data-dir", str(DATA_DIR)]
    default = spec_from_args(build_optimize_parser().parse_args(base))
    assert default.rules.to_json() == {"answer_rules": "reference", "rouge_package": "rouge"}
    args = build_optimize_parser().parse_args(
        [*base, "--answer-rules", "lenient", "--rouge-package", "rouge_score"]
    )
    config = run_config(spec_from_args(args), args)
    assert config["scoring"]["answer_rules"] == "lenient"
    assert config["scoring"]["rouge_package"] == "rouge_score"
    eval_args = build_parser().parse_args(["eval", *base, "--answer-rules", "lenient"])
    assert build_job(eval_args).rules.answer_rules == "lenient"
    with pytest.raises(SystemExit):
        build_optimize_parser().parse_args([*base, "--answer-rules", "loose"])
