"""What the simulated model says: plausible, deterministic answers that an optimizer can climb.

For each prompt the server first makes a plan (once per prompt, whatever `n` is):
- a request that names a purpose (the `X-GPO-Purpose` header, `backends.protocol.Purpose`) is an
  optimizer meta-prompt (see `meta_prompts.py`) and gets `<START>candidate<END>` or
  `<START>reason<END>`; without one, a prompt is never treated as a meta-prompt;
- a prompt containing a question from the answer key is a scoring call. Its instruction is the
  rest of the first user turn (question removed). The answer X is the gold answer when
  u(instruction, question) < p(instruction), else a plausible wrong answer of the same kind
  (`answer_key.plausible_wrong_answer`); u is a uniform value hashed from both texts, so
  correctness never depends on sampling, seed or random state, and turn 1 and turn 2 of the same
  (instruction, question) agree. The first turn rambles for the sampled output length and ends
  with "So the answer is X." (no final period when X has spaces or ends in a bracket, so that the
  answer parses); a second turn (several user turns, the last asking to "summarize", "Directly
  tell me", "Directly output" or starting "Therefore") answers just X;
- any other prompt is answered like an unknown question: rambling, then an answer that parses
  (an option letter present in the prompt, a boolean word present in it, or a small number).

p(instruction), in [0.2, 0.9], rewards words such as "step", "carefully", "option", "answer",
"final", "check", "verify" and a length of 15 to 30 words, plus a +-0.05 hash jitter.

Output lengths come from `OutputLengths.sample` with a uniform value derived from the sampling
key: the prompt's hash when temperature is 0 (greedy: every choice is identical), else the hash
mixed with the seed (None counts as 0) and the choice index. Texts are built to have exactly the
sampled number of tokens (for ASCII answers), then capped at `max_tokens` (finish "length") and
cut at the first stop string (finish "stop").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from backends.protocol import Purpose
from backends.simulated.answer_key import AnswerKey, plausible_wrong_answer
from backends.simulated.config import OutputLengths
from backends.simulated.conversation import parse_prompt, user_turns
from backends.simulated.filler import filler_text
from backends.simulated.meta_prompts import optimizer_answer
from backends.simulated.tokens import BYTES_PER_TOKEN, count_tokens, truncate_to_tokens

_MASK64 = (1 << 64) - 1
_SECOND_TURN_CUE = re.compile(
    r"summarize|directly tell me|directly output|^\s*therefore", re.IGNORECASE
)
_WORD = re.compile(r"[a-z]+")
_OPTION_LETTER = re.compile(r"\(([A-Z])\)")
_BOOLEAN_PAIR = re.compile(r"\b(True|False|Yes|No|valid|invalid)\b")
_REWARDED_WORDS = {
    "step": 0.06,
    "carefully": 0.06,
    "option": 0.05,
    "options": 0.05,
    "answer": 0.05,
    "final": 0.04,
    "check": 0.04,
    "verify": 0.04,
    "reason": 0.03,
    "each": 0.03,
}
_BASE_PROBABILITY = 0.3
_MAX_WORD_BONUS = 0.35
_LENGTH_BONUS = 0.15


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _mix(value: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit mixing function."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _unit(value: int) -> float:
    return (value >> 11) / float(1 << 53)


def sampling_key(prompt_hash: int, temperature: float, seed: int | None, choice: int) -> int:
    """The key every random-looking choice for one completion derives from."""
    if temperature <= 0:
        return _mix(prompt_hash)
    return _mix(prompt_hash ^ _mix(((seed or 0) & _MASK64) ^ _mix(choice + 1)))


def correctness_probability(instruction: str) -> float:
    """p(instruction): how often the simulated scorer answers correctly under this instruction."""
    words = _WORD.findall(instruction.lower())
    bonus = min(_MAX_WORD_BONUS, sum(_REWARDED_WORDS.get(w, 0.0) for w in set(words)))
    count = len(words)
    if count < 15:
        length = _LENGTH_BONUS * count / 15
    elif count <= 30:
        length = _LENGTH_BONUS
    else:
        length = _LENGTH_BONUS * max(0.0, 1.0 - (count - 30) / 30)
    jitter = (_unit(_mix(stable_hash(instruction))) - 0.5) * 0.1
    return min(0.9, max(0.2, _BASE_PROBABILITY + bonus + length + jitter))


def is_correct(instruction: str, question: str) -> bool:
    """Whether the simulated scorer gets `question` right under `instruction`."""
    return _unit(stable_hash(f"{instruction}\x1f{question}")) < correctness_probability(instruction)


@dataclass(frozen=True, slots=True)
class GeneratedText:
    """One completion: its text, its token count (by `tokens.count_tokens`) and why it ended."""

    text: str
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    """What a prompt will be answered, decided once per prompt.

    `kind` is "optimizer" (meta-prompt, of `purpose`), "final" (second turn: just the answer) or
    "reasoning".
    """

    kind: str
    answer: str
    prompt_hash: int
    prompt: str
    purpose: Purpose | None = None


def _answer_sentence(answer: str) -> str:
    if " " in answer or answer.endswith((")", "]", "}", ">", ".")):
        return f"So the answer is {answer}"
    return f"So the answer is {answer}."


def _guess_for_unknown(text: str, key: int) -> str:
    letters = sorted(set(_OPTION_LETTER.findall(text)))
    if letters:
        return f"({letters[key % len(letters)]})"
    words = _BOOLEAN_PAIR.findall(text)
    if words:
        return words[key % len(words)]
    return str(key % 97)


class AnswerSynthesizer:
    """Turns prompts into answers; stateless apart from its configuration and answer key."""

    def __init__(self, output_lengths: OutputLengths, answer_key: AnswerKey | None = None) -> None:
        self._lengths = output_lengths
        self._key = answer_key

    def plan(self, prompt: str, purpose: Purpose | None = None) -> AnswerPlan:
        """How `prompt` will be answered; `purpose` is what the request said it asks for."""
        prompt_hash = stable_hash(prompt)
        if purpose is not None:
            return AnswerPlan("optimizer", "", prompt_hash, prompt, Purpose(purpose))
        turns = user_turns(parse_prompt(prompt))
        second_turn = len(turns) >= 2 and bool(_SECOND_TURN_CUE.search(turns[-1]))
        answer = None
        if self._key is not None:
            for turn in turns:
                found = self._key.find(turn)
                if found is None:
                    continue
                question, gold = found
                instruction = turn.replace(question, "", 1).strip()
                mixed = stable_hash(f"{instruction}\x1f{question}")
                if _unit(mixed) < correctness_probability(instruction):
                    answer = gold
                else:
                    answer = plausible_wrong_answer(gold, question, _mix(mixed))
                break
        if answer is None:
            answer = _guess_for_unknown(turns[0] if turns else prompt, _mix(prompt_hash))
        return AnswerPlan("final" if second_turn else "reasoning", answer, prompt_hash, prompt)

    def generate(
        self,
        plan: AnswerPlan,
        *,
        temperature: float,
        seed: int | None,
        choice: int,
        max_tokens: int,
        stop: tuple[str, ...] = (),
    ) -> GeneratedText:
        key = sampling_key(plan.prompt_hash, temperature, seed, choice)
        if plan.kind == "optimizer" and plan.purpose is not None:
            text = optimizer_answer(plan.purpose, plan.prompt, key)
        elif plan.kind == "final":
            text = plan.answer
        else:
            text = self._reasoning(plan.answer, key)
        return _finish(text, max_tokens, stop)

    def _reasoning(self, answer: str, key: int) -> str:
        length = self._lengths.sample(_unit(key))
        sentence = _answer_sentence(answer)
        filler_chars = length * BYTES_PER_TOKEN - len(sentence.encode("utf-8")) - 1
        if filler_chars <= 0:
            return sentence
        return f"{filler_text(filler_chars, _mix(key))} {sentence}"


def _finish(text: str, max_tokens: int, stop: tuple[str, ...]) -> GeneratedText:
    finish_reason = "stop"
    if count_tokens(text) > max_tokens:
        text = truncate_to_tokens(text, max_tokens)
        finish_reason = "length"
    for marker in stop:
        if marker:
            cut = text.find(marker)
            if cut >= 0:
                text = text[:cut]
                finish_reason = "stop"
    return GeneratedText(text, count_tokens(text), finish_reason)
