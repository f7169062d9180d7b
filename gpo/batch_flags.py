"""`--batch-api` and its settings: answer an evaluation's requests through the OpenAI Batch API.

Work that can wait (`gpo eval`) is sent as Batch API batches at the batch price (see
`engine/batch_api.py`); the batch ids are kept in the output folder, so the same command run
again with `--overwrite` after a kill collects the pending batch instead of paying twice.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from backends.openai_batch import BatchTransport
from backends.openai_client import OpenAICompatibleBackend
from engine.batch_api import BatchRunner, BatchSettings
from engine.engine import Engine
from gpo.endpoint_flags import BoundedNumber


def add_batch_arguments(parser: Any, what: str = "requests") -> None:
    """The Batch API flags; `what` names the work they send as batches."""
    group = parser.add_argument_group("Batch API (work that can wait, at the batch price)")
    group.add_argument(
        "--batch-api",
        action="store_true",
        help=f"send {what} that miss the cache as OpenAI Batch API batches (/v1/files, "
        "/v1/batches) and wait for them; the batch ids are kept in the output folder, so the "
        "same command resumed after a stop collects them instead of submitting again",
    )
    group.add_argument(
        "--batch-timeout",
        type=BoundedNumber(float, 1, 30 * 86400),
        default=93600.0,
        metavar="S",
        help="give up waiting for a batch after S seconds (its requests fail as batch_timeout; "
        "it stays recorded for a later run to collect; default 93600, 26 hours)",
    )
    group.add_argument(
        "--batch-poll-max",
        type=BoundedNumber(float, 0.05, 3600),
        default=60.0,
        metavar="S",
        help="longest pause between two status polls of a batch (back-off from 1 s; default 60)",
    )
    group.add_argument(
        "--batch-attempts",
        type=BoundedNumber(int, 1, 10),
        default=3,
        metavar="N",
        help="batches a request may go through before its failed or expired line is reported "
        "as a failed sample (default 3)",
    )


def attach_batch_runner(
    args: argparse.Namespace, engine: Engine, out_dir: Path, *, all_requests: bool = True
) -> None:
    """With `--batch-api`, route `engine`'s cacheable requests through a `BatchRunner` (with
    `all_requests=False`, only those made in `engine.batch_api.work_that_can_wait()`)."""
    if not getattr(args, "batch_api", False):
        return
    backend = engine.backend
    if not isinstance(backend, OpenAICompatibleBackend):
        raise ConfigError(
            "--batch-api needs one OpenAI-compatible endpoint (one --scorer-url), got "
            f"{type(backend).__name__}"
        )
    settings = BatchSettings(
        poll_first_s=min(1.0, args.batch_poll_max),
        poll_max_s=args.batch_poll_max,
        timeout_s=args.batch_timeout,
        max_attempts=args.batch_attempts,
    )
    runner = BatchRunner(
        BatchTransport(backend),
        out_dir,
        cache=engine.cache,
        ledger=engine.ledger,
        settings=settings,
        all_requests=all_requests,
    )
    runner.start()
    engine.batch = runner
