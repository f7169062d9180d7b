"""Text that is not UTF-8 gets one clear error naming where it is, never a traceback.

A command-line argument that is not UTF-8 reaches Python as a str with lone surrogates, which
cannot be hashed into a cache key or written to JSON; a file that is not UTF-8 raises
`UnicodeDecodeError` when read. Each case runs the `gpo` CLI as a subprocess against a simulated
server and expects exit status 2, one `error:` line naming the flag (and, for a file, its path,
line and byte offset), no traceback and no request sent.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from backends.simulated import SimulatedServerProcess, metric_total
from tests.gpo_process import answered_server, eval_args, optimize_args, run_gpo

# subprocess passes a str argument through os.fsencode: "\udcff" reaches gpo as the byte 0xff.
NOT_UTF8_ARGUMENT = "Think step by step.\udcff"


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    with answered_server(50.0) as running:
        yield running


def generation_requests(server: SimulatedServerProcess) -> float:
    metrics = server.metrics()
    return sum(
        metric_total(metrics, "sim_http_requests_total", endpoint=endpoint)
        for endpoint in ("/v1/completions", "/v1/chat/completions")
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a run that exited with status 2 and no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_prompt_flag_that_is_not_utf8_is_named(server, tmp_path) -> None:
    before = generation_requests(server)
    out = tmp_path / "out"
    done = run_gpo(*eval_args(server.url, out, "--prompt", NOT_UTF8_ARGUMENT))
    line = error_line(done)
    assert "--prompt" in line and "UTF-8" in line and "0xff" in line, line
    assert generation_requests(server) == before
    assert not (out / "records.jsonl").exists()


def test_an_initial_prompt_that_is_not_utf8_is_named_before_a_run_directory(
    server, tmp_path
) -> None:
    before = generation_requests(server)
    run_dir = tmp_path / "run"
    url = f"{server.url}/v1"
    done = run_gpo(*optimize_args(url, run_dir, "--initial-prompt", NOT_UTF8_ARGUMENT))
    line = error_line(done)
    assert "--initial-prompt" in line and "UTF-8" in line, line
    assert generation_requests(server) == before
    assert not run_dir.exists()


def test_a_task_name_that_is_not_utf8_is_named(server, tmp_path) -> None:
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--task", "bbh/navigate\udce9"))
    line = error_line(done)
    assert "--task" in line and "UTF-8" in line and "0xe9" in line, line


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_prompts_file_that_is_not_utf8_is_named_with_its_line(server, tmp_path, suffix) -> None:
    prompts = tmp_path / f"prompts{suffix}"
    first = b"Think step by step." if suffix == ".txt" else b'{"prompt": "Think step by step."}'
    second = b"R\xe9fl\xe9chis." if suffix == ".txt" else b'{"prompt": "R\xe9fl\xe9chis."}'
    prompts.write_bytes(first + b"\n" + second + b"\n")
    offset = len(first) + 1 + second.index(b"\xe9")
    before = generation_requests(server)
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--prompts-file", str(prompts)))
    line = error_line(done)
    assert "--prompts-file" in line and str(prompts) in line, line
    assert "line 2" in line and f"byte offset {offset}" in line and "UTF-8" in line, line
    assert generation_requests(server) == before


def test_an_api_key_file_that_is_not_utf8_is_named_without_its_bytes(server, tmp_path) -> None:
    key_file = tmp_path / "scorer.key"
    key_file.write_bytes(b"sk-secret\xfe\xfdkey\n")
    done = run_gpo(*eval_args(server.url, tmp_path / "out", "--scorer-api-key-file", str(key_file)))
    line = error_line(done)
    assert "--scorer-api-key-file" in line and str(key_file) in line and "UTF-8" in line, line
    assert "secret" not in done.stderr and "0xfe" not in done.stderr
