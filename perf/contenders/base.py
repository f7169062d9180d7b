"""What every contender is: a dispatch pattern given a `RunContext` (the task, the planned
rounds, the endpoint, a deadline) that answers each chain's two chat turns into a `Transcript`;
plus the helpers the patterns share (first turn, chat messages, an event loop)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from backends.protocol import Message
from benchmarks import (
    PromptLayout,
    Sample,
    Task,
    answer_turn,
    build_prompt,
    extract_answer,
    score_answer,
)
from perf.rounds import RoundPlan
from perf.servers import Endpoint

T = TypeVar("T")


class Transcript:
    """What a contender produced: per chain, its answers (both turns) or a failure.

    `failed` counts every time a pattern gave up on a chain; `unanswered` holds the chains
    that failed and have not been answered since (by a re-run).
    """

    __slots__ = ("answers", "failed", "scores", "unanswered")

    def __init__(self, size: int) -> None:
        self.answers: list[tuple[str, ...] | None] = [None] * size
        self.scores: list[float | None] = [None] * size
        self.failed = 0
        self.unanswered: set[int] = set()

    def record(self, chain: int, answers: tuple[str, ...], score: float) -> None:
        self.answers[chain] = answers
        self.scores[chain] = score
        self.unanswered.discard(chain)

    def fail(self, chain: int) -> None:
        self.failed += 1
        self.unanswered.add(chain)

    def digests(self) -> list[str | None]:
        return [
            None
            if a is None
            else hashlib.blake2b("\x1e".join(a).encode(), digest_size=8).hexdigest()
            for a in self.answers
        ]


@dataclass(slots=True)
class RunContext:
    """Everything a contender needs for one measured run."""

    task: Task
    rounds: list[RoundPlan]
    endpoint: Endpoint
    transcript: Transcript
    deadline: float
    layout: PromptLayout = field(default_factory=PromptLayout)
    cache_path: str | None = None
    """A file cache for contenders with one (the engine's response cache)."""
    memory_cache: dict[str, str] | None = None
    """An in-memory cache for contenders with one (DSPy's LM cache), kept across runs."""
    chains_done: int = 0

    def out_of_time(self) -> bool:
        """True once the run budget is spent; checked only between a pattern's units."""
        return time.perf_counter() > self.deadline

    def seconds(self, simulated: float) -> float:
        """A pattern's fixed wait, given in simulated seconds, in real seconds."""
        return simulated / self.endpoint.time_scale

    def finish(self, chain: int, sample: Sample, answers: Sequence[str]) -> None:
        final = answers[-1]
        extract_answer(self.task, final)
        self.transcript.record(chain, tuple(answers), score_answer(self.task, sample, final))
        self.chains_done += 1

    def fail(self, chain: int) -> None:
        self.transcript.fail(chain)
        self.chains_done += 1

    def conversation(
        self, first: tuple[Message, ...], first_answer: str, sample: Sample
    ) -> tuple[Message, ...] | None:
        follow_up = answer_turn(self.task, sample)
        if follow_up is None:
            return None
        return (*first, ("assistant", first_answer), ("user", follow_up))


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    pattern: str
    unit: str
    """Where a run may stop early: after a "chain", a "candidate" or a "round"."""
    run: Callable[[RunContext], None]
    cache: Literal["none", "file", "memory"] = "none"
    """The pattern's own response cache: a file (`cache_path`) or memory (`memory_cache`)."""
    extra: str | None = None
    """The module of the `bench` extra the pattern runs (a peer's own code); None: none."""

    @property
    def has_cache(self) -> bool:
        return self.cache != "none"


def first_turn(ctx: RunContext, prompt: str, sample: Sample) -> tuple[Message, ...]:
    messages = build_prompt(prompt, sample, ctx.layout)
    assert not isinstance(messages, str), "the benchmark scores chat scorers"
    return messages


def chat_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


def run_async(coroutine: Coroutine[Any, Any, T], *, uvloop_loop: bool = False) -> T:
    if uvloop_loop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coroutine)
    return asyncio.run(coroutine)
