"""Answer extraction, metrics and the second answer turn, on realistic scorer outputs.

The acceptance bar: every gold target, fed back as the scorer's answer, scores 1.0 on every
sample of every split of all 87 tasks, under both answer rules. Tests of a leniency that only
`--answer-rules lenient` has load their tasks with it (the `lenient` fixture); the reference
rules themselves are checked line by line in test_benchmarks_fidelity.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import (
    SPLITS,
    AnswerType,
    BooleanVocabulary,
    Metric,
    Sample,
    Task,
    aggregate,
    answer_turn,
    extract_answer,
    load_task,
    score_answer,
)
from benchmarks.metrics import rouge_l
from benchmarks.normalize import (
    parse_boolean,
    parse_dyck,
    parse_exact_text,
    parse_multiple_choice,
    parse_number,
    parse_word_list,
    strip_answer_cues,
)
from benchmarks.task_registry import PAPER_TASK_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(os.environ.get("GPO_DATA_DIR") or REPO_ROOT / "../shared/data").resolve()
    assert (path / "bbh" / "navigate" / "test.jsonl").is_file(), f"benchmark data not at {path}"
    return path


@pytest.fixture(scope="module")
def tasks(data_dir: Path) -> dict[str, Task]:
    return {name: load_task(name, data_dir) for name in PAPER_TASK_NAMES}


@pytest.fixture(scope="module")
def lenient(data_dir: Path) -> dict[str, Task]:
    """The tasks under `--answer-rules lenient`, for the leniencies the reference lacks."""
    return {name: load_task(name, data_dir, answer_rules="lenient") for name in PAPER_TASK_NAMES}


# -- the acceptance bar ----------------------------------------------------------------------


@pytest.mark.parametrize("rules", ["reference", "lenient"])
def test_every_gold_target_scores_one_on_every_split_of_every_task(
    data_dir: Path, rules: str
) -> None:
    checked = 0
    failures = []
    for name in PAPER_TASK_NAMES:
        task = load_task(name, data_dir, answer_rules=rules)  # type: ignore[arg-type]
        if task.answer_type is AnswerType.FREE_TEXT:
            task = load_task(name, data_dir, rouge_reduction="max")
        for split in SPLITS:
            for sample in task.split(split):
                checked += 1
                # The `rouge` package's F of a text with itself is 1 - 5e-9 (its smoothing).
                if score_answer(task, sample, sample.target) < 1.0 - 1e-6:
                    failures.append(f"{name}/{split}/{sample.id}: {sample.target!r}")
    assert not failures, failures[:10]
    assert checked > 10_000


def test_webnlg_mean_over_references_as_the_paper_reports(tasks: dict[str, Task]) -> None:
    """With the paper's averaging, the first reference scores 1.0 only when it is the only one."""
    webnlg = tasks["webnlg"]
    assert webnlg.rouge_reduction == "mean"
    single = multiple = 0
    for sample in webnlg.split("test"):
        score = score_answer(webnlg, sample, sample.references[0])
        expected = sum(rouge_l(sample.references[0], (r,)) for r in sample.references) / len(
            sample.references
        )
        assert score == pytest.approx(expected)
        if len(set(sample.references)) == 1:
            single += 1
            assert score == pytest.approx(1.0, abs=1e-6)
        else:
            multiple += 1
            assert score < 1.0
    assert single and multiple


def test_wrong_answers_score_zero_on_real_samples(lenient: dict[str, Task]) -> None:
    """Lenient only: the reference credits "-34" for 34 (it compares without punctuation)."""
    tasks = lenient
    cases = {
        "bbh/navigate": "No",  # first test target is Yes
        "bbh/date_understanding": "(A)",  # (D)
        "bbh/multistep_arithmetic_two": "-34",  # 34
        "bbh/dyck_languages": "] ]",  # ]
        "bbh/word_sorting": "zebra apple",
        "gsm8k": "8",  # 7
        "wsc": "(A)",  # (B)
    }
    for name, wrong in cases.items():
        task = tasks[name]
        assert score_answer(task, task.split("test")[0], wrong) == 0.0, name


