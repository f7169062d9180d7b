"""Dry-run cost estimate of one task's optimisation: calls, tokens and dollars, before any call.

What an optimisation sends is known from its configuration and the data, except the lengths the
models will write. The estimate counts:

- Scorer chains: the initial prompt on dev, `candidates` new prompts on dev at every step, and
  the test prompts (initial and final, or every step's) on test. Each chain is the first turn
  (laid out by `benchmarks.build_prompt`) plus, where the task has one, the answer-pinning second
  turn, whose prompt holds the first turn, the first answer and the follow-up question. All
  candidates are assumed new (the loop scores a repeated prompt only once, so this is an upper
  bound when the optimizer repeats itself).
- Prompt tokens are counted exactly on the rendered prompts (the chat template the engine renders
  with, or the contents plus a per-message overhead), with a candidate prompt of the expected
  length in place of the prompts the optimizer has not written yet.
- Completion tokens are the expected output lengths: `first_turn_output_tokens` for the first
  turn (the expectation of min(length, max_tokens)), the mean gold answer's length for the
  pinned second turn, the expected candidate length for the optimizer's answers.
- Optimizer calls: one meta-prompt per step, rendered exactly (trajectory entries of the expected
  length, the run's format examples, the step's word budget); one call with n = candidates where
  the endpoint honours n (the prompt is paid for once), else one call per candidate. Past
  `MAX_SUMMED_STEPS` steps the meta-prompts are counted on a sample of steps, so an estimate's
  work is bounded whatever the number of steps.

- Cached prompt tokens: what the provider's prompt cache will serve (`gpo.cache_estimate`): the
  second turn's repeat of the first turn and its answer, the prefix a first turn shares with the
  previous sample's (same instruction) or with the same sample under another instruction, the
  meta-prompt's header from one step to the next, and the repeats of a meta-prompt sent once per
  candidate. Priced at the table's cached-input rate.

Dollars come from `engine.prices.PriceTable` when the models are priced there; with `batch` the
test evaluations (the work `--batch-api` sends through a Batch API) are priced at batch rates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from backends.chat_template import SERVER_TEMPLATE, get_chat_template
from backends.protocol import Message
from benchmarks import PromptLayout, Sample, Task, answer_turn, build_prompt
from engine.prices import PriceTable
from gpo.cache_estimate import OPENAI_CACHE, PromptCacheRule, shared_prefix
from gpo.config import COT_PROMPT, OptimizerConfig
from gpo.meta_prompts import FormatExample, render_update_prompt
from gpo.step_plan import draw_format_indices, total_steps
from gpo.trajectory import TrajectoryEntry

Tokenizer = Callable[[str], int]

CANDIDATE_MARKERS = "<START><END>"
CHAT_MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens per message that hosted chat APIs add when no template is named (OpenAI's rule)."""
DEFAULT_FIRST_TURN_OUTPUT_TOKENS = 150.0
REFERENCE_RUN_PROMPT_WORDS = 27
"""Mean length of the reference run's final prompts (`reference_prompts.jsonl`), in words."""
MAX_SUMMED_STEPS = 512
"""Steps whose meta-prompt is counted one by one; longer runs are sampled (`sum_over_steps`)."""


