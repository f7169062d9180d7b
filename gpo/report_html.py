"""`gpo report --html`: one self-contained HTML page per run directory or evaluation folder.

The page needs nothing at view time: the CSS is inline, the plot an inline base64 PNG, and
there is no script at all; a Content-Security-Policy forbids loading anything else, so the page
can be opened offline, mailed or archived. Prompts and model answers are untrusted text: the
Jinja2 template (`gpo/templates/report.html.j2`) escapes every value (autoescape on), so a
prompt holding `<script>` is shown as text, never run. Big runs stay usable: the trajectory,
meta-prompts and per-sample answers of each task sit in collapsed `<details>` sections.
What a page shows is gathered by `gpo/report_html_data.py`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import jinja2

from gpo.report_html_data import RunPage, load_page
from gpo.report_plot import png_bytes

HTML_NAME = "report.html"
TEMPLATE = "report.html.j2"


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage with `digits` decimals; "-" when unknown."""
    return "-" if value is None else f"{100 * value:.{digits}f}"


def dollars(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def count(value: int | float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


@cache
def environment() -> jinja2.Environment:
    """The template environment: autoescape on for every template, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gpo", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=percent, usd=dollars, count=count)
    return env


def plot_data_uri(page: RunPage) -> str | None:
    """The score curve of an optimize run as a `data:` URI (None for an evaluation)."""
    if page.report is None or not page.report.curves:
        return None
    encoded = base64.b64encode(png_bytes([page.report])).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def render_page(page: RunPage) -> str:
    """The HTML text of one run's page."""
    return environment().get_template(TEMPLATE).render(page=page, plot=plot_data_uri(page))


def default_out(path: Path) -> Path:
    return Path(path) / HTML_NAME


def write_html_report(paths: Sequence[str | Path], out: Path | None = None) -> list[Path]:
    """Write one page per run (`RUN/report.html`, or `out` when there is one run).

    With several runs and `out`, `out` is a folder that receives `NAME.html` per run.
    """
    pages = [load_page(path) for path in paths]
    written = []
    for page in pages:
        target = _target(page, out, several=len(pages) > 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_page(page), encoding="utf-8")
        written.append(target)
    return written


def _target(page: RunPage, out: Path | None, *, several: bool) -> Path:
    if out is None:
        return default_out(page.path)
    if several:
        return Path(out) / f"{page.path.name}.html"
    return Path(out)
