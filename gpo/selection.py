"""Which candidate becomes the next current prompt, and which prompt is the final one.

Next prompt: the best-scoring candidate of the step that has not been chosen before (so the
trajectory can go down, as in the reference); ties go to the earlier candidate. When every
candidate was chosen before, the best one is taken again. Final prompt: the best dev score over
the whole trajectory, the earliest on a tie.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def choose_next(
    scored: Sequence[tuple[str, float]], already_chosen: Collection[str]
) -> tuple[str, float] | None:
    """The (prompt, score) to continue from, or None when the step produced no candidate."""
    if not scored:
        return None
    ranked = sorted(scored, key=lambda item: item[1], reverse=True)  # stable: earlier wins ties
    for prompt, score in ranked:
        if prompt not in already_chosen:
            return prompt, score
    return ranked[0]