def approximate_tokens(text: str) -> int:
    """The usual rule of thumb: one token per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """What an optimisation is expected to cost, split by model role."""

    scorer_calls: int
    optimizer_calls: int
    scorer_prompt_tokens: int
    scorer_completion_tokens: int
    optimizer_prompt_tokens: int
    optimizer_completion_tokens: int
    usd: float | None
    scorer_cached_prompt_tokens: int = 0
    optimizer_cached_prompt_tokens: int = 0
    batch: bool = False

    @property
    def cached_prompt_tokens(self) -> int:
        return self.scorer_cached_prompt_tokens + self.optimizer_cached_prompt_tokens

    @property
    def prompt_tokens(self) -> int:
        return self.scorer_prompt_tokens + self.optimizer_prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.scorer_completion_tokens + self.optimizer_completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer_calls": self.scorer_calls,
            "optimizer_calls": self.optimizer_calls,
            "scorer_prompt_tokens": self.scorer_prompt_tokens,
            "scorer_completion_tokens": self.scorer_completion_tokens,
            "optimizer_prompt_tokens": self.optimizer_prompt_tokens,
            "optimizer_completion_tokens": self.optimizer_completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "scorer_cached_prompt_tokens": self.scorer_cached_prompt_tokens,
            "optimizer_cached_prompt_tokens": self.optimizer_cached_prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "batch": self.batch,
            "usd": self.usd,
        }


def expected_output_tokens(lengths: Any, max_tokens: int, points: int = 4096) -> float:
    """E[min(L, max_tokens)] for an output-length distribution with a `sample(u)` method
    (e.g. `backends.simulated.config.OutputLengths`), by the midpoint rule over its quantiles."""
    total = sum(min(lengths.sample((i + 0.5) / points), max_tokens) for i in range(points))
    return total / points


def _filler(tokens: float, tokenizer: Tokenizer) -> str:
    """A text of about `tokens` tokens (exact for 4-characters-per-token tokenizers)."""
    count = max(0, round(tokens))
    text = "word " * count
    while count and tokenizer(text) > count:
        text = text[:-1]
    return text.strip()


class _Renderer:
    """Token counts of chat prompts as the scorer or optimizer will see them."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None) -> None:
        self.tokenizer = tokenizer
        # `server` is only known once the server runs: its chats are counted as chat calls.
        known = chat_template and chat_template != SERVER_TEMPLATE
        self._render = get_chat_template(chat_template) if known else None

    def tokens(self, messages: Sequence[Message]) -> int:
        if self._render is not None:
            return self.tokenizer(self._render(messages))
        return 2 + sum(
            CHAT_MESSAGE_OVERHEAD_TOKENS + self.tokenizer(content) for _, content in messages
        )

    def prompt_tokens(self, prompt: str | Sequence[Message]) -> int:
        """Tokens of a plain prompt or of a chat."""
        return self.tokenizer(prompt) if isinstance(prompt, str) else self.tokens(prompt)

    def shared_tokens(self, first: str | Sequence[Message], second: str | Sequence[Message]) -> int:
        """Tokens two prompts (both plain or both chats) begin with."""
        if isinstance(first, str) or isinstance(second, str):
            if not (isinstance(first, str) and isinstance(second, str)):
                return 0
            return self.tokenizer(shared_prefix(first, second))
        if self._render is not None:
            return self.tokenizer(shared_prefix(self._render(first), self._render(second)))
        shared = 2
        for (role, content), (other_role, other) in zip(first, second, strict=False):
            if role != other_role:
                break
            if content != other:
                return (
                    shared
                    + CHAT_MESSAGE_OVERHEAD_TOKENS
                    + self.tokenizer(shared_prefix(content, other))
                )
            shared += CHAT_MESSAGE_OVERHEAD_TOKENS + self.tokenizer(content)
        return shared


@dataclass(frozen=True, slots=True)
class _ChainCost:
    calls: int
    prompt_tokens: float
    completion_tokens: float
    cached_prompt_tokens: float = 0.0


def _chain_cost(
    task: Task,
    samples: Sequence[Sample],
    instruction: str,
    layout: PromptLayout,
    renderer: _Renderer,
    first_turn_output_tokens: float,
    follow_up_output_tokens: float,
    cache: PromptCacheRule = OPENAI_CACHE,
) -> _ChainCost:
    """Calls and tokens of scoring `instruction` on `samples` (both turns)."""
    calls = 0
    prompt = completion = cached = 0.0
    answer = _filler(first_turn_output_tokens, renderer.tokenizer)
    other = _other_instruction(instruction)
    previous: str | Sequence[Message] | None = None
    for sample in samples:
        first = build_prompt(instruction, sample, layout)
        first_tokens = renderer.prompt_tokens(first)
        shared = renderer.shared_tokens(first, build_prompt(other, sample, layout))
        if previous is not None:
            shared = max(shared, renderer.shared_tokens(previous, first))
        previous = first
        calls += 1
        prompt += first_tokens
        cached += cache.cached(shared, first_tokens)
        completion += first_turn_output_tokens
        if isinstance(first, str):
            continue
        follow_up = answer_turn(task, sample)
        if follow_up is not None:
            calls += 1
            second_tokens = renderer.tokens((*first, ("assistant", answer), ("user", follow_up)))
            prompt += second_tokens
            # The second turn repeats the first turn and its answer.
            cached += cache.cached(first_tokens + first_turn_output_tokens, second_tokens)
            completion += follow_up_output_tokens
    return _ChainCost(calls, prompt, completion, cached)


