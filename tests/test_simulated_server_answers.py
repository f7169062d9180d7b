"""Plausible answers: an answer key the optimizer can climb, two-turn agreement, meta-prompts
(recognised by the request's X-GPO-Purpose header, never by their wording)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import aiohttp
import orjson
import pytest

from backends.chat_template import render_chatml
from backends.protocol import PURPOSE_HEADER, Purpose
from backends.simulated import (
    SimulatedServer,
    SimulatedServerConfig,
    correctness_probability,
    is_correct,
)
from backends.simulated.answer_key import AnswerKey, plausible_wrong_answer

DATA_DIR = Path(
    os.environ.get("GPO_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
TASKS = (
    "bbh/navigate",
    "bbh/boolean_expressions",
    "bbh/object_counting",
    "bbh/word_sorting",
    "bbh/dyck_languages",
    "mmlu/astronomy",
    "mmlu/anatomy",
    "gsm8k",
    "wsc",
)
SECOND_TURN = "Therefore, summarize your final answer with just one answer in your response."
ANSWER = re.compile(r"So the answer is (.+?)\.?$")
CLIMBED = (
    "Read the question carefully, check each option step by step, verify your reasoning, "
    "and give the final answer clearly."
)


def load_questions() -> list[tuple[str, str]]:
    items = []
    for task in TASKS:
        for line in (DATA_DIR / task / "eval.jsonl").read_text().splitlines():
            record = orjson.loads(line)
            gold = record.get("target", record.get("output"))
            items.append((record["input"].strip(), str(gold).strip()))
    return items


@pytest.fixture(scope="module")
def questions() -> list[tuple[str, str]]:
    return load_questions()


@pytest.fixture
async def server(questions):
    config = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(config, answer_key=dict(questions)) as running:
        yield running


async def complete(
    url: str, prompts: list[str], purpose: str | None = None, **settings
) -> list[str]:
    payload = {"prompt": prompts, "max_tokens": 1024, "temperature": 0, **settings}
    headers = {PURPOSE_HEADER: purpose} if purpose is not None else None
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            f"{url}/v1/completions", data=orjson.dumps(payload), headers=headers
        ) as response,
    ):
        assert response.status == 200
        body = orjson.loads(await response.read())
    return [choice["text"] for choice in body["choices"]]


async def chat(url: str, text: str, purpose: str | None = None) -> tuple[int, str]:
    """One /v1/chat/completions call: (status, answer text or error body)."""
    payload = {"messages": [{"role": "user", "content": text}], "max_tokens": 1024}
    headers = {PURPOSE_HEADER: purpose} if purpose is not None else None
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            f"{url}/v1/chat/completions", data=orjson.dumps(payload), headers=headers
        ) as response,
    ):
        body = orjson.loads(await response.read())
        if response.status != 200:
            return response.status, str(body)
    return 200, body["choices"][0]["message"]["content"]


def first_turn(question: str, instruction: str) -> list[tuple[str, str]]:
    return [("user", f"{question}\n{instruction}")]


@pytest.mark.parametrize("instruction", ["", "Let's think step by step.", CLIMBED])
def test_right_answers_track_the_instruction_probability(questions, instruction):
    p = correctness_probability(instruction)
    share = sum(is_correct(instruction, q) for q, _ in questions) / len(questions)
    assert 0.2 <= p <= 0.9
    assert share == pytest.approx(p, abs=0.08)


def test_rewarded_instructions_score_higher():
    plain = correctness_probability("Let's think step by step.")
    assert correctness_probability("") < plain < correctness_probability(CLIMBED)
    assert correctness_probability(CLIMBED) - plain > 0.25


@pytest.mark.parametrize("instruction", ["Let's think step by step.", CLIMBED])
async def test_turns_agree_and_correctness_is_exactly_the_planned_one(
    server, questions, instruction
):
    conversations = [first_turn(q, instruction) for q, _ in questions]
    first = await complete(server.url, [render_chatml(c) for c in conversations])
    answers = []
    for text in first:
        found = ANSWER.search(text)
        assert found is not None, text[-80:]
        answers.append(found.group(1))
    followups = [
        [*conversation, ("assistant", text), ("user", SECOND_TURN)]
        for conversation, text in zip(conversations, first, strict=True)
    ]
    second = await complete(server.url, [render_chatml(c) for c in followups], max_tokens=100)
    assert second == answers
    right = [answer == gold for answer, (_, gold) in zip(answers, questions, strict=True)]
    assert right == [is_correct(instruction, q) for q, _ in questions]
    for answer, (question, gold) in zip(answers, questions, strict=True):
        if re.fullmatch(r"\([A-Z]\)", gold):
            assert re.fullmatch(r"\([A-Z]\)", answer) and answer in question
        elif gold in ("Yes", "No", "True", "False"):
            assert answer in ("Yes", "No", "True", "False")
        elif gold.lstrip("-").isdigit():
            assert answer.lstrip("-").isdigit()


async def test_answers_do_not_depend_on_seed_or_choice_for_correctness(server, questions):
    question, _ = questions[0]
    prompt = render_chatml(first_turn(question, "Let's think step by step."))
    texts = await complete(server.url, [prompt], n=4, temperature=1.0, seed=11)
    finals = {ANSWER.search(t).group(1) for t in texts}
    assert len(set(texts)) > 1
    assert len(finals) == 1


async def test_unknown_questions_still_get_a_parseable_answer(server):
    prompt = render_chatml([("user", "Which is heavier?\n(A) a feather\n(B) a brick")])
    [text] = await complete(server.url, [prompt])
    found = ANSWER.search(text)
    assert found is not None and found.group(1) in ("(A)", "(B)")


def test_plausible_wrong_answers_keep_the_kind():
    assert plausible_wrong_answer("(B)", "x\n(A) a\n(B) b\n(C) c", 0) in ("(A)", "(C)")
    assert plausible_wrong_answer("Yes", "", 0) == "No"
    assert plausible_wrong_answer("False", "", 0) == "True"
    assert plausible_wrong_answer("valid", "", 0) == "invalid"
    assert plausible_wrong_answer("16", "", 0) == "17"
    assert plausible_wrong_answer("apple banana cherry", "", 0) == "cherry banana apple"
    assert plausible_wrong_answer("] )", "", 0) == "]"
    assert plausible_wrong_answer(">", "", 1) in (")", "]", "}")


def test_answer_key_finds_the_longest_question_inside_a_prompt():
    key = AnswerKey({"Same first line\nsecond part A": "A", "Same first line\nsecond part AB": "B"})
    assert key.find("intro\nSame first line\nsecond part AB\nLet's think.") == (
        "Same first line\nsecond part AB",
        "B",
    )
    assert key.find("intro\nSame first line\nsecond part A\nok") == (
        "Same first line\nsecond part A",
        "A",
    )
    assert key.find("nothing known here") is None


def meta_prompt(scored: list[tuple[str, float]], current: str, examples, budget: int) -> str:
    blocks = "".join(f"Prompt: {p}\nScore: {s}\n" for p, s in scored)
    shown = "\n\n".join(f"Input:\n{q}\n<Prompt>\nOutput:\n{a}" for q, a in examples)
    return (
        "Your task is to write a prompt to replace <Prompt>.\n\n"
        "Below are the previous prompts with their scores. The score ranges from 0 to 100, and "
        "higher scores indicate better quality.\n\n"
        f"{blocks}The current prompt is:\n{current}\n\n"
        "The following exemplars show how to apply the prompt: you replace <Prompt> in each "
        "input with your new prompt, then read the input and give an output. We say your output "
        "is wrong if it is different from the given output, and we say your output is correct if "
        "they are the same.\n\n"
        f"{shown}\n\n"
        "Carefully analyze the previous prompts and their scores, and write a new improved prompt "
        "to replace <Prompt> at the end of the question in the task examples.\n"
        f"You are allowed to change up to {budget} words in the current prompt.\n\n"
        "Wrap the new prompt with <START> and <END>."
    )


async def test_meta_prompt_candidates_are_wrapped_varied_and_repeatable(server, questions):
    text = meta_prompt(
        [("Let's think step by step.", 41), ("Answer the question.", 35)],
        "Let's think step by step.",
        questions[:3],
        budget=10,
    )
    prompt = render_chatml([("user", text)])
    settings = {"n": 8, "temperature": 1.0, "seed": 0, "max_tokens": 512}
    settings["purpose"] = Purpose.NEW_PROMPT
    first = await complete(server.url, [prompt], **settings)
    again = await complete(server.url, [prompt], **settings)
    other = await complete(server.url, [prompt], **{**settings, "seed": 1})
    assert first == again
    assert first != other
    candidates = []
    for output in first:
        found = re.fullmatch(r"<START>(.+)<END>", output)
        assert found is not None, output
        candidates.append(found.group(1))
    assert len(set(candidates)) >= 5
    for candidate in candidates:
        assert candidate[0].isupper()
        assert "<Prompt>" not in candidate and "Input:" not in candidate


async def test_reflection_prompt_gets_a_wrapped_reason(server):
    text = (
        "Your task is to point out the problems with the current prompt based on the wrong "
        "examples.\nGive a reason why the prompt could have gotten these examples wrong. "
        "Wrap the reason with <START> and <END>."
    )
    [output] = await complete(server.url, [render_chatml([("user", text)])], Purpose.REFLECTION)
    assert re.fullmatch(r"<START>The prompt .+\.<END>", output)


async def test_a_meta_prompt_without_a_purpose_is_answered_as_an_ordinary_chat(server, questions):
    """The wording of a meta-prompt decides nothing: without the header it is a plain question."""
    update = meta_prompt([("Let's think step by step.", 41)], "Be brief.", questions[:3], 10)
    reflection = (
        "Your task is to point out the problems with the current prompt.\n"
        "Give a reason why the prompt could have gotten these examples wrong. "
        "Wrap the reason with <START> and <END>."
    )
    for text in (update, reflection):
        status, answer = await chat(server.url, text)
        assert status == 200
        assert "<START>" not in answer and "<END>" not in answer
        assert ANSWER.search(answer) is not None, answer[-80:]
        [completed] = await complete(server.url, [render_chatml([("user", text)])])
        assert "<START>" not in completed and ANSWER.search(completed) is not None


async def test_the_purpose_alone_makes_a_meta_prompt(server):
    status, answer = await chat(server.url, "Hello there.", Purpose.NEW_PROMPT)
    assert status == 200 and re.fullmatch(r"<START>.+<END>", answer)
    status, answer = await chat(server.url, "Hello there.", Purpose.REFLECTION)
    assert status == 200 and re.fullmatch(r"<START>The prompt .+\.<END>", answer)
    counted = server.counters.purposes
    assert counted["new-prompt"] == 1 and counted["reflection"] == 1


async def test_an_unknown_purpose_is_refused_with_a_clear_400(server):
    status, body = await chat(server.url, "Hello there.", "new_prompt")
    assert status == 400
    assert PURPOSE_HEADER in body and "new-prompt" in body and "reflection" in body


async def test_a_greedy_optimizer_climbs_against_the_simulated_scorer(server, questions):
    """A few steps of generate-and-select raise the dev score: the landscape is climbable."""
    dev = questions[:60]

    async def score(instruction: str) -> float:
        prompts = [render_chatml(first_turn(q, instruction)) for q, _ in dev]
        texts = await complete(server.url, prompts)
        answers = [ANSWER.search(t).group(1) for t in texts]
        return sum(a == g for a, (_, g) in zip(answers, dev, strict=True)) / len(dev)

    trajectory = [("Let's think step by step.", await score("Let's think step by step."))]
    for step in range(6):
        best_prompt = max(trajectory, key=lambda item: item[1])[0]
        text = meta_prompt(
            [(p, round(100 * s)) for p, s in trajectory[-3:]], best_prompt, dev[:3], budget=20
        )
        outputs = await complete(
            server.url,
            [render_chatml([("user", text)])],
            purpose=Purpose.NEW_PROMPT,
            n=8,
            temperature=1.0,
            seed=step,
            max_tokens=512,
        )
        candidates = {re.fullmatch(r"<START>(.+)<END>", o).group(1) for o in outputs}
        scored = [(c, await score(c)) for c in candidates]
        trajectory.append(max(scored, key=lambda item: item[1]))
    assert max(s for _, s in trajectory) >= trajectory[0][1] + 0.1
