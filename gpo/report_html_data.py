"""What the HTML report shows, read from a run directory or an evaluation folder.

Plain values for the template (`gpo/templates/report.html.j2`), nothing rendered here:
- an optimize run (`gpo optimize`): per task the final scores, every step's candidates with their
  dev scores (the chosen one and the final prompt marked), every meta-prompt with the optimizer's
  answers, and per-sample answers with their verdicts for each prompt scored on test (the final
  prompt first) and for the final prompt on dev;
- an evaluation folder (`gpo eval --out DIR`): each prompt's score per task and split, with its
  per-sample answers; an interrupted evaluation (no `summary.json`) is read from its records;
- for both, the cost per session, model and phase, and the totals.
Steps are numbered as users see them (`gpo.trajectory.shown_step`: the initial prompt is step 0).
Texts (prompts, answers) are passed on as they are: the template escapes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from gpo.eval_job import RECORDS_FILE, SUMMARY_FILE
from gpo.ledger_view import run_totals
from gpo.report_runs import RunReport, TaskCurve, load_run
from gpo.results import TaskResult
from gpo.run_dir import CONFIG_FILE, RunDirectory, read_json, read_jsonl
from gpo.trajectory import INITIAL_STEP, shown_step

# What each phase of the ledger is spent on: the role its calls come from.
PHASE_ROLES = {"scoring": "scorer", "optimizing": "optimizer", "embedding": "embedder"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One prompt's answer to one sample, with its verdict."""

    sample_id: str
    verdict: str  # "correct", "wrong", "partial" or "failed"
    score: float | None
    parsed: str
    gold: str
    answers: tuple[str, ...]
    failure: str | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One prompt scored on one split: its mean and its samples."""

    title: str
    split: str
    prompt: str
    score: float | None
    samples: tuple[Sample, ...]

    @property
    def correct(self) -> int:
        return sum(1 for sample in self.samples if sample.verdict == "correct")

    @property
    def failed(self) -> int:
        return sum(1 for sample in self.samples if sample.verdict == "failed")


@dataclass(frozen=True, slots=True)
class Candidate:
    index: int
    prompt: str
    dev_score: float | None
    chosen: bool
    reused: bool
    final: bool


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the trajectory: the prompt it continued with and the candidates it weighed."""

    step: int
    prompt: str
    dev_score: float
    test_score: float | None
    word_budget: int | None
    final: bool
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class MetaPrompt:
    step: int
    kind: str
    text: str
    answers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One task of an optimize run."""

    task: str
    status: str
    steps_done: int
    steps_total: int
    initial_prompt: str
    final_prompt: str | None
    final_step: int | None
    scores: Mapping[str, float | None]  # initial_dev, final_dev, initial_test, final_test
    trajectory: tuple[Step, ...]
    meta_prompts: tuple[MetaPrompt, ...]
    evaluations: tuple[Evaluation, ...]  # the final and initial prompts'
    step_evaluations: tuple[Evaluation, ...]  # the other steps' prompts on test


@dataclass(frozen=True, slots=True)
class CostTable:
    rows: tuple[Mapping[str, Any], ...]
    totals: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RunPage:
    """Everything one run's page shows. `kind` is "optimize" or "eval"."""

    kind: str
    title: str
    path: Path
    method: str
    status: str
    cost: CostTable
    tasks: tuple[TaskPage, ...] = ()
    groups: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    eval_rows: tuple[Mapping[str, Any], ...] = ()
    evaluations: tuple[Evaluation, ...] = ()
    report: RunReport | None = None


def run_kind(path: Path) -> str:
    """ "optimize" or "eval"; anything else is a clear error naming the folder."""
    if (path / CONFIG_FILE).is_file():
        return "optimize"
    if (path / RECORDS_FILE).is_file() or (path / SUMMARY_FILE).is_file():
        return "eval"
    raise ConfigError(
        f"RUN_DIR {path}: neither a run directory (no {CONFIG_FILE}) nor an evaluation folder "
        f"(no {RECORDS_FILE})"
    )


def load_page(path: str | Path) -> RunPage:
    """The page of the run directory or evaluation folder at `path`."""
    folder = Path(path)
    if run_kind(folder) == "eval":
        return eval_page(folder)
    return optimize_page(load_run(folder))


# -- optimize runs -----------------------------------------------------------------------------


