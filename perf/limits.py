"""The server's theoretical limit for a workload: the least time the simulated H100 needs for its
rounds (each fully queued at t = 0, computed offline with the server's own step model and
answers), or, on a rate-limited API, what "% of limit" means; none on a warm cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends.chat_template import get_chat_template
from benchmarks import PromptLayout, Task, answer_turn, build_prompt
from engine.evaluator import FIRST_TURN_PARAMS, FOLLOW_UP_PARAMS
from perf.rounds import RoundPlan, plan_rounds
from perf.servers import Endpoint, ServerHandle
from perf.workloads import Workload


def expected_transcript_workload(
    config: Any, rounds: Sequence[RoundPlan], task: Task, answer_key: dict[str, str]
) -> list[list[tuple[str, int, str]]]:
    """Per round, (rendered prompt, output tokens, answer) in the order FCFS sees them at best.

    The answers come from the server's own synthesizer, so the second turn's prompt holds the
    very first answer the server will give. First turns come before second turns.
    """
    from backends.simulated.answer_key import AnswerKey
    from backends.simulated.answers import AnswerSynthesizer

    synthesizer = AnswerSynthesizer(config.output_lengths, AnswerKey(answer_key))
    render = get_chat_template("chatml")
    layout = PromptLayout()

    def answer(prompt: str, max_tokens: int) -> tuple[str, int]:
        generated = synthesizer.generate(
            synthesizer.plan(prompt), temperature=0.0, seed=None, choice=0, max_tokens=max_tokens
        )
        return generated.text, max(1, generated.completion_tokens)

    per_round = []
    for plan in rounds:
        firsts: list[tuple[str, int, str]] = []
        seconds: list[tuple[str, int, str]] = []
        for group in plan.groups:
            for _, sample in group.chains:
                messages = build_prompt(group.prompt, sample, layout)
                assert not isinstance(messages, str)
                rendered = render(messages)
                text, tokens = answer(rendered, FIRST_TURN_PARAMS.max_tokens)
                firsts.append((rendered, tokens, text))
                follow_up = answer_turn(task, sample)
                if follow_up is not None:
                    conversation = (*messages, ("assistant", text), ("user", follow_up))
                    second = render(conversation)
                    final, final_tokens = answer(second, FOLLOW_UP_PARAMS.max_tokens)
                    seconds.append((second, final_tokens, final))
        per_round.append(firsts + seconds)
    return per_round


def theoretical_makespan_s(
    config: Any, rounds: Sequence[RoundPlan], task: Task, answer_key: dict[str, str]
) -> float:
    """Least real seconds the server needs: rounds in sequence, each fully queued at t = 0.

    The prefix cache is carried from round to round in submission order, as the live server's is;
    answers' decoded blocks enter it, so second turns find the first turn's prompt and answer.
    """
    from backends.simulated import analyse_workload, workload_from_prompts

    per_round = expected_transcript_workload(config, rounds, task, answer_key)
    flat = [item for items in per_round for item in items]
    items = workload_from_prompts(
        config, [p for p, _, _ in flat], [t for _, t, _ in flat], [a for _, _, a in flat]
    )
    total = 0.0
    start = 0
    for round_items in per_round:
        chunk = items[start : start + len(round_items)]
        start += len(round_items)
        if chunk:
            total += analyse_workload(config, chunk).makespan_s
    return total


def workload_limit(
    workload: Workload,
    server: ServerHandle | None,
    endpoint: Endpoint,
    task: Task,
    answer_key: dict[str, str],
) -> tuple[float | None, str]:
    """(theoretical limit in seconds or None, the table's note on what the limit is)."""
    if workload.warm_from is not None:
        return None, "a warm cache leaves the server no work: no limit applies"
    if server is not None and workload.server == "h100":
        limit_s = theoretical_makespan_s(
            server.config, plan_rounds(workload, task), task, answer_key
        )
        return limit_s, (
            f"theoretical limit {limit_s:.2f} s = "
            f"{workload.scored_prompts / limit_s:,.0f} scored prompts/s "
            "(rounds in sequence, each fully queued at t = 0)"
        )
    if endpoint.api_limits is not None:
        limits = endpoint.api_limits
        return None, (
            "% of limit = the workload's requests (one per chat turn) / requests "
            "the limits allowed during the run "
            f"({limits.request_burst:g} + {limits.requests_per_minute} per simulated "
            "minute)"
        )
    return None, ""