# -- answer cues -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B).", ("(b).", True)),
        ("First answer: 3. Final answer: 5", ("5", True)),
        ("So the answer is: **True**", ("true", True)),
        ("#### 72", ("72", True)),
        ("The options are: (A) or (C)", ("(a) or (c)", True)),
        ("(C) is the correct answer, because", ("(c)", False)),
        ("The answer is (D) is the final answer", ("(d)", True)),
        ("Just (A)", ("just (a)", False)),
    ],
)
def test_strip_answer_cues(text: str, expected: tuple[str, bool]) -> None:
    assert strip_answer_cues(text) == expected


def test_fallback_cues_only_apply_without_a_primary_cue() -> None:
    assert strip_answer_cues("The answer is 4, the total is: 5") == ("4, the total is: 5", True)


# -- multiple choice -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(B)", "(b)"),
        ("(b) Ovid", "(b)"),
        ("The answer is (C).", "(c)"),
        ("Therefore, the answer is (A) Babe.", "(a)"),
        ("**Answer:** (D) 01/14/2019", "(d)"),
        ("(D) is the correct answer.", "(d)"),
        (
            "Let's check each option. Bob ends with the red ball, so the answer is (E). "
            "Option (A) is wrong.",
            "(e)",
        ),
        ("B", "(b)"),
        ("b.", "(b)"),
        ("I am not sure which option is right.", "i am not sure which option is right"),
        ("", ""),
    ],
)
def test_multiple_choice_extraction(text: str, expected: str) -> None:
    assert parse_multiple_choice(text) == expected


def test_multiple_choice_scoring_on_a_real_sample(tasks: dict[str, Task]) -> None:
    task = tasks["mmlu/anatomy"]
    sample = task.split("test")[0]  # gold (B)
    assert sample.target == "(B)"
    assert score_answer(task, sample, "Therefore, the answer is (B) left and right.") == 1.0
    assert score_answer(task, sample, "The correct option is (A).") == 0.0
    assert score_answer(task, sample, "I don't know.") == 0.0


def test_malformed_gold_label_is_matched_as_text(tasks: dict[str, Task]) -> None:
    task = tasks["bbh/movie_recommendation"]
    sample = next(s for s in task.split("test") if s.target == "Monsters, Inc")
    assert score_answer(task, sample, "Monsters, Inc.") == 1.0
    assert score_answer(task, sample, "(A)") == 0.0


# -- boolean ---------------------------------------------------------------------------------

YES_NO = BooleanVocabulary("Yes", "No")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("Yes.", "yes"),
        ("No, you do not return to the starting point.", "no"),
        ("Based on the instructions, you end up back at the start, so the answer is Yes.", "yes"),
        ("The answer is: **No**", "no"),
        ("True", "yes"),
        ("valid", "yes"),
        ("invalid", "no"),
        ("FALSE!", "no"),
        ("1", "yes"),
        ("0", "no"),
        ("After taking 3 steps and turning around twice, there is no way back. No.", "no"),
        ("It is not true.", "no"),
        ("The sentence is plausible", "the sentence is plausible"),
        ("", ""),
    ],
)
def test_boolean_extraction(text: str, expected: str) -> None:
    assert parse_boolean(text, YES_NO) == expected


