"""Racing replay: recorded steps are read back from run directories and replayed honestly."""

from __future__ import annotations

import math
import random
from pathlib import Path

import orjson
import pytest

from engine.racing import RacingSettings
from perf.racing_record import RecordedStep, load_steps, steps_of_run
from perf.racing_replay import main, replay_all, replay_step, summarise


def step_with(accuracies: list[float], seed: int, task: str = "bbh/x") -> RecordedStep:
    rng = random.Random(seed)
    scores = tuple(tuple(1.0 if rng.random() < a else 0.0 for _ in range(48)) for a in accuracies)
    ids = tuple(f"eval-{i}" for i in range(48))
    prompts = tuple(f"prompt {i}" for i in range(len(accuracies)))
    return RecordedStep("test", "m", task, 0, prompts, ids, scores)


def test_a_replay_charges_the_look_ahead_of_dropped_candidates() -> None:
    step = step_with([0.95, 0.0, 0.0, 0.05], seed=1)
    eager = replay_step(step, RacingSettings(round_size=0, seed=3))
    lazy = replay_step(step, RacingSettings(round_size=8, seed=3))
    assert eager.within_epsilon and lazy.within_epsilon
    assert eager.chains_scored < lazy.chains_scored < 4 * 48


def test_replays_are_grouped_and_summarised() -> None:
    steps = [step_with([0.9, 0.1, 0.2], 1, "bbh/navigate"), step_with([0.5, 0.5, 0.5], 2, "bbh/y")]
    groups = replay_all(steps, orders=5, base=RacingSettings())
    assert len(groups["tuning"]) == 5 and len(groups["held-out"]) == 5
    summary = summarise(groups["held-out"])
    assert summary["replays"] == 5 and 0.0 <= summary["chains_saved"] < 0.5
    assert summarise(groups["tuning"])["chains_saved"] > summary["chains_saved"]


def test_steps_are_read_from_a_run_directory_and_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "tasks" / "bbh__x").mkdir(parents=True)
    (run / "config.json").write_bytes(orjson.dumps({"scorer": {"model": "m"}}))
    rows = []
    for prompt in ("a", "b"):
        for sample in range(3):
            failed = prompt == "b" and sample == 2
            rows.append(
                {
                    "task": "bbh/x",
                    "step": 0,
                    "purpose": "candidates",
                    "prompt": prompt,
                    "sample_id": f"eval-{sample}",
                    "score": float(sample % 2),
                    "failure": "timeout" if failed else None,
                }
            )
    rows.append({**rows[0], "purpose": "initial", "step": -1})
    lines = b"\n".join(orjson.dumps(r) for r in rows) + b"\n"
    (run / "tasks" / "bbh__x" / "scores.jsonl").write_bytes(lines)
    (step,) = steps_of_run(run, "test")
    assert step.prompts == ("a", "b") and step.sample_ids == ("eval-0", "eval-1", "eval-2")
    assert step.scores[0] == (0.0, 1.0, 0.0) and math.isnan(step.scores[1][2])
    out = tmp_path / "steps.jsonl"
    out.write_bytes(orjson.dumps(step.to_json()) + b"\n")
    (back,) = load_steps(out)
    assert back.prompts == step.prompts and math.isnan(back.scores[1][2])


def test_the_replay_command_prints_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "steps.jsonl"
    data.write_bytes(orjson.dumps(step_with([0.9, 0.1], 4).to_json()) + b"\n")
    assert main(["--data", str(data), "--orders", "3", "--json", str(tmp_path / "s.json")]) == 0
    assert "held-out" in capsys.readouterr().out
    assert orjson.loads((tmp_path / "s.json").read_bytes())["all"]["replays"] == 3


def test_end_to_end_comparison_runs_gpo_with_and_without_racing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from perf.racing_e2e import main as e2e_main
    from tests.gpo_fakes import DATA_DIR
    from tests.gpo_process import REPO, answered_server

    monkeypatch.setenv("GPO_DATA_DIR", str(DATA_DIR))
    monkeypatch.chdir(REPO)
    with answered_server(50.0) as server:
        url = f"{server.url}/v1"
        extra = ["--steps", "1", "--candidates", "4", "--train-size", "16", "--dev-size", "24"]
        extra += ["--test-size", "8", "--scorer-url", url, "--optimizer-url", url]
        extra += ["--scorer-chat-template", "chatml"]
        out = tmp_path / "e2e"
        assert (
            e2e_main(
                [
                    "--seeds",
                    "0",
                    "--out",
                    str(out),
                    "--json",
                    str(tmp_path / "f.json"),
                    "--",
                    *extra,
                ]
            )
            == 0
        )
    figures = orjson.loads((tmp_path / "f.json").read_bytes())
    plain, raced = (next(f for f in figures if f["racing"] is mode) for mode in (False, True))
    assert raced["scoring_requests"] <= plain["scoring_requests"]
    config = orjson.loads((out / "racing-seed0" / "config.json").read_bytes())
    assert config["optimizer"]["racing"]["delta"] == 0.05
    assert "racing - plain" in capsys.readouterr().out
