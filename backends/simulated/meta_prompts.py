"""Answers to optimizer meta-prompts: new candidate prompts derived from the prompts shown.

Whether a request is a meta-prompt, and which kind, is never guessed from its wording: the
request says so in its `X-GPO-Purpose` header (`backends.protocol.Purpose`), and a request without
one is an ordinary prompt whatever it contains. What the answer says is drawn from the text:
for a new prompt (`Purpose.NEW_PROMPT`), the simulated optimizer reads the prompts listed after
"Prompt:" with their "Score:" lines and the one after "The current prompt is:", starts from the
best-scored one (sometimes another one shown), and edits a few words using a vocabulary that
includes the words the simulated scorer rewards (see `answers.py`), within the "change up to N
words" budget when one is stated; a reflection (`Purpose.REFLECTION`) gets one of a few stock
reasons. Every choice is a function of the meta-prompt and the sampling key, so n = 8 gives
varied candidates and runs repeat exactly.
"""

from __future__ import annotations

import random
import re

from backends.protocol import Purpose

_BUDGET = re.compile(r"change up to (\d+) words")
_SCORE = re.compile(r"-?\d+(?:\.\d+)?")
_VOCABULARY = (
    "step",
    "carefully",
    "option",
    "answer",
    "final",
    "check",
    "verify",
    "reason",
    "each",
    "clearly",
    "briefly",
    "question",
    "think",
    "solve",
    "consider",
    "detail",
    "logic",
    "the",
    "then",
    "and",
)
_PHRASES = (
    "Check each option carefully.",
    "Give the final answer.",
    "Think step by step.",
    "Explain your reason briefly.",
    "Read the question carefully.",
    "Verify the answer before you reply.",
)
_REASONS = (
    "does not ask the model to check each option before answering",
    "is too short to tell the model how to reason step by step",
    "does not say which final answer format is expected",
    "lets the model skip verifying its intermediate steps",
    "does not ask the model to read the question carefully",
)
_FALLBACK_PROMPT = "Let's think step by step."


def shown_prompts(text: str) -> tuple[list[tuple[str, float | None]], str | None]:
    """The scored prompts a meta-prompt lists, and its current prompt (None if absent)."""
    lines = text.splitlines()
    shown: list[tuple[str, float | None]] = []
    current: str | None = None
    for i, line in enumerate(lines):
        if line.startswith("Prompt:"):
            score = None
            if i + 1 < len(lines) and lines[i + 1].startswith("Score:"):
                found = _SCORE.search(lines[i + 1])
                score = float(found.group()) if found else None
            shown.append((line[len("Prompt:") :].strip(), score))
        elif line.strip() == "The current prompt is:" and current is None:
            body = []
            for following in lines[i + 1 :]:
                if not following.strip():
                    if body:
                        break
                    continue
                body.append(following.strip())
            current = " ".join(body) or None
    return shown, current


def _edit(words: list[str], budget: int, rng: random.Random) -> list[str]:
    edits = rng.randint(1, max(1, min(4, budget)))
    for _ in range(edits):
        action = rng.random()
        if action < 0.2 and budget >= 3:
            phrase = rng.choice(_PHRASES).split()
            if len(phrase) <= budget:
                words = [*words, *phrase]
                budget -= len(phrase)
                continue
        if budget <= 0:
            break
        position = rng.randrange(len(words) + 1)
        if action < 0.6 or not words:
            words.insert(position, rng.choice(_VOCABULARY))
        elif action < 0.85:
            words[min(position, len(words) - 1)] = rng.choice(_VOCABULARY)
        elif len(words) > 3:
            del words[min(position, len(words) - 1)]
        budget -= 1
    return words


def new_prompt_candidate(text: str, key: int) -> str:
    """One edited prompt for a meta-prompt that asks for a new prompt."""
    rng = random.Random(key)
    shown, current = shown_prompts(text)
    scored = [(score if score is not None else 0.0, prompt) for prompt, score in shown if prompt]
    pool = [prompt for _, prompt in scored] + ([current] if current else [])
    if not pool:
        base = _FALLBACK_PROMPT
    elif scored and rng.random() < 0.6:
        base = max(scored, key=lambda item: item[0])[1]
    else:
        base = rng.choice(pool)
    found = _BUDGET.search(text)
    budget = int(found.group(1)) if found else 5
    words = _edit(base.split(), budget, rng)
    candidate = " ".join(words).strip() or _FALLBACK_PROMPT
    if not candidate.endswith((".", "?", "!")):
        candidate += "."
    return candidate[0].upper() + candidate[1:]


def optimizer_answer(purpose: Purpose, text: str, key: int) -> str:
    """The full answer to a meta-prompt of this `purpose`, wrapped in <START> and <END>."""
    if purpose is Purpose.NEW_PROMPT:
        return f"<START>{new_prompt_candidate(text, key)}<END>"
    reason = random.Random(key).choice(_REASONS)
    return f"<START>The prompt {reason}.<END>"
