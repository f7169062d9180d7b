"""`gpo optimize --dry-run`: the estimate counts the calls the loop will make, sends none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gpo.cli import build_parser
from gpo.cli_optimize import spec_from_args
from gpo.dry_run import estimate_run

REPO = Path(__file__).resolve().parents[1]


def test_estimate_counts_every_scoring_chain_and_meta_prompt():
    args = build_parser().parse_args(
        [
            "optimize",
            "--task",
            "bbh/navigate",
            "--steps",
            "2",
            "--candidates",
            "4",
            "--dev-size",
            "8",
            "--test-size",
            "8",
            "--dry-run",
        ]
    )
    (estimate,) = estimate_run(spec_from_args(args), args).values()
    # initial prompt + 2 steps x 4 candidates on 8 dev samples, initial and final on 8 test
    # samples; two chat turns each. One meta-prompt per step, n=4 in one call.
    assert estimate.scorer_calls == 2 * (8 * (1 + 2 * 4) + 2 * 8)
    assert estimate.optimizer_calls == 2
    assert estimate.scorer_prompt_tokens > 0 and estimate.optimizer_completion_tokens > 0


def test_dry_run_prints_a_table_and_needs_no_server(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpo",
            "optimize",
            "--task",
            "lite-bbh",
            "--dry-run",
            "--scorer-model",
            "gpt-3.5-turbo",
            "--optimizer-model",
            "gpt-4o",
            "--scorer-url",
            "http://127.0.0.1:9/v1",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout and "bbh/word_sorting" in done.stdout
    assert not (tmp_path / "run").exists()  # nothing written, nothing sent