def _other_instruction(instruction: str) -> str:
    """An instruction that shares nothing with `instruction` but its length (to find the part of
    a prompt that does not depend on the instruction)."""
    return "".join("#" if ch != "#" else "%" for ch in instruction[:1]) + instruction[1:]


def estimate_optimization_cost(
    task: Task,
    *,
    steps: int,
    candidates: int,
    dev_size: int | None = None,
    test_size: int | None = None,
    layout: PromptLayout | None = None,
    initial_prompt: str = COT_PROMPT,
    test_prompts: int = 2,
    first_turn_max_tokens: int = 256,
    follow_up_max_tokens: int = 100,
    optimizer_max_tokens: int = 512,
    first_turn_output_tokens: float = DEFAULT_FIRST_TURN_OUTPUT_TOKENS,
    follow_up_output_tokens: float | None = None,
    candidate_prompt_words: float | None = None,
    optimizer_output_tokens: float | None = None,
    tokenizer: Tokenizer = approximate_tokens,
    chat_template: str | None = "chatml",
    optimizer_chat_template: str | None = None,
    multiple_choices: bool = True,
    config: OptimizerConfig | None = None,
    scorer_model: str | None = None,
    optimizer_model: str | None = None,
    prices: PriceTable | None = None,
    prompt_cache: PromptCacheRule = OPENAI_CACHE,
    batch: bool = False,
) -> CostEstimate:
    """The expected calls, tokens and dollars of one task's optimisation (see the module doc).

    `candidate_prompt_words` is the expected length of the prompts the optimizer will write; by
    default the mean of the initial prompt's and the reference run's final prompts' lengths
    (prompts grow from the first towards the last). `config` supplies the meta-prompt's settings
    (trajectory size, word budgets, format examples, score scale); `None` means GPO's defaults.
    `prompt_cache` is the provider's caching rule; `batch`: the test evaluations go through a
    Batch API (priced at its rates)."""
    config = config or OptimizerConfig()
    layout = layout or PromptLayout(position=config.instruction_position)
    dev = task.split("eval")[:dev_size]
    test = task.split("test")[:test_size] if test_prompts else ()
    renderer = _Renderer(tokenizer, chat_template)
    if follow_up_output_tokens is None:
        follow_up_output_tokens = _mean_target_tokens(dev, tokenizer)
    if candidate_prompt_words is None:
        candidate_prompt_words = (len(initial_prompt.split()) + REFERENCE_RUN_PROMPT_WORDS) / 2
    candidate = _candidate_text(initial_prompt, candidate_prompt_words)
    chains = functools.partial(
        _chain_cost,
        task,
        layout=layout,
        renderer=renderer,
        first_turn_output_tokens=min(first_turn_output_tokens, first_turn_max_tokens),
        follow_up_output_tokens=min(follow_up_output_tokens, follow_up_max_tokens),
        cache=prompt_cache,
    )
    dev_cost = _repeated(
        [(chains(dev, initial_prompt), 1), (chains(dev, candidate), steps * candidates)]
    )
    test_cost = _repeated(
        [
            (chains(test, initial_prompt), min(1, test_prompts)),
            (chains(test, candidate), max(0, test_prompts - 1)),
        ]
    )
    if optimizer_output_tokens is None:
        optimizer_output_tokens = tokenizer(candidate) + tokenizer(CANDIDATE_MARKERS)
    optimizer = _optimizer_cost(
        task,
        config,
        candidate,
        steps=steps,
        candidates=candidates,
        renderer=_Renderer(tokenizer, optimizer_chat_template or chat_template),
        output_tokens=min(optimizer_output_tokens, optimizer_max_tokens),
        multiple_choices=multiple_choices,
        cache=prompt_cache,
    )
    models = (scorer_model, optimizer_model)
    return _estimate((dev_cost, test_cost), optimizer, models, prices or PriceTable(), batch)


