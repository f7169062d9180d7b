"""Benchmark data: loading every task and split, task names and groups, and bad data files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backends.errors import ConfigError, DataError
from benchmarks import (
    MMLU_CATEGORIES,
    SPLITS,
    AnswerType,
    BooleanVocabulary,
    Metric,
    Sample,
    list_task_names,
    load_reference_prompts,
    load_task,
    resolve_data_dir,
    resolve_task_names,
)
from benchmarks.task_registry import LITE_BBH, PAPER_TASK_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(os.environ.get("GPO_DATA_DIR") or REPO_ROOT / "../shared/data").resolve()
    assert (path / "bbh" / "navigate" / "test.jsonl").is_file(), f"benchmark data not at {path}"
    return path


def write_task(root: Path, name: str, records_by_split: dict[str, list[object]]) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        records = records_by_split.get(split, [{"input": "q", "target": "(A)"}])
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        (folder / f"{split}.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return folder


# -- every task and split --------------------------------------------------------------------

BBH_SMALLER_SPLITS = {
    "bbh/causal_judgement": (35, 35, 107),
    "bbh/penguins_in_a_table": (27, 27, 82),
    "bbh/snarks": (33, 33, 102),
}


def expected_sizes(name: str) -> tuple[int, int, set[int], int, int]:
    """(train, eval, allowed test sizes, format, few-shot) as the data holds them.

    GPO.md says BBH is "usually 48/48/144 (+5 format, +5 few-shot)", MMLU "20/20/~60", GSM8K
    100/100/300, WSC 50/50/150, WebNLG 100/100/300. It does not give MMLU's few-shot count (4 in
    the data) nor WSC's format and few-shot counts (10 each).
    """
    if name in BBH_SMALLER_SPLITS:
        train, dev, test = BBH_SMALLER_SPLITS[name]
        return train, dev, {test}, 5, 5
    if name.startswith("bbh/"):
        return 48, 48, {144}, 5, 5
    if name.startswith("mmlu/"):
        return 20, 20, {59, 60}, 5, 4
    return {
        "gsm8k": (100, 100, {300}, 5, 5),
        "wsc": (50, 50, {150}, 10, 10),
        "webnlg": (100, 100, {300}, 5, 5),
    }[name]


def test_paper_task_list_is_complete(data_dir: Path) -> None:
    names = list_task_names(data_dir)
    assert len(names) == 87
    assert names == list(PAPER_TASK_NAMES)
    assert len(resolve_task_names("bbh", data_dir)) == 27
    assert len(resolve_task_names("mmlu", data_dir)) == 57
    assert resolve_task_names("lite-bbh", data_dir) == list(LITE_BBH)


@pytest.mark.parametrize("name", PAPER_TASK_NAMES)
def test_every_split_loads_with_the_documented_sizes(data_dir: Path, name: str) -> None:
    task = load_task(name, data_dir)
    train, dev, tests, formats, shots = expected_sizes(name)
    assert len(task.split("train")) == train
    assert len(task.split("eval")) == dev
    assert len(task.split("test")) in tests
    assert len(task.split("format")) == formats
    assert len(task.split("few_shot_examples")) == shots
    for split in SPLITS:
        samples = task.split(split)
        assert len({s.id for s in samples}) == len(samples), f"{name}/{split}: ids not unique"
        assert all(s.input.strip() and s.target.strip() for s in samples)


@pytest.mark.parametrize("name", ["bbh/navigate", "mmlu/anatomy", "gsm8k", "wsc", "webnlg"])
def test_each_split_matches_its_first_raw_record(data_dir: Path, name: str) -> None:
    task = load_task(name, data_dir)
    for split in SPLITS:
        raw = json.loads((data_dir / name / f"{split}.jsonl").read_text().splitlines()[0])
        first = task.split(split)[0]
        assert first.input == raw["input"]
        gold = raw.get("target", raw.get("output"))
        if isinstance(gold, list):
            assert first.references == tuple(gold)
            assert first.target == gold[0]
        else:
            assert first.target == str(gold)
            assert first.references == ()
        if "id" in raw:
            assert first.id.split("@")[0] == raw["id"]
        else:
            assert first.id == f"{split}-0"


def test_gsm8k_integer_output_becomes_a_string_target(data_dir: Path) -> None:
    sample = load_task("gsm8k", data_dir).split("test")[0]
    assert sample.target == "7"
    assert isinstance(sample.target, str)


def test_webnlg_repeated_ids_are_made_unique_and_keep_the_original(data_dir: Path) -> None:
    train = load_task("webnlg", data_dir).split("train")
    raw_ids = [
        json.loads(line)["id"]
        for line in (data_dir / "webnlg/train.jsonl").read_text().split("\n")
        if line
    ]
    assert len(set(raw_ids)) < len(raw_ids), "the data is expected to repeat some ids"
    ids = [s.id for s in train]
    assert len(set(ids)) == len(ids)
    for index, (sample, raw_id) in enumerate(zip(train, raw_ids, strict=True)):
        repeated = raw_ids.count(raw_id) > 1
        assert sample.id == (f"{raw_id}@train-{index}" if repeated else raw_id)


def test_splits_are_loaded_lazily_and_cached(tmp_path: Path) -> None:
    folder = write_task(tmp_path, "custom", {"eval": [{"input": "q1", "target": "(B)"}]})
    task = load_task("custom", tmp_path)
    first = task.split("eval")
    (folder / "eval.jsonl").unlink()
    assert task.split("eval") is first
    assert task.split("dev") is first
    assert load_task("custom", tmp_path).split("format")[0].target == "(A)"
    with pytest.raises(DataError, match="split file not found") as error:
        load_task("custom", tmp_path).split("eval")
    assert error.value.path == str(folder / "eval.jsonl")


def test_unknown_split_names_the_valid_ones(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="few_shot_examples"):
        load_task("gsm8k", data_dir).split("validation")


# -- answer types are derived from the data --------------------------------------------------

BBH_ANSWER_TYPES = {
    "boolean_expressions": (AnswerType.BOOLEAN, BooleanVocabulary("True", "False")),
    "causal_judgement": (AnswerType.BOOLEAN, BooleanVocabulary("Yes", "No")),
    "formal_fallacies": (AnswerType.BOOLEAN, BooleanVocabulary("valid", "invalid")),
    "navigate": (AnswerType.BOOLEAN, BooleanVocabulary("Yes", "No")),
    "sports_understanding": (AnswerType.BOOLEAN, BooleanVocabulary("Yes", "No")),
    "web_of_lies": (AnswerType.BOOLEAN, BooleanVocabulary("Yes", "No")),
    "multistep_arithmetic_two": (AnswerType.NUMERIC, None),
    "object_counting": (AnswerType.NUMERIC, None),
    "dyck_languages": (AnswerType.DYCK, None),
    "word_sorting": (AnswerType.WORD_SORTING, None),
}


@pytest.mark.parametrize("name", PAPER_TASK_NAMES)
def test_answer_type_of_every_paper_task(data_dir: Path, name: str) -> None:
    task = load_task(name, data_dir)
    group, _, subtask = name.partition("/")
    if group == "bbh":
        expected = BBH_ANSWER_TYPES.get(subtask, (AnswerType.MULTIPLE_CHOICE, None))
    else:
        expected = {
            "mmlu": (AnswerType.MULTIPLE_CHOICE, None),
            "wsc": (AnswerType.MULTIPLE_CHOICE, None),
            "gsm8k": (AnswerType.NUMERIC, None),
            "webnlg": (AnswerType.FREE_TEXT, None),
        }[group]
    assert (task.answer_type, task.boolean_vocabulary) == expected
    assert task.metric is (Metric.ROUGE_L if name == "webnlg" else Metric.ACCURACY)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["True", "False", "true"], (AnswerType.BOOLEAN, BooleanVocabulary("True", "False"))),
        (["valid", "invalid"], (AnswerType.BOOLEAN, BooleanVocabulary("valid", "invalid"))),
        (["12", "-3", "0"], (AnswerType.NUMERIC, None)),
        (["(A)", "(K)"], (AnswerType.MULTIPLE_CHOICE, None)),
        (["Paris", "London"], (AnswerType.EXACT_TEXT, None)),
        (["(A)"] * 19 + ["Monsters, Inc"], (AnswerType.MULTIPLE_CHOICE, None)),
        (["(A)"] * 5 + ["Monsters, Inc"], (AnswerType.EXACT_TEXT, None)),
        ([["one reference", "another"]], (AnswerType.FREE_TEXT, None)),
    ],
)
def test_answer_type_follows_the_targets(
    tmp_path: Path, targets: list[object], expected: tuple[AnswerType, object]
) -> None:
    records = [{"input": f"q{i}", "output": t} for i, t in enumerate(targets)]
    write_task(tmp_path, "mine/task", dict.fromkeys(SPLITS, records))
    task = load_task("mine/task", tmp_path)
    assert (task.answer_type, task.boolean_vocabulary) == expected


# -- task names ------------------------------------------------------------------------------


def test_resolve_expands_groups_in_order_without_duplicates(data_dir: Path) -> None:
    names = resolve_task_names("gsm8k, lite-bbh,bbh/navigate", data_dir)
    assert names == ["gsm8k", *LITE_BBH]
    assert resolve_task_names(["wsc", "webnlg", "wsc"], data_dir) == ["wsc", "webnlg"]
    assert len(resolve_task_names(["all"], data_dir)) == 87


def test_unknown_task_lists_valid_names_and_suggests(data_dir: Path) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_task_names(["bbh/navigat"], data_dir)
    message = str(error.value)
    assert "unknown task 'bbh/navigat'" in message
    assert "did you mean bbh/navigate" in message
    assert "mmlu/world_religions" in message and "lite-bbh" in message
    with pytest.raises(ConfigError, match=r"valid tasks: .*gsm8k"):
        load_task("gsm9k", data_dir)


def test_a_group_is_not_a_task(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="is a group"):
        load_task("bbh", data_dir)


def test_empty_name_list_is_rejected(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no task names"):
        resolve_task_names(" , ", data_dir)


def test_extra_task_folders_join_the_names(tmp_path: Path) -> None:
    write_task(tmp_path, "bbh/navigate", {})
    write_task(tmp_path, "custom", {})
    write_task(tmp_path, "suite/one", {})
    write_task(tmp_path, "suite/two", {})
    names = list_task_names(tmp_path)
    assert {"custom", "suite/one", "suite/two"} <= set(names)
    assert resolve_task_names("suite", tmp_path) == ["suite/one", "suite/two"]
    with pytest.raises(DataError, match="no data folder") as error:
        load_task("bbh/snarks", tmp_path)
    assert error.value.path == str(tmp_path / "bbh/snarks")


def test_mmlu_categories(data_dir: Path) -> None:
    assert load_task("mmlu/anatomy", data_dir).category == "Other"
    assert load_task("mmlu/abstract_algebra", data_dir).category == "STEM"
    assert load_task("mmlu/philosophy", data_dir).category == "Humanities"
    assert load_task("mmlu/sociology", data_dir).category == "Social Sciences"
    assert load_task("bbh/navigate", data_dir).category is None
    subjects = {name.split("/")[1] for name in resolve_task_names("mmlu", data_dir)}
    assert subjects == set(MMLU_CATEGORIES)
    counts = {c: list(MMLU_CATEGORIES.values()).count(c) for c in set(MMLU_CATEGORIES.values())}
    assert counts == {"STEM": 18, "Humanities": 13, "Social Sciences": 12, "Other": 14}


def test_task_name_parts(data_dir: Path) -> None:
    task = load_task("bbh/navigate", data_dir)
    assert (task.name, task.group, task.subtask) == ("bbh/navigate", "bbh", "navigate")
    assert (load_task("gsm8k", data_dir).group, load_task("gsm8k", data_dir).subtask) == (
        "gsm8k",
        None,
    )


def test_bad_metric_and_reduction_are_config_errors(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="rouge_l"):
        load_task("wsc", data_dir, metric="bleu")
    with pytest.raises(ConfigError, match="mean, max"):
        load_task("webnlg", data_dir, rouge_reduction="median")  # type: ignore[arg-type]


# -- bad data files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        ('{"input": "q", "target": ', "malformed JSON"),
        ('["input", "target"]', "expected a JSON object, got list"),
        ('{"target": "(A)"}', "missing field 'input'"),
        ('{"input": 3, "target": "(A)"}', "field 'input' must be a string"),
        ('{"input": "q"}', "missing field 'target' \\(or 'output'\\)"),
        ('{"input": "q", "output": 1.5}', "must be a string, an integer or a non-empty list"),
        ('{"input": "q", "output": []}', "non-empty list"),
        ('{"input": "q", "output": true}', "got bool"),
        ('{"input": "q", "target": "  "}', "field 'target' is empty"),
        ('{"input": "q", "target": "(A)", "id": [1]}', "field 'id' must be"),
        (b'{"input": "\xff", "target": "(A)"}', "malformed JSON"),
    ],
)
def test_bad_record_names_file_and_line(
    tmp_path: Path, second_line: str | bytes, message: str
) -> None:
    folder = write_task(tmp_path, "broken", {})
    path = folder / "test.jsonl"
    line = second_line if isinstance(second_line, bytes) else second_line.encode()
    path.write_bytes(b'{"input": "q0", "target": "(A)"}\n' + line + b"\n")
    with pytest.raises(DataError, match=message) as error:
        load_task("broken", tmp_path).split("test")
    assert error.value.path == str(path)
    assert error.value.line == 2
    assert str(error.value).startswith(f"{path}:2: ")


def test_empty_split_is_a_data_error(tmp_path: Path) -> None:
    folder = write_task(tmp_path, "empty", {})
    (folder / "train.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="no records") as error:
        load_task("empty", tmp_path).split("train")
    assert error.value.path == str(folder / "train.jsonl")


def test_blank_lines_are_skipped_and_ids_count_file_lines(tmp_path: Path) -> None:
    folder = write_task(tmp_path, "gaps", {})
    records = '{"input": "a", "target": "1"}\n\n{"input": "b", "target": "2"}\n'
    (folder / "eval.jsonl").write_text(records)
    samples = load_task("gaps", tmp_path).split("eval")
    assert samples == (Sample("eval-0", "a", "1"), Sample("eval-2", "b", "2"))


# -- data directory and reference prompts ----------------------------------------------------


def test_data_dir_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    from_env = tmp_path / "env"
    from_env.mkdir()
    monkeypatch.setenv("GPO_DATA_DIR", str(from_env))
    assert resolve_data_dir(explicit) == explicit.resolve()
    assert resolve_data_dir() == from_env.resolve()

    monkeypatch.delenv("GPO_DATA_DIR")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home/.cache/gpo-engine/data"
    (tmp_path / "shared/data").mkdir(parents=True)
    assert resolve_data_dir() == (tmp_path / "shared/data").resolve()


def test_missing_data_dir_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("GPO_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"\$GPO_DATA_DIR"):
        load_task("gsm8k")


def test_reference_prompts_cover_every_task(data_dir: Path) -> None:
    prompts = load_reference_prompts(data_dir)
    assert set(prompts) == set(PAPER_TASK_NAMES)
    assert prompts["bbh/boolean_expressions"].startswith("What is the result of evaluating")
    assert prompts["gsm8k"].startswith("Thoroughly strategize")


def test_reference_prompts_bad_line(tmp_path: Path) -> None:
    (tmp_path / "reference_prompts.jsonl").write_text('{"dataset": "wsc", "prompt": "p"}\n{"x"\n')
    with pytest.raises(DataError) as error:
        load_reference_prompts(tmp_path)
    assert error.value.line == 2