def test_boolean_classes_are_shared_across_vocabularies(lenient: dict[str, Task]) -> None:
    """Lenient only: the reference's classes are only label = true/false = 1/0."""
    tasks = lenient
    fallacies = tasks["bbh/formal_fallacies"]
    sample = next(s for s in fallacies.split("test") if s.target == "valid")
    assert score_answer(fallacies, sample, "Valid") == 1.0
    assert score_answer(fallacies, sample, "Yes, the argument is deductively valid.") == 1.0
    assert score_answer(fallacies, sample, "The argument is invalid.") == 0.0
    assert score_answer(fallacies, sample, "It is not valid.") == 0.0
    expressions = tasks["bbh/boolean_expressions"]
    sample = next(s for s in expressions.split("test") if s.target == "False")
    assert extract_answer(expressions, "The expression evaluates to False.") == "false"
    assert score_answer(expressions, sample, "0") == 1.0
    assert score_answer(expressions, sample, "True") == 0.0
    sports = tasks["bbh/sports_understanding"]
    sample = next(s for s in sports.split("test") if s.target == "no")
    assert score_answer(sports, sample, "No") == 1.0


# -- numeric ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("34", "34"),
        ("The answer is -6.", "-6"),
        ("\u2212168", "-168"),
        ("((2 + -6 * -7 - 7) + (-2 - -5 + -4 + -2)) = 34", "34"),
        ("I have a chair, a toaster and a microwave, so I have three objects.", "3"),
        ("Twelve", "12"),
        ("Therefore, the final answer is $1,234.", "1234"),
        ("The total cost is $18.50.", "18"),
        ("2.5", "2"),
        ("3.5", "4"),
        ("She saves 20% of $50, which is $10.", "10"),
        ("#### 72", "72"),
        ("The answer is 12 apples, because 3 + 9 makes 12.", "12"),
        ("There are 3 apples and 4 pears, so 7 fruits.", "7"),
        ("Answer: 5kg", "5"),
        ("-0", "0"),
        ("I could not find the number.", ""),
        ("", ""),
    ],
)
def test_numeric_extraction(text: str, expected: str) -> None:
    assert parse_number(text) == expected


def test_negative_numbers_score(lenient: dict[str, Task]) -> None:
    """Lenient only: the reference credits a number without its minus sign."""
    tasks = lenient
    task = tasks["bbh/multistep_arithmetic_two"]
    sample = next(s for s in task.split("test") if s.target.startswith("-"))
    assert score_answer(task, sample, f"So the answer is {sample.target}.") == 1.0
    assert score_answer(task, sample, sample.target.lstrip("-")) == 0.0


# -- dyck languages and word sorting ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("] ) }", "] ) }"),
        ("])}", "] ) }"),
        ("The remaining sequence is: ] ) }", "] ) }"),
        ("To close it we need ) and then ] >", "] >"),
        ("no brackets here", ""),
    ],
)
def test_dyck_extraction(text: str, expected: str) -> None:
    assert parse_dyck(text) == expected


def test_dyck_scoring(lenient: dict[str, Task]) -> None:
    """Lenient only: the reference compares the brackets with their spacing."""
    tasks = lenient
    task = tasks["bbh/dyck_languages"]
    sample = next(s for s in task.split("test") if s.target == ") >")
    assert score_answer(task, sample, "The closing sequence is: ) >") == 1.0
    assert score_answer(task, sample, ")>") == 1.0
    assert score_answer(task, sample, ") > }") == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abutted agamemnon aquatic", "abutted agamemnon aquatic"),
        ("abutted, agamemnon, aquatic.", "abutted agamemnon aquatic"),
        (
            "Sure! Here are the words sorted alphabetically:\n1. abutted\n2. agamemnon\n3. it&t",
            "abutted agamemnon it&t",
        ),
        ("The sorted words are: abutted - agamemnon", "abutted agamemnon"),
        ("- abutted\n- o'connor", "abutted o'connor"),
    ],
)
def test_word_list_extraction(text: str, expected: str) -> None:
    assert parse_word_list(text) == expected


def test_word_sorting_scoring(lenient: dict[str, Task]) -> None:
    """Lenient only: the reference fails a `Sorted:` header and commas."""
    tasks = lenient
    task = tasks["bbh/word_sorting"]
    sample = task.split("test")[0]
    words = sample.target.split()
    assert score_answer(task, sample, "Sorted: " + ", ".join(words)) == 1.0
    assert score_answer(task, sample, " ".join(reversed(words))) == 0.0
    assert score_answer(task, sample, " ".join(words[:-1])) == 0.0


