"""Building the split layout from hub datasets, with a stand-in for the `datasets` package."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from backends.errors import ConfigError, GpoError
from benchmarks import SPLITS, AnswerType, download, load_task, score_answer
from benchmarks.download import write_task_splits


def fake_datasets(rows_by_source: dict[tuple[str, str], list[dict[str, Any]]]) -> types.ModuleType:
    module = types.ModuleType("datasets")

    def load_dataset(path: str, name: str, split: str) -> list[dict[str, Any]]:
        assert split == "test"
        if (path, name) not in rows_by_source:
            raise ConnectionError(f"cannot reach the hub for {path}/{name}")
        return rows_by_source[(path, name)]

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    return module


def test_missing_datasets_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(GpoError, match="pip install datasets"):
        download(["gsm8k"], tmp_path)


def test_offline_hub_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({}))
    with pytest.raises(GpoError, match=r"could not download bbh/navigate .*GPO_DATA_DIR"):
        download(["bbh/navigate"], tmp_path)


def test_unknown_source_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({}))
    with pytest.raises(ConfigError, match="no public source"):
        download(["custom/task"], tmp_path)


def test_downloaded_tasks_load_and_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {
        ("cais/mmlu", "anatomy"): [
            {"question": f"Question {i}?", "choices": ["w", "x", "y", "z"], "answer": i % 4}
            for i in range(120)
        ],
        ("openai/gsm8k", "main"): [
            {"question": f"What is {i} + 1000?", "answer": f"It is {i + 1000}.\n#### {i + 1000:,}"}
            for i in range(600)
        ],
        ("ErnestSDavis/winograd_wsc", "wsc273"): [
            {
                "text": f"Ann met Bo {i}. She smiled.",
                "pronoun": "She",
                "options": ["Ann", "Bo"],
                "label": i % 2,
            }
            for i in range(263)  # fewer than the 270 the sizes ask for: test shrinks
        ],
        ("GEM/web_nlg", "en"): [
            {
                "gem_id": f"web_nlg_en-test-{i}",
                "input": [f"A_{i} | b | C"],
                "target": f"A {i} b C.",
                "references": [f"A {i} b C.", f"C is b of A {i}."],
            }
            for i in range(600)
        ],
        ("lukaemon/bbh", "navigate"): [
            {"input": f"Take {i} steps.", "target": "Yes" if i % 2 else "No"} for i in range(250)
        ],
    }
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(rows))
    names = ["mmlu/anatomy", "gsm8k", "wsc", "webnlg", "bbh/navigate"]
    assert download(names, tmp_path) == tmp_path

    sizes = {name: tuple(len(load_task(name, tmp_path).split(s)) for s in SPLITS) for name in names}
    assert sizes == {
        "mmlu/anatomy": (20, 20, 60, 5, 5),
        "gsm8k": (100, 100, 300, 5, 5),
        "wsc": (50, 50, 143, 10, 10),
        "webnlg": (100, 100, 300, 5, 5),
        "bbh/navigate": (48, 48, 144, 5, 5),
    }

    expected_types = {
        "mmlu/anatomy": AnswerType.MULTIPLE_CHOICE,
        "gsm8k": AnswerType.NUMERIC,
        "wsc": AnswerType.MULTIPLE_CHOICE,
        "webnlg": AnswerType.FREE_TEXT,
        "bbh/navigate": AnswerType.BOOLEAN,
    }
    for name in names:
        task = load_task(name, tmp_path, rouge_reduction="max")
        assert task.answer_type is expected_types[name]
        for split in SPLITS:
            for sample in task.split(split):
                # The `rouge` package's F of a text with itself is 1 - 5e-9 (its smoothing).
                assert score_answer(task, sample, sample.target) == pytest.approx(1.0, abs=1e-6)

    mmlu = load_task("mmlu/anatomy", tmp_path).split("test")[0]
    assert mmlu.input.endswith("\n(A) w\n(B) x\n(C) y\n(D) z")
    gsm8k = load_task("gsm8k", tmp_path).split("train")[0]
    assert int(gsm8k.target) >= 1000
    webnlg = load_task("webnlg", tmp_path).split("eval")[0]
    assert webnlg.id.startswith("web_nlg_en-test-") and len(webnlg.references) == 2


def test_splits_are_disjoint_and_seeded(tmp_path: Path) -> None:
    records = [{"input": f"q{i}", "target": str(i)} for i in range(30)]
    write_task_splits(records, tmp_path / "a", (5, 5, 100, 2, 2))
    write_task_splits(records, tmp_path / "b", (5, 5, 100, 2, 2))
    inputs = []
    for split in SPLITS:
        text_a = (tmp_path / "a" / f"{split}.jsonl").read_text()
        assert text_a == (tmp_path / "b" / f"{split}.jsonl").read_text()
        inputs += [s.input for s in load_task("a", tmp_path).split(split)]
    assert sorted(inputs) == sorted(r["input"] for r in records)


def test_too_small_a_pool_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GpoError, match="only 3 records"):
        write_task_splits([{"input": "q", "target": "1"}] * 3, tmp_path / "t", (2, 2, 2, 1, 1))
