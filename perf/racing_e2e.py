"""`gpo optimize --racing` against the same run without it, end to end, over several seeds.

For each seed, the same `gpo optimize` command runs twice, once with `--racing` and once
without, each in its own run directory (no shared cache, so racing earns nothing from the other
run). Reported per mode: the final prompt's test score (mean and sample standard deviation over
the seeds), the scorer's requests and tokens (the ledger's scoring phase), and the difference of
the means against the seed-to-seed spread of the plain runs, which is the noise racing is judged
against.

    python -m perf.racing_e2e --task bbh/navigate --seeds 0 1 2 --out runs/racing-e2e \
        -- --steps 2 --candidates 8 --scorer-url http://127.0.0.1:8000/v1 ...

Everything after `--` goes to `gpo optimize` unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True, slots=True)
class RunFigures:
    racing: bool
    seed: int
    final_test: float
    scoring_requests: int
    scoring_tokens: int


def run_once(
    task: str, seed: int, racing: bool, out: Path, extra: Sequence[str], timeout_s: float
) -> RunFigures:
    run_dir = out / f"{'racing' if racing else 'plain'}-seed{seed}"
    command = [sys.executable, "-m", "gpo", "optimize", "--task", task, "--seed", str(seed)]
    command += ["--run-dir", str(run_dir), "--no-progress", *extra]
    if racing:
        command.append("--racing")
    subprocess.run(command, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL)
    return read_figures(run_dir, racing, seed)


def read_figures(run_dir: Path, racing: bool, seed: int) -> RunFigures:
    (result_file,) = sorted((run_dir / "tasks").glob("*/result.json"))
    result = orjson.loads(result_file.read_bytes())
    ledger = orjson.loads((run_dir / "ledger.json").read_bytes())
    scoring = [row for row in ledger["rows"] if row["phase"] == "scoring"]
    return RunFigures(
        racing=racing,
        seed=seed,
        final_test=float(result["final_test"]),
        scoring_requests=sum(int(row["requests"]) for row in scoring),
        scoring_tokens=sum(
            int(row["prompt_tokens"]) + int(row["completion_tokens"]) for row in scoring
        ),
    )


def render(figures: Sequence[RunFigures]) -> str:
    lines = [
        "| mode | seeds | final test, mean | spread (sd) | scorer requests | scorer tokens |",
        "|---|---|---|---|---|---|",
    ]
    means: dict[bool, float] = {}
    tokens: dict[bool, float] = {}
    spread = 0.0
    for racing in (False, True):
        rows = [f for f in figures if f.racing == racing]
        if not rows:
            continue
        scores = [f.final_test for f in rows]
        means[racing] = statistics.fmean(scores)
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        spread = sd if not racing else spread
        tokens[racing] = statistics.fmean(f.scoring_tokens for f in rows)
        lines.append(
            f"| {'racing' if racing else 'plain'} | {len(rows)} | {means[racing]:.4f} | {sd:.4f} "
            f"| {statistics.fmean(f.scoring_requests for f in rows):,.0f} "
            f"| {tokens[racing]:,.0f} |"
        )
    if len(means) == 2:
        lines.append(
            f"racing - plain: final test {means[True] - means[False]:+.4f} (plain runs' spread "
            f"{spread:.4f}); scorer tokens {tokens[True] / tokens[False]:.1%} of plain"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="bbh/navigate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (new)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per run")
    parser.add_argument("--json", type=Path, help="write every run's figures as JSON")
    args = parser.parse_args(argv)
    figures = []
    for seed in args.seeds:
        for racing in (False, True):
            figures.append(run_once(args.task, seed, racing, args.out, extra, args.timeout_s))
            print(figures[-1], flush=True)
    print(render(figures))
    if args.json:
        args.json.write_bytes(orjson.dumps([dataclasses.asdict(f) for f in figures]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