def _estimate(
    scorer_parts: tuple[_ChainCost, _ChainCost],
    optimizer: _ChainCost,
    models: tuple[str | None, str | None],
    prices: PriceTable,
    batch: bool,
) -> CostEstimate:
    """The estimate of the two roles' costs, in dollars where both models are priced; with
    `batch` the scorer's test evaluations (`scorer_parts[1]`) at batch rates."""
    dev, test = scorer_parts
    scorer = _repeated([(dev, 1), (test, 1)])
    usd = _dollars(
        prices,
        [
            (models[0], dev, "standard"),
            (models[0], test, "batch" if batch else "standard"),
            (models[1], optimizer, "standard"),
        ],
    )
    return CostEstimate(
        scorer_calls=scorer.calls,
        optimizer_calls=optimizer.calls,
        scorer_prompt_tokens=round(scorer.prompt_tokens),
        scorer_completion_tokens=round(scorer.completion_tokens),
        optimizer_prompt_tokens=round(optimizer.prompt_tokens),
        optimizer_completion_tokens=round(optimizer.completion_tokens),
        usd=usd,
        scorer_cached_prompt_tokens=round(scorer.cached_prompt_tokens),
        optimizer_cached_prompt_tokens=round(optimizer.cached_prompt_tokens),
        batch=batch,
    )


def _repeated(parts: Sequence[tuple[_ChainCost, int]]) -> _ChainCost:
    """The sum of each cost times how often it is paid."""
    return _ChainCost(
        sum(part.calls * times for part, times in parts),
        sum(part.prompt_tokens * times for part, times in parts),
        sum(part.completion_tokens * times for part, times in parts),
        sum(part.cached_prompt_tokens * times for part, times in parts),
    )


def _optimizer_cost(
    task: Task,
    config: OptimizerConfig,
    candidate: str,
    *,
    steps: int,
    candidates: int,
    renderer: _Renderer,
    output_tokens: float,
    multiple_choices: bool,
    cache: PromptCacheRule = OPENAI_CACHE,
) -> _ChainCost:
    """The optimizer's calls and tokens: one meta-prompt per step, rendered exactly, sent once
    with n = candidates where the endpoint honours n, else once per candidate. Cached: the
    header a step's meta-prompt shares with the previous step's, and the repeats."""
    examples = _format_examples(task, config)
    shown_count = 0 if config.direction in ("none", "summary") else config.trajectory_k
    rendered: dict[tuple[int, int | None, str], tuple[Message, ...]] = {}
    other = _other_instruction(candidate)

    def meta_prompt(step: int, text: str = candidate) -> tuple[Message, ...]:
        # A step's meta-prompt differs from another's only by the entries shown and the budget.
        shown = min(shown_count, step + 1)
        budget = config.schedule.budget(step + 1, steps)
        if (shown, budget, text) not in rendered:
            meta = render_update_prompt(
                style=config.update,
                current=TrajectoryEntry(step, text, 0.5),
                examples=examples,
                position=config.instruction_position,
                shown=[TrajectoryEntry(i, text, 0.5) for i in range(shown)],
                word_budget=budget,
                score_scale=config.score_scale,
            )
            rendered[shown, budget, text] = (("user", meta),)
        return rendered[shown, budget, text]

    def meta_prompt_tokens(step: int) -> int:
        return renderer.tokens(meta_prompt(step))

    def cached_tokens(step: int) -> float:
        tokens = meta_prompt_tokens(step)
        # Prompts differ from step to step: the header before the first prompt shown is shared.
        header = renderer.shared_tokens(meta_prompt(step), meta_prompt(step, other))
        first = cache.cached(header, tokens) if step else 0.0
        repeats = 0 if multiple_choices else (candidates - 1) * cache.cached(tokens, tokens)
        return first + repeats

    prompt = sum_over_steps(steps, meta_prompt_tokens, exact_head=shown_count)
    cached = sum_over_steps(steps, cached_tokens, exact_head=shown_count)
    calls_per_step = 1 if multiple_choices or candidates == 1 else candidates
    return _ChainCost(
        steps * calls_per_step,
        prompt * calls_per_step,
        steps * candidates * output_tokens,
        cached,
    )


def sum_over_steps(steps: int, value: Callable[[int], float], exact_head: int = 0) -> float:
    """The sum of `value(step)` over `steps` steps, in bounded work: exact for the first
    `exact_head` steps and for short runs, else the midpoint rule over `MAX_SUMMED_STEPS` equal
    strata (a meta-prompt changes little from one step to the next: a word budget by a word)."""
    head = min(steps, max(exact_head, 0), MAX_SUMMED_STEPS)
    total = float(sum(value(step) for step in range(head)))
    rest = steps - head
    if rest <= MAX_SUMMED_STEPS:
        return total + sum(value(step) for step in range(head, steps))
    width = rest / MAX_SUMMED_STEPS
    strata = (head + min(rest - 1, int((i + 0.5) * width)) for i in range(MAX_SUMMED_STEPS))
    return total + width * sum(value(step) for step in strata)


