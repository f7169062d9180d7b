"""`gpo report --html`: a self-contained page per run, checked in a real browser.

The browser test renders the page in headless Chromium (Debian's `chromium` package, which CI
installs) and reads the DOM after the page has loaded; it fails, saying how to install it, when
Chromium is missing. The other tests read the HTML text: untrusted prompts shown as text, nothing
loaded from the network, evaluation folders and unfinished runs rendered.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from backends.protocol import Message, SamplingParams
from benchmarks import PromptLayout
from engine.engine import Engine, EngineConfig
from engine.evaluator import EvaluatorSettings
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from gpo.cli import main
from gpo.eval_job import EvalJob, run_eval_job
from gpo.ledger_view import run_totals
from gpo.methods import config_for_method
from gpo.report_html import write_html_report
from gpo.run_dir import RunDirectory, read_json
from tests.gpo_fakes import DATA_DIR, FakeOptimizer, FakeScorer
from tests.test_gpo_optimizer import SMALL, optimize

# A candidate that would mark the page if the browser ran it.
SCRIPT = "<script>document.body.setAttribute('data-pwned','1')</script>"
SCRIPTED_PROMPT = f"{SCRIPT} Track each step & answer <b>yes</b> or no."
INSTALL = "apt-get update && apt-get install -y chromium"


class ScriptingOptimizer(FakeOptimizer):
    """The fake optimizer, whose first candidate of every step carries a script tag."""

    def answer(self, messages: Sequence[Message], params: SamplingParams, choice: int) -> str:
        if choice == 0 and messages[-1][1].startswith("Your task is to write a prompt"):
            return f"Here it is.\n<START>{SCRIPTED_PROMPT}<END>"
        return super().answer(messages, params, choice)


async def scripted_run(path: Path) -> dict:
    config = config_for_method("gpo", **SMALL)
    summary, *_ = await optimize(path, config, optimizer_backend=ScriptingOptimizer())
    return summary


def chromium() -> str:
    """The Chromium binary; a missing one fails the test with how to install it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "the HTML report test needs headless Chromium, which is not installed: install Debian's "
        f"package with `{INSTALL}` (the README's test command and .ci/run do this)"
    )


def rendered_dom(page: Path, profile: Path) -> str:
    """The page's DOM after load, as headless Chromium serialises it (two tries: a loaded CPU
    can make its first start time out)."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    failure = ""
    for _ in range(2):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            failure = "timed out after 180 s"
            continue
        if done.returncode == 0 and "</html>" in done.stdout:
            return done.stdout
        failure = f"exit {done.returncode}: {done.stderr[-2000:]}"
    pytest.fail(f"headless Chromium could not render {page}: {failure}")


def section(dom: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', dom, re.DOTALL)
    assert match, f"no section {section_id} in the page"
    return match.group(1)


async def test_html_report_in_chromium_shows_final_scores_cost_and_candidates(
    tmp_path: Path,
) -> None:
    summary = await scripted_run(tmp_path / "run")
    (page,) = write_html_report([tmp_path / "run"])
    assert page == tmp_path / "run" / "report.html"
    dom = rendered_dom(page, tmp_path / "profile")

    scores = section(dom, "scores")
    for task in summary["tasks"]:
        row = next(r for r in scores.split("<tr>") if f"<td>{task['task']}</td>" in r)
        for key in ("final_dev", "final_test", "initial_test"):
            assert f"{100 * task[key]:.2f}" in row, (key, row)
    ledgers = RunDirectory(tmp_path / "run").recorded_ledgers()
    cost = run_totals(ledgers)["cost_usd"]
    assert cost > 0
    assert f"Cost: <b>${cost:.4f}</b>" in scores

    candidates = RunDirectory(tmp_path / "run").task("bbh/navigate").read_log("candidates")
    plain = [row["prompt"] for row in candidates if "<" not in row["prompt"]]
    assert plain and all(prompt in dom for prompt in plain)
    # The scripted candidate is on the page as text, and did not run.
    assert "&lt;script&gt;document.body.setAttribute('data-pwned','1')&lt;/script&gt;" in dom
    assert "data-pwned=" not in dom
    assert "<script" not in dom
    assert 'class="mark chosen"' in dom  # each step's chosen candidate is marked


async def test_html_report_shows_untrusted_text_as_text_and_loads_nothing(
    tmp_path: Path,
) -> None:
    await scripted_run(tmp_path / "run")
    (page,) = write_html_report([tmp_path / "run"], tmp_path / "out" / "page.html")
    text = page.read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text and "&lt;b&gt;yes&lt;/b&gt;" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<link" not in text and "@import" not in text
    assert 'src="data:image/png;base64,' in text
    # Big runs stay readable: the long sections start collapsed.
    assert "<details" in text and "<details open" not in text


async def test_html_report_of_an_evaluation_shows_scores_and_answers(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    prices = PriceTable({"fake-scorer": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)})
    engine = Engine(FakeScorer(("bbh/navigate",)), EngineConfig(), ledger=Ledger(prices))
    job = EvalJob(
        {"bbh/navigate": ["Let's think step by step.", SCRIPTED_PROMPT]},
        limit=8,
        data_dir=str(DATA_DIR),
        settings=EvaluatorSettings(layout=PromptLayout()),
    )
    async with engine:
        summary = await run_eval_job(job, engine, out)
    assert main(["report", "--html", str(out)]) == 0
    text = (out / "report.html").read_text()
    for row in summary["rows"]:
        assert f"{100 * row['score']:.2f}" in text
    assert f"${summary['ledger']['totals']['cost_usd']:.4f}" in text
    records = [r for r in read_records(out) if r["prompt_index"] == 0]
    assert all(f"<td>{r['sample_id']}</td>" in text for r in records)
    assert "correct" in text and "wrong" in text
    assert "<script" not in text.lower()
    # the PNG and Markdown report has nothing to draw for an evaluation: it says what does
    assert main(["report", str(out)]) == 2


def read_records(folder: Path) -> list[dict]:
    import orjson

    return [orjson.loads(line) for line in (folder / "records.jsonl").read_bytes().splitlines()]


async def test_html_report_of_an_unfinished_run_and_of_several_runs(tmp_path: Path) -> None:
    await scripted_run(tmp_path / "a")
    await scripted_run(tmp_path / "b")
    # a task still running: its result not written yet
    (tmp_path / "b" / "tasks" / "bbh__navigate" / "result.json").unlink()
    pages = write_html_report([tmp_path / "a", tmp_path / "b"], tmp_path / "pages")
    assert pages == [tmp_path / "pages" / "a.html", tmp_path / "pages" / "b.html"]
    text = pages[1].read_text()
    assert "<td>running</td>" in text and "(not chosen yet)" in text
    result = read_json(tmp_path / "a" / "tasks" / "bbh__navigate" / "result.json")
    assert f"final prompt from step {result['final_step'] + 1}" in pages[0].read_text()


def test_html_report_of_a_folder_that_is_no_run_names_it(tmp_path: Path, capsys) -> None:
    assert main(["report", "--html", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "neither a run directory" in error
