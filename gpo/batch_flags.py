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
from backends.vllm_run_batch import LocalRunBatch, run_batch_command
from engine.batch_api import BatchRunner, BatchSettings
from engine.engine import Engine
from gpo.endpoint_flags import BoundedNumber

LOCAL_DIR = "batch-local"  # run-batch's inputs, outputs, logs and process ids


def add_batch_arguments(parser: Any, what: str = "requests") -> None:
    """The Batch API flags; `what` names the work they send as batches."""
    group = parser.add_argument_group("Batch API (work that can wait, at the batch price)")
    group.add_argument(
        "--batch-api",
        nargs="?",
        const="api",
        choices=("api", "local"),
        default=None,
        help=f"send {what} that miss the cache as OpenAI Batch API batches (/v1/files, "
        "/v1/batches) and wait for them; `--batch-api local` runs the same JSONL through "
        "`vllm run-batch` on the vLLM CPU build with --scorer-vllm's model; the batch ids are "
        "kept in the output folder, so the same command resumed after a stop collects them "
        "instead of submitting again (default: off)",
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
    mode = getattr(args, "batch_api", None)
    if not mode:
        return
    backend = engine.backend
    transport: BatchTransport | LocalRunBatch
    if mode == "local":
        model = getattr(args, "scorer_vllm", None)
        if not model:
            raise ConfigError(
                "--batch-api local: name the model vllm run-batch loads with --scorer-vllm MODEL"
            )
        command, env = run_batch_command(model, backend.model)
        transport = LocalRunBatch(command, out_dir / LOCAL_DIR, backend.model, env)
    elif isinstance(backend, OpenAICompatibleBackend):
        transport = BatchTransport(backend)
    else:
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
        transport,
        out_dir,
        cache=engine.cache,
        ledger=engine.ledger,
        settings=settings,
        all_requests=all_requests,
    )
    runner.start()
    engine.batch = runner
