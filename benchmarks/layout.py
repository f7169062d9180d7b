"""Where the instruction goes in the scorer's first turn, and how demonstrations precede it.

Positions (the paper's, after OPRO):
- `Q_end` (default): the question, then the instruction on the next line.
- `Q_begin`: the instruction, then the question.
- `before_Q`: the instruction as a system turn (chat) or a first line (completion).
- `A_begin`: the instruction opens the answer: "Q: {question}\\nA: {instruction}". This layout
  is defined by its markers, so it always writes them.
With `qa_markers` the question is written "Q: {question}" and the turn ends with "\\nA:"
(`A_begin` already ends with the instruction after "A:"). An empty instruction leaves no empty
line. With `shots` = k the first k demonstrations (from `few_shot_examples.jsonl`) come first,
laid out the same way with their gold answers: as earlier user/assistant turns for chat, or as
blocks separated by a blank line for completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from backends.errors import ConfigError
from backends.protocol import Message
from benchmarks.sample import Sample

Position = Literal["Q_end", "Q_begin", "before_Q", "A_begin"]
POSITIONS: tuple[str, ...] = ("Q_end", "Q_begin", "before_Q", "A_begin")


@dataclass(frozen=True, slots=True)
class PromptLayout:
    """How an instruction and a question make up the scorer's first turn."""

    position: Position = "Q_end"
    qa_markers: bool = False
    chat: bool = True
    shots: int = 0

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ConfigError(
                f"unknown instruction position {self.position!r}; "
                f"choose one of {', '.join(POSITIONS)}"
            )
        if self.shots < 0:
            raise ConfigError(f"shots must be 0 or more, got {self.shots}")

    @property
    def uses_markers(self) -> bool:
        return self.qa_markers or self.position == "A_begin"


def build_prompt(
    instruction: str,
    sample: Sample,
    layout: PromptLayout,
    demonstrations: Sequence[Sample] = (),
) -> tuple[Message, ...] | str:
    """The first turn for `sample`: chat messages, or one prompt string for completion."""
    instruction = instruction.strip()
    if layout.shots > len(demonstrations):
        raise ConfigError(
            f"the layout asks for {layout.shots} demonstrations but only "
            f"{len(demonstrations)} are available"
        )
    shots = demonstrations[: layout.shots]
    system_instruction = instruction if layout.position == "before_Q" else ""
    if layout.chat:
        messages: list[Message] = []
        if system_instruction:
            messages.append(("system", system_instruction))
        for demo in shots:
            messages.append(("user", question_block(instruction, demo.input, layout)))
            messages.append(("assistant", demo.target))
        messages.append(("user", question_block(instruction, sample.input, layout)))
        return tuple(messages)
    blocks = [system_instruction] if system_instruction else []
    blocks += [_demonstration_block(instruction, demo, layout) for demo in shots]
    blocks.append(question_block(instruction, sample.input, layout))
    return "\n\n".join(blocks) if shots else "\n".join(blocks)


def question_block(instruction: str, question: str, layout: PromptLayout) -> str:
    """One question with the instruction placed by `layout` (before_Q's instruction excluded)."""
    markers = layout.uses_markers
    asked = f"Q: {question}" if markers else question
    if layout.position == "A_begin":
        return f"{asked}\nA: {instruction}" if instruction else f"{asked}\nA:"
    if layout.position == "Q_end":
        lines = [asked, instruction]
    elif layout.position == "Q_begin":
        lines = [f"Q: {instruction}" if markers else instruction, question]
        if markers and not instruction:
            lines = [asked]
    else:
        lines = [asked]
    if markers:
        lines.append("A:")
    return "\n".join(line for line in lines if line)


def _demonstration_block(instruction: str, demo: Sample, layout: PromptLayout) -> str:
    block = question_block(instruction, demo.input, layout)
    separator = " " if layout.uses_markers else "\n"
    return f"{block}{separator}{demo.target}"