def optimize_page(run: RunReport) -> RunPage:
    summary = run.summary or {}
    groups = {
        name: dict(values)
        for name, values in (summary.get("groups") or {}).items()
        if isinstance(values, Mapping) and values
    }
    return RunPage(
        kind="optimize",
        title=run.label,
        path=run.path,
        method=run.method,
        status=run.status,
        cost=cost_table(run.ledgers),
        tasks=tuple(task_page(run.path, curve) for curve in run.curves),
        groups=groups,
        report=run,
    )


def task_page(run_path: Path, curve: TaskCurve) -> TaskPage:
    recorder = RunDirectory(run_path).task(curve.task)
    result = curve.result
    final_prompt = result.final_prompt if result else None
    test_by_step = dict(result.test_by_step) if result else {}
    candidates = _candidates_by_step(recorder.read_log("candidates"), final_prompt)
    trajectory = tuple(
        Step(
            step=shown_step(step),
            prompt=row["prompt"],
            dev_score=float(row["dev_score"]),
            test_score=test_by_step.get(step),
            word_budget=row.get("word_budget"),
            final=result is not None and step == result.final_step,
            candidates=candidates.get(step, ()),
        )
        for step, row in ((int(row["step"]), row) for row in recorder.read_log("trajectory"))
    )
    meta = tuple(
        MetaPrompt(
            step=shown_step(int(row["step"])),
            kind=str(row.get("kind", "")),
            text=str(row.get("text", "")),
            answers=tuple(str(answer) for answer in row.get("answers") or ()),
        )
        for row in recorder.read_log("meta_prompts")
    )
    evaluations, step_evaluations = optimize_evaluations(
        recorder.read_log("scores"), result, trajectory
    )
    scores = {
        "initial_dev": result.initial_dev if result else _first(curve.dev_scores),
        "final_dev": result.final_dev if result else max(curve.dev_scores, default=None),
        "initial_test": result.initial_test if result else None,
        "final_test": result.final_test if result else None,
    }
    return TaskPage(
        task=curve.task,
        status=result.status if result else "running",
        steps_done=result.steps_done if result else max(0, len(curve.steps) - 1),
        steps_total=result.steps_total if result else 0,
        initial_prompt=result.initial_prompt if result else _first_prompt(trajectory),
        final_prompt=final_prompt,
        final_step=shown_step(result.final_step) if result else None,
        scores=scores,
        trajectory=trajectory,
        meta_prompts=meta,
        evaluations=evaluations,
        step_evaluations=step_evaluations,
    )


def _first(values: Sequence[float]) -> float | None:
    return values[0] if values else None


def _first_prompt(trajectory: Sequence[Step]) -> str:
    return trajectory[0].prompt if trajectory else ""


def _candidates_by_step(
    rows: Iterable[Mapping[str, Any]], final_prompt: str | None
) -> dict[int, tuple[Candidate, ...]]:
    by_step: dict[int, list[Candidate]] = {}
    for row in rows:
        score = row.get("dev_score")
        by_step.setdefault(int(row["step"]), []).append(
            Candidate(
                index=int(row.get("index", 0)),
                prompt=str(row.get("prompt", "")),
                dev_score=None if score is None else float(score),
                chosen=bool(row.get("chosen")),
                reused=bool(row.get("reused")),
                final=final_prompt is not None and row.get("prompt") == final_prompt,
            )
        )
    return {step: tuple(items) for step, items in by_step.items()}


def optimize_evaluations(
    records: Sequence[Mapping[str, Any]], result: TaskResult | None, trajectory: Sequence[Step]
) -> tuple[tuple[Evaluation, ...], tuple[Evaluation, ...]]:
    """The final prompt on test and dev and the initial prompt on test; then the other steps'
    prompts scored on test (when every step's was), in step order."""
    final = result.final_prompt if result is not None else None
    steps_of: dict[str, int] = {}
    for entry in trajectory:
        steps_of.setdefault(entry.prompt, entry.step)
    initial = shown_step(INITIAL_STEP)
    test = _group(record for record in records if record.get("split") == "test")
    main: list[Evaluation] = []
    others: list[Evaluation] = []
    if final in test:
        main.append(_evaluation("the final prompt on test", "test", final, test[final]))
    if final is not None:
        dev = _group(
            record
            for record in records
            if record.get("split") == "eval" and record.get("prompt") == final
        )
        if final in dev:
            main.append(_evaluation("the final prompt on dev", "eval", final, dev[final]))
    for prompt in sorted(test, key=lambda prompt: steps_of.get(prompt, 1 << 30)):
        step = steps_of.get(prompt)
        if prompt == final:
            continue
        if step == initial:
            main.append(_evaluation("the initial prompt on test", "test", prompt, test[prompt]))
        else:
            title = f"the step {step} prompt on test" if step is not None else "a prompt on test"
            others.append(_evaluation(title, "test", prompt, test[prompt]))
    return tuple(main), tuple(others)