# -- free text and ROUGE-L -------------------------------------------------------------------


@pytest.mark.parametrize("package", ["rouge", "rouge_score"])
def test_rouge_l_mean_and_max(package: str) -> None:
    references = ("the cat sat on the mat", "a dog barked")
    best = rouge_l("the cat sat on the mat", references, "max", package)
    assert best == pytest.approx(1.0, abs=1e-6)
    mean = rouge_l("the cat sat on the mat", references, "mean", package)
    assert mean == pytest.approx(0.5, abs=1e-6)
    assert rouge_l("", references, package=package) == 0.0
    assert rouge_l("anything", (), package=package) == 0.0


def test_webnlg_scores_partial_overlap(tasks: dict[str, Task]) -> None:
    task = tasks["webnlg"]
    sample = task.split("test")[0]
    assert len(sample.references) == 1
    half = " ".join(sample.target.split()[: len(sample.target.split()) // 2])
    score = score_answer(task, sample, half)
    assert 0.3 < score < 1.0
    assert score_answer(task, sample, "zzz qqq") == 0.0
    assert answer_turn(task, sample) is None
    assert extract_answer(task, "  Some sentence.  ") == "Some sentence."


def test_wsc_rouge_option_compares_with_the_gold_option_text(data_dir: Path) -> None:
    task = load_task("wsc", data_dir, metric="rouge_l")
    assert task.metric is Metric.ROUGE_L
    sample = task.split("test")[0]  # (B) Ovid
    assert score_answer(task, sample, "Ovid") == pytest.approx(1.0, abs=1e-6)
    assert score_answer(task, sample, "The answer is: Ovid.") == pytest.approx(1.0, abs=1e-6)
    assert score_answer(task, sample, "Shakespeare") == 0.0
    default = load_task("wsc", data_dir)
    assert default.metric is Metric.ACCURACY
    assert score_answer(default, sample, "(B) Ovid") == 1.0


# -- the second turn -------------------------------------------------------------------------


def test_answer_turn_texts(tasks: dict[str, Task]) -> None:
    def turn(name: str) -> str | None:
        task = tasks[name]
        return answer_turn(task, task.split("test")[0])

    assert turn("mmlu/anatomy") == (
        "Therefore, summarize your answer with an option among (A) and (D)."
    )
    assert turn("bbh/date_understanding") == (
        "Therefore, summarize your answer with an option among (A) and (F)."
    )
    assert turn("wsc") == "Therefore, summarize your answer with an option between (A) and (B)."
    assert turn("bbh/boolean_expressions") == (
        'Directly tell me your answer using only "True" or "False".'
    )
    assert turn("bbh/navigate") == 'Directly tell me your answer using only "Yes" or "No".'
    assert turn("bbh/formal_fallacies") == (
        'Directly tell me your answer using only "valid" or "invalid".'
    )
    numeric = "Therefore, summarize your final answer with just one number in your response."
    assert turn("gsm8k") == numeric
    assert turn("bbh/object_counting") == numeric
    assert turn("bbh/dyck_languages") == (
        "Directly output the newly added parentheses that make the parentheses close correctly."
    )
    assert turn("bbh/word_sorting") == (
        "Directly output the result of sorting the words alphabetically, separating each word "
        "with a space."
    )
    assert turn("webnlg") is None


def test_every_choice_question_gets_its_last_listed_option(tasks: dict[str, Task]) -> None:
    for task in tasks.values():
        if task.answer_type is not AnswerType.MULTIPLE_CHOICE or task.group != "bbh":
            continue  # MMLU always names (D), WSC (B), as the reference does
        for sample in task.split("test"):
            text = answer_turn(task, sample)
            assert text is not None, f"{task.name}/{sample.id}"
            last = text.rsplit("(", 1)[1][0]
            listed = [
                line[1]
                for line in sample.input.splitlines()
                if line[:1] == "(" and line[1:2].isupper() and line[2:3] == ")"
            ]
            assert listed and listed[-1] == last == max(listed), f"{task.name}/{sample.id}"


def test_a_letter_quoted_in_the_question_is_not_an_option(tasks: dict[str, Task]) -> None:
    task = tasks["bbh/date_understanding"]
    sample = Sample("x", "Given P(E) = 0.3, which holds?\n(A) one\n(B) two", "(A)")
    assert answer_turn(task, sample) == (
        "Therefore, summarize your answer with an option among (A) and (B)."
    )
    assert answer_turn(task, Sample("y", "No options at all", "(A)")) is None


# -- parsers never raise ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    for vocabulary in (None, YES_NO):
        assert isinstance(parse_boolean(text, vocabulary), str)
    for parse in (parse_multiple_choice, parse_number, parse_dyck, parse_word_list):
        assert isinstance(parse(text), str)
    assert isinstance(parse_exact_text(text), str)
    assert 0.0 <= rouge_l(text, ("a reference sentence",)) <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789-.=$,% ")) | st.from_regex(r"-?\d{300,400}"))
def test_number_parser_on_number_like_text(text: str) -> None:
    result = parse_number(text)
    assert result == "" or result.lstrip("-").isdigit()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_scoring_any_text_is_a_probability(text: str) -> None:
    for task in _SCORING_TASKS:
        assert 0.0 <= score_answer(task, task.split("test")[0], text) <= 1.0


_SCORING_TASKS: list[Task] = []


@pytest.fixture(scope="module", autouse=True)
def _scoring_tasks(tasks: dict[str, Task]) -> None:
    names = [
        "bbh/navigate",
        "bbh/date_understanding",
        "bbh/object_counting",
        "bbh/dyck_languages",
        "bbh/word_sorting",
        "webnlg",
    ]
    _SCORING_TASKS[:] = [tasks[name] for name in names]


# -- aggregation -----------------------------------------------------------------------------


def test_aggregate_reports_group_means_like_the_paper() -> None:
    scores = {f"bbh/{name}": 0.5 for name in ("navigate", "object_counting")}
    scores |= {"bbh/movie_recommendation": 0.2, "bbh/word_sorting": 0.1, "bbh/snarks": 1.0}
    scores |= {"mmlu/anatomy": 0.4, "mmlu/abstract_algebra": 0.2, "mmlu/astronomy": 0.6}
    scores |= {"mmlu/philosophy": 1.0, "gsm8k": 0.25}
    result = aggregate(scores)
    assert result["bbh"] == pytest.approx((0.5 + 0.5 + 0.2 + 0.1 + 1.0) / 5)
    assert result["lite-bbh"] == pytest.approx((0.5 + 0.5 + 0.2 + 0.1) / 4)
    assert result["mmlu"] == pytest.approx((0.4 + 0.2 + 0.6 + 1.0) / 4)
    assert result["mmlu:STEM"] == pytest.approx(0.4)
    assert result["mmlu:Other"] == pytest.approx(0.4)
    assert result["mmlu:Humanities"] == pytest.approx(1.0)
    assert "mmlu:Social Sciences" not in result
    assert result["gsm8k"] == 0.25
    assert list(result)[:3] == ["bbh", "lite-bbh", "mmlu"]


def test_aggregate_leaves_out_lite_bbh_when_incomplete() -> None:
    assert "lite-bbh" not in aggregate({"bbh/navigate": 1.0, "bbh/word_sorting": 0.0})
    assert aggregate({}) == {}


def test_sample_is_a_frozen_value() -> None:
    sample = Sample("train-0", "q", "(A)")
    with pytest.raises(AttributeError):
        sample.target = "(B)"  # type: ignore[misc]
    assert sample == Sample("train-0", "q", "(A)", ())
