"""The reference implementation's answer scoring (RUCAIBox/GPO), quirks included: the default.

The paper's numbers come from these rules, so `--answer-rules reference` (the default) applies
them exactly; `../shared/data/reference_verdicts.jsonl` holds outputs with the verdicts the
reference's own functions give, and the tests check every line. Written from a reading of the
reference's `metrics.get_normalized_prediction` and `eval_utils._get_accuracy`:

Normalisation (on the answer with surrounding whitespace stripped):
1. Lowercase. The cue list is chosen on the text *before* lowercasing: `answer is `,
   `answer: `, `answer is: ` if one of them occurs there, else `is: `, `are: `. `#### ` and
   then each listed cue, in that order, keep the text after the cue's last occurrence.
2. Each of ` is the correct answer`, ` is the right answer`, ` is the final answer`,
   ` is the answer` that occurs cuts the text before its first occurrence.
3. Multiple choice: the first `(x)` if there is one. Numeric: number words one..twelve become
   digits only as whole space-separated tokens; the text after the last `=`; `$ , % € £ :`
   removed; the first token holding a digit if a cue was found, else the last; trailing letters
   and then one `-` dropped; a float is rounded half-to-even to an integer string, anything
   else keeps its last run of digits. Boolean: all punctuation removed (the reference's
   first-sentence rule compares a list with strings and never fires).

Accuracy: dyck_languages compares the last run of closing brackets (spacing kept) with the
target; word_sorting compares word lists split on newlines or spaces; otherwise `(x)` becomes
`x`, and the answer matches when it equals the target, or does so once both lose their
punctuation, or (for a boolean target) when it is `true`/`false` or `1`/`0` naming the target's
truth value (so "true" matches a "Yes" target, but "valid" does not).
"""

from __future__ import annotations

import re
import string

from benchmarks.answer_types import AnswerType

_PRIMARY_CUES: tuple[str, ...] = ("answer is ", "answer: ", "answer is: ")
_FALLBACK_CUES: tuple[str, ...] = ("is: ", "are: ")
_GSM8K_CUE = "#### "
_AHEAD_CUES: tuple[str, ...] = (
    " is the correct answer",
    " is the right answer",
    " is the final answer",
    " is the answer",
)
_NUMBER_WORDS: dict[str, str] = {
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
}
_NUMERIC_NOISE: tuple[str, ...] = ("$", ",", "%", "€", "£", ":")
_BRACKETED = re.compile(r"\([A-Za-z]\)")
_LAST_DIGITS = re.compile(r"(\d+)(?!.*\d)")
_CLOSING_RUN = re.compile(r"[>\)\]}]+[ >\)\]}]*")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_BOOLEAN_PAIRS: tuple[tuple[str, str], ...] = (
    ("false", "true"),
    ("no", "yes"),
    ("invalid", "valid"),
)
_LOWER_OPTION = re.compile(r"\(([a-z])\)")


def reference_parse(answer_type: AnswerType, text: str) -> str:
    """What the reference's `get_normalized_prediction` returns for `text` on a task of this
    type (the answer as shown in a run's records)."""
    return normalize(
        text.strip(),
        multiple_choice=answer_type is AnswerType.MULTIPLE_CHOICE,
        numeric=answer_type is AnswerType.NUMERIC,
        boolean=answer_type is AnswerType.BOOLEAN,
    )


def reference_score(answer_type: AnswerType, target: str, text: str) -> float:
    """1.0 or 0.0: the reference's verdict on answer `text` for gold `target`."""
    parsed = reference_parse(answer_type, text)
    return float(accuracy(answer_type, target, parsed))


def normalize(text: str, *, multiple_choice: bool, numeric: bool, boolean: bool) -> str:
    """The reference's normalised prediction (see the module docstring)."""
    parsed = text.lower().strip()
    cues = _PRIMARY_CUES if any(cue in text for cue in _PRIMARY_CUES) else _FALLBACK_CUES
    cue_found = False
    for cue in (_GSM8K_CUE, *cues):
        if cue in parsed:
            parsed = parsed.rsplit(cue, 1)[1]
            cue_found = True
    for cue in _AHEAD_CUES:
        if cue in parsed:
            parsed = parsed.split(cue, 1)[0]
            cue_found = True
    if multiple_choice:
        option = _BRACKETED.search(parsed)
        if option is not None:
            parsed = option.group(0)
    if numeric:
        parsed = _parse_number(parsed, cue_found)
    if boolean:
        parsed = parsed.translate(_PUNCTUATION).strip()
    return parsed


def accuracy(answer_type: AnswerType, target: str, parsed: str) -> int:
    """The reference's `_get_accuracy` for a normalised prediction."""
    gold = str(target).lower().strip()
    prediction = str(parsed).lower().strip()
    if answer_type is AnswerType.DYCK:
        runs = _CLOSING_RUN.findall(prediction)
        return int(bool(runs) and runs[-1].strip() == gold)
    if answer_type is AnswerType.WORD_SORTING:
        return _word_lists_match(gold, prediction)
    gold = _option_letter(gold)
    prediction = _option_letter(prediction)
    if prediction == gold or (
        prediction.translate(_PUNCTUATION).strip() == gold.translate(_PUNCTUATION).strip()
    ):
        return 1
    for pair in _BOOLEAN_PAIRS:
        if gold in pair:
            truth = "true" if pair.index(gold) == 1 else "false"
            if prediction in ("0", "1"):
                prediction = "true" if prediction == "1" else "false"
            return int(prediction == truth)
    return 0


def _parse_number(parsed: str, cue_found: bool) -> str:
    parsed = " ".join(_NUMBER_WORDS.get(token, token) for token in parsed.split(" "))
    parsed = parsed.split("=")[-1]
    for noise in _NUMERIC_NOISE:
        parsed = parsed.replace(noise, "")
    parts = parsed.strip().split(" ")
    if not cue_found:
        parts.reverse()
    chosen = next((part for part in parts if any(c.isdigit() for c in part)), parts[0])
    while chosen and chosen[-1].isalpha():
        chosen = chosen[:-1]
    if chosen.endswith("-"):
        chosen = chosen[:-1]
    try:
        value = float(chosen)
    except ValueError:
        digits = _LAST_DIGITS.search(chosen)
        return digits.group(0) if digits else chosen
    return f"{round(value, 0):.0f}"


def _word_lists_match(gold: str, prediction: str) -> int:
    words = [word.strip() for word in gold.split(" ")]
    lines = prediction.split("\n")
    if [line.strip() for line in lines if len(line.split(" ")) == 1] == words:
        return 1
    if [token.strip() for token in prediction.split(" ")] == words:
        return 1
    return int(any(line.split(" ") == words for line in lines))


def _option_letter(text: str) -> str:
    match = _LOWER_OPTION.fullmatch(text)
    return match.group(1) if match else text