def _group(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Records by prompt, each sample once (a prompt scored twice keeps its first records)."""
    groups: dict[str, dict[str, Mapping[str, Any]]] = {}
    for record in records:
        samples = groups.setdefault(str(record.get("prompt", "")), {})
        samples.setdefault(str(record.get("sample_id")), record)
    return {prompt: list(samples.values()) for prompt, samples in groups.items()}


def _evaluation(
    title: str, split: str, prompt: str, records: Sequence[Mapping[str, Any]]
) -> Evaluation:
    samples = tuple(sample_of(record) for record in records)
    scored = [s.score for s in samples if s.failure is None and s.score is not None]
    mean = sum(scored) / len(scored) if scored else None
    return Evaluation(title=title, split=split, prompt=prompt, score=mean, samples=samples)


def sample_of(record: Mapping[str, Any]) -> Sample:
    failure = record.get("failure")
    score = record.get("score")
    value = None if score is None else float(score)
    if failure is not None or value is None:
        verdict = "failed"
    elif value >= 1.0:
        verdict = "correct"
    elif value <= 0.0:
        verdict = "wrong"
    else:
        verdict = "partial"
    return Sample(
        sample_id=str(record.get("sample_id", "")),
        verdict=verdict,
        score=value,
        parsed=str(record.get("parsed") or ""),
        gold=str(record.get("gold") or ""),
        answers=tuple(str(answer) for answer in record.get("answers") or ()),
        failure=None if failure is None else str(failure),
    )


# -- evaluation folders ------------------------------------------------------------------------


def eval_page(folder: Path) -> RunPage:
    summary_path = folder / SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.is_file() else {}
    records = read_jsonl(folder / RECORDS_FILE) if (folder / RECORDS_FILE).is_file() else []
    by_key: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for record in records:
        key = (str(record.get("task")), str(record.get("split")), int(record["prompt_index"]))
        by_key.setdefault(key, []).append(record)
    evaluations = []
    for (task, split, index), group in by_key.items():
        prompt = str(group[0].get("prompt", ""))
        title = f"prompt #{index} on {task} ({split})"
        evaluations.append(_evaluation(title, split, prompt, group))
    rows = summary.get("rows") or [
        {
            "task": key[0],
            "split": key[1],
            "prompt_index": key[2],
            "prompt": evaluation.prompt,
            "score": evaluation.score,
            "samples": len(evaluation.samples),
            "answered": len(evaluation.samples) - evaluation.failed,
            "failed": evaluation.failed,
        }
        for key, evaluation in zip(by_key, evaluations, strict=True)
    ]
    ledger = summary.get("ledger")
    return RunPage(
        kind="eval",
        title=f"evaluation ({folder.name})",
        path=folder,
        method="eval",
        status=str(summary.get("status", "interrupted (no summary.json)")),
        cost=cost_table([ledger] if ledger else []),
        groups={k: dict(v) for k, v in (summary.get("groups") or {}).items() if v},
        eval_rows=tuple(rows),
        evaluations=tuple(evaluations),
    )


# -- cost --------------------------------------------------------------------------------------


def cost_table(ledgers: Sequence[Mapping[str, Any]]) -> CostTable:
    """Per session, model and phase: calls, tokens, cache hits, failures, dollars; and totals."""
    rows = []
    for session, ledger in enumerate(ledgers, start=1):
        for row in ledger.get("rows", []):
            phase = str(row.get("phase", ""))
            rows.append(
                {
                    "session": session,
                    "model": str(row.get("model", "")),
                    "phase": phase,
                    "role": PHASE_ROLES.get(phase, ""),
                    "requests": int(row.get("requests", 0)),
                    "http_calls": int(row.get("http_calls", row.get("requests", 0))),
                    "prompt_tokens": int(row.get("prompt_tokens", 0)),
                    "completion_tokens": int(row.get("completion_tokens", 0)),
                    "cache_hits": int(row.get("cache_hits", 0)),
                    "failures": sum((row.get("failures") or {}).values()),
                    "cost_usd": float(row.get("cost_usd", 0.0)),
                }
            )
    totals = run_totals(list(ledgers)) if ledgers else {}
    return CostTable(rows=tuple(rows), totals=totals)
