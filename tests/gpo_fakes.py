"""In-process fake backends for the optimizer's tests, behind the real `Backend` protocol.

They run under the real `Engine`, `ResponseCache` and `Evaluator`, so the loop is tested with the
real scheduling, caching and scoring, and only the models are fakes:

- `FakeScorer` answers benchmark questions. Whether it answers a question right depends on a
  hash of (instruction, question) against the instruction's "skill", itself a hash of the
  instruction: different prompts get different, deterministic dev scores.
- `FakeOptimizer` answers meta-prompts with `<START>...<END>` prompts drawn deterministically
  from the text and the request's seed, reflections with a fixed problem statement.
Both count what they were asked and answered, and can slow down after a number of calls so that
a test can kill the run mid-step.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path

from backends.protocol import Capabilities, Completion, Message, SamplingParams
from benchmarks import load_task

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

WORDS = (
    "carefully",
    "check",
    "each",
    "option",
    "reason",
    "briefly",
    "answer",
    "count",
    "track",
    "position",
    "verify",
    "final",
)


def stable_hash(*parts: object) -> int:
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def request_identity(messages: Sequence[Message], params: SamplingParams) -> tuple:
    return (tuple(messages), params.n, params.temperature, params.seed, params.max_tokens)


class _FakeBackend:
    def __init__(self, model: str, *, multiple_choices: bool = True, delay_s: float = 0.0) -> None:
        self._model = model
        self._capabilities = Capabilities(
            prompt_lists=False, multiple_choices=multiple_choices, completions=False
        )
        self.delay_s = delay_s
        self.calls: list[tuple] = []
        self.answered: list[tuple] = []
        self.stall_after: int | None = None
        self.stall_s = 0.5
        self.stalled = asyncio.Event()

    @property
    def identity(self) -> str:
        return f"fake://{self._model}"

    @property
    def model(self) -> str:
        return self._model

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        raise NotImplementedError("the fakes speak chat only")

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        identity = request_identity(messages, params)
        self.calls.append(identity)
        if self.stall_after is not None and len(self.calls) > self.stall_after:
            self.stalled.set()
            await asyncio.sleep(self.stall_s)  # slow enough to be killed mid-call
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        texts = tuple(self.answer(messages, params, choice) for choice in range(params.n))
        prompt_tokens = sum(len(content.split()) for _, content in messages)
        completion_tokens = sum(len(text.split()) for text in texts)
        self.answered.append(identity)
        return Completion(texts, prompt_tokens, completion_tokens, ("stop",) * len(texts))

    def answer(self, messages: Sequence[Message], params: SamplingParams, choice: int) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class FakeScorer(_FakeBackend):
    """Answers the questions of `tasks`, right or wrong depending on the instruction."""

    def __init__(self, tasks: Sequence[str] = ("bbh/navigate",), **kwargs: object) -> None:
        super().__init__("fake-scorer", **kwargs)  # type: ignore[arg-type]
        self.gold: dict[str, str] = {}
        for name in tasks:
            task = load_task(name, DATA_DIR)
            for split in ("train", "eval", "test", "format"):
                for sample in task.split(split):
                    self.gold[sample.input] = sample.target

    @staticmethod
    def skill(instruction: str) -> float:
        words = sum(1 for word in WORDS if word in instruction.lower())
        return min(0.95, 0.2 + 0.1 * words + (stable_hash(instruction) % 10) / 100)

    def answer(self, messages: Sequence[Message], params: SamplingParams, choice: int) -> str:
        if len(messages) > 1 and messages[-2][0] == "assistant":
            return messages[-2][1]  # the answer-pinning turn repeats the answer
        content = messages[-1][1]
        for question, gold in self.gold.items():
            if content.startswith(question):
                instruction = content[len(question) :].strip()
                right = stable_hash(instruction, question) % 100 < 100 * self.skill(instruction)
                return gold if right else "I cannot tell."
        return "I cannot tell."


class FakeOptimizer(_FakeBackend):
    """Writes prompts from a small vocabulary, deterministically from text and seed."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("fake-optimizer", **kwargs)  # type: ignore[arg-type]

    def answer(self, messages: Sequence[Message], params: SamplingParams, choice: int) -> str:
        text = messages[-1][1]
        if text.startswith("Your task is to point out the problems"):
            return "<START>The prompt does not say to track each step.<END>"
        if text.startswith("Your task is to integrate"):
            return "<START>It forgets to track steps and to verify the final position.<END>"
        if text.startswith("Your task is to summarize"):
            return "<START>Track each step and verify the final position.<END>"
        seed = (params.seed or 0) + choice
        h = stable_hash(text, seed)
        count = 2 + h % 4
        words = [WORDS[(h >> (4 * i)) % len(WORDS)] for i in range(count)]
        return f"Here is my proposal.\n<START>{' '.join(words)}.<END>"