def estimate_for_config(
    task: Task,
    config: OptimizerConfig,
    *,
    layout: PromptLayout | None = None,
    **options: Any,
) -> CostEstimate:
    """`estimate_optimization_cost` with steps, sizes and lengths read from an OptimizerConfig
    (what `gpo optimize --dry-run` prints); `options` pass through (tokenizer, models, ...)."""
    if not config.optimize:
        steps = 0
        candidates = 0
    else:
        train = task.split("train")[: config.train_size]
        steps = total_steps(config, len(train))
        candidates = config.candidates
    test_prompts = 0
    if config.evaluate_test:
        test_prompts = 1 if not config.optimize else 2 + (steps if config.test_every_step else 0)
    return estimate_optimization_cost(
        task,
        steps=steps,
        candidates=candidates,
        dev_size=config.dev_size,
        test_size=config.test_size,
        layout=layout,
        initial_prompt=config.initial_prompt,
        test_prompts=test_prompts,
        optimizer_max_tokens=config.optimizer_max_tokens,
        config=config,
        **options,
    )


def estimate_evaluation_cost(
    task: Task,
    prompts: Sequence[str],
    *,
    splits: Sequence[str] = ("test",),
    limit: int | None = None,
    layout: PromptLayout | None = None,
    first_turn_max_tokens: int = 256,
    follow_up_max_tokens: int = 100,
    first_turn_output_tokens: float = DEFAULT_FIRST_TURN_OUTPUT_TOKENS,
    tokenizer: Tokenizer = approximate_tokens,
    chat_template: str | None = None,
    scorer_model: str | None = None,
    prices: PriceTable | None = None,
    prompt_cache: PromptCacheRule = OPENAI_CACHE,
    batch: bool = False,
) -> CostEstimate:
    """The expected calls, tokens and dollars of `gpo eval`: every prompt on every split's first
    `limit` samples (both turns), cached prefixes counted; `batch`: all of it at batch rates."""
    renderer = _Renderer(tokenizer, chat_template)
    layout = layout or PromptLayout()
    parts = []
    for split in splits:
        samples = task.split(split)[:limit]
        follow_up = _mean_target_tokens(samples, tokenizer)
        for prompt in prompts:
            chain = _chain_cost(
                task,
                samples,
                prompt,
                layout,
                renderer,
                min(first_turn_output_tokens, first_turn_max_tokens),
                min(follow_up, follow_up_max_tokens),
                prompt_cache,
            )
            parts.append((chain, 1))
    nothing = _ChainCost(0, 0.0, 0.0)
    return _estimate(
        (nothing, _repeated(parts)),
        nothing,
        (scorer_model, None),
        prices or PriceTable(),
        batch,
    )


def _mean_target_tokens(samples: Sequence[Sample], tokenizer: Tokenizer) -> float:
    """The expected length of a pinned second answer: the gold answers' mean, in tokens."""
    targets = [sample.target for sample in samples] or [""]
    return sum(max(1, tokenizer(t)) for t in targets) / len(targets)


def _candidate_text(initial_prompt: str, words: float) -> str:
    """A stand-in for a future candidate: the initial prompt's words, repeated to length."""
    base = initial_prompt.split() or ["Answer"]
    count = max(1, round(words))
    return " ".join(base[i % len(base)] for i in range(count))


def _format_examples(task: Task, config: OptimizerConfig) -> list[FormatExample]:
    """The format examples the loop will draw for this task (same seed, same draws)."""
    format_all = task.split("format")
    indices = draw_format_indices(
        config.seed,
        (len(task.split("train")), len(task.split("eval")), len(task.split("test"))),
        len(format_all),
        config.format_examples,
    )
    return [FormatExample(format_all[i].input, format_all[i].target) for i in indices]


def _dollars(
    prices: PriceTable, parts: Sequence[tuple[str | None, _ChainCost, str]]
) -> float | None:
    total = 0.0
    for model, cost, billing in parts:
        if model is None:
            continue
        price = prices.price(model)
        if price is None:
            return None
        total += price.token_cost(
            round(cost.prompt_tokens),
            round(cost.completion_tokens),
            round(cost.cached_prompt_tokens),
            billing=billing,
        )
    return total if any(model is not None for model, _, _ in parts) else None
