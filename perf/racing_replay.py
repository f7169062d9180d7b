"""Racing replayed on recorded real-model steps: the full evaluation's choice, at what cost.

Each recorded step (`perf.racing_record`: every new candidate of a real `gpo optimize` step
scored on every dev sample) is raced again under many random sample orders with the settings
`gpo optimize --racing` uses, and compared with the full evaluation's choice:

- same choice: the fraction of (step, order) replays whose chosen candidate has a full-dev score
  within epsilon of the best candidate's (the same candidate, or one that close);
- regret: best full-dev score minus the chosen one's (mean and worst);
- chains saved: 1 - chains scored / (candidates x samples). A dropped candidate is charged every
  chain up to `round_size` samples past the point where it was dropped, as if the whole look-ahead
  had already left (the most a live run can waste); the chosen one is charged every sample.

delta and epsilon are fixed before any result is seen (0.05 and one sample's worth); tasks are
split into a tuning group (on which any other default may be chosen) and a held-out group, and
the Bar is read on the held-out group only.

    python -m perf.racing_replay [--orders 200] [--round 8] [--data FILE] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.racing import Race, RacingSettings, racing_order
from perf.racing_record import DATA_FILE, RecordedStep, load_steps

TUNING_TASKS = ("bbh/navigate", "bbh/web_of_lies")


@dataclass(frozen=True, slots=True)
class Replay:
    """One step raced under one sample order."""

    task: str
    server: str
    within_epsilon: bool
    regret: float
    chains_scored: int
    chains_full: int


def full_means(step: RecordedStep) -> list[float]:
    means = []
    for row in step.scores:
        answered = [v for v in row if not math.isnan(v)]
        means.append(sum(answered) / len(answered) if answered else 0.0)
    return means


def replay_step(step: RecordedStep, settings: RacingSettings) -> Replay:
    """Race `step` once in the order `settings.seed` gives, feeding the recorded scores."""
    candidates, samples = len(step.scores), len(step.sample_ids)
    order = racing_order(samples, settings.seed)
    race = Race(candidates, samples, settings)
    for position in range(samples):
        if race.finished:
            break
        for candidate in race.survivors():
            race.record(candidate, position, step.scores[candidate][order[position]])
    chosen = race.leader()
    means = full_means(step)
    best = max(means)
    scored = sum(
        min(samples, race.dropped_at[c] + settings.round_size) if c in race.dropped_at else samples
        for c in range(candidates)
    )
    epsilon = settings.epsilon_for(samples)
    return Replay(
        task=step.task,
        server=step.server,
        within_epsilon=best - means[chosen] <= epsilon + 1e-12,
        regret=best - means[chosen],
        chains_scored=scored,
        chains_full=candidates * samples,
    )


def replay_all(
    steps: Sequence[RecordedStep], orders: int, base: RacingSettings
) -> dict[str, list[Replay]]:
    """Every step under `orders` sample orders, grouped as tuning / held-out."""
    groups: dict[str, list[Replay]] = {"tuning": [], "held-out": []}
    for index, step in enumerate(steps):
        group = "tuning" if step.task in TUNING_TASKS else "held-out"
        for order in range(orders):
            settings = RacingSettings(
                delta=base.delta,
                epsilon=base.epsilon,
                round_size=base.round_size,
                seed=index * 1_000_003 + order,
            )
            groups[group].append(replay_step(step, settings))
    return groups


def summarise(replays: Sequence[Replay]) -> dict[str, float]:
    if not replays:
        return {}
    saved = [1.0 - r.chains_scored / r.chains_full for r in replays]
    return {
        "replays": len(replays),
        "tasks": len({r.task for r in replays}),
        "within_epsilon": sum(r.within_epsilon for r in replays) / len(replays),
        "mean_regret": statistics.fmean(r.regret for r in replays),
        "worst_regret": max(r.regret for r in replays),
        "chains_saved": 1.0
        - sum(r.chains_scored for r in replays) / sum(r.chains_full for r in replays),
        "median_step_saved": statistics.median(saved),
    }


def render(summaries: dict[str, dict[str, float]], settings: RacingSettings, steps: int) -> str:
    lines = [
        f"racing replay: {steps} recorded steps, delta {settings.delta}, epsilon "
        f"{'1/N' if settings.epsilon is None else settings.epsilon}, look-ahead "
        f"{settings.round_size}",
        "| group | replays | tasks | within epsilon | mean regret | worst regret "
        "| chains saved | median step saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, s in summaries.items():
        if not s:
            continue
        lines.append(
            f"| {group} | {s['replays']:,} | {s['tasks']} | {s['within_epsilon']:.1%} "
            f"| {s['mean_regret']:.4f} | {s['worst_regret']:.4f} | {s['chains_saved']:.1%} "
            f"| {s['median_step_saved']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="recorded steps (JSONL)")
    parser.add_argument("--orders", type=int, default=200, help="sample orders per step")
    parser.add_argument("--round", type=int, default=RacingSettings().round_size)
    parser.add_argument("--delta", type=float, default=RacingSettings().delta)
    parser.add_argument("--json", type=Path, help="write the summaries as JSON")
    args = parser.parse_args(argv)
    steps = load_steps(args.data)
    settings = RacingSettings(delta=args.delta, round_size=max(0, args.round))
    groups = replay_all(steps, max(1, args.orders), settings)
    summaries = {group: summarise(replays) for group, replays in groups.items()}
    summaries["all"] = summarise([r for replays in groups.values() for r in replays])
    print(render(summaries, settings, len(steps)))
    if args.json:
        args.json.write_bytes(orjson.dumps(summaries, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
