"""How many optimization steps a task gets, and which format examples its meta-prompts show.

Both follow the reference code, so that a run here takes the same number of steps and shows the
same examples as the paper's: steps per epoch are `train_n // batch`, plus one when the remainder
is at least half a batch; the format examples are the reference's numpy draws replayed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpo.config import OptimizerConfig


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """train_n // batch, plus one when the remainder is at least half a batch (the reference)."""
    steps = train_size // batch_size
    if train_size % batch_size >= batch_size / 2:
        steps += 1
    return steps


def total_steps(config: OptimizerConfig, train_size: int) -> int:
    """`config.steps` when given, else epochs x steps per epoch."""
    if config.steps is not None:
        return config.steps
    return config.epochs * steps_per_epoch(train_size, config.batch_size)


def draw_format_indices(
    seed: int, split_sizes: Sequence[int], format_size: int, count: int
) -> list[int]:
    """The format examples' indices, drawn as the reference does for one task.

    The reference seeds numpy with 0, draws a permutation of the train, eval and test splits,
    then 3 format indices without replacement, sorted; replaying those draws picks the same
    examples.
    """
    rng = np.random.RandomState(seed)
    for size in split_sizes:
        if size:
            rng.choice(size, size=size, replace=False)
    count = min(count, format_size)
    if count == 0:
        return []
    return sorted(int(i) for i in rng.choice(format_size, size=count, replace=False))
