"""Run pytest several times in a row while busy loops hold the CPU cores: the check that the
suite does not depend on an idle machine.

    python tests/under_load.py                      # the whole suite, 3 rounds, 2 busy loops
    python tests/under_load.py --rounds 5 -- tests/test_engine_simulated.py -x

Each round is a fresh `python -m pytest -q -p no:cacheprovider ARGS`, with
`GPO_SKIP_REAL_MODEL=1` unless the environment sets it; the first failing round ends the run.
The busy loops are this script's own children and are killed on the way out, whatever happens.
Not collected by pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUND_TIMEOUT_S = 3 * 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="pytest runs in a row (3)")
    parser.add_argument("--busy", type=int, default=2, help="busy loops to start (2)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    env = {**os.environ}
    env.setdefault("GPO_SKIP_REAL_MODEL", "1")
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        for index in range(args.rounds):
            started = time.monotonic()
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            done = subprocess.run(
                [*command, *args.pytest_args], cwd=REPO, env=env, timeout=ROUND_TIMEOUT_S
            )
            elapsed = time.monotonic() - started
            print(f"round {index + 1}/{args.rounds}: exit {done.returncode} after {elapsed:.0f} s")
            if done.returncode != 0:
                return done.returncode
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
