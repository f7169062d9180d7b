"""Issue 13's bar against the real vLLM CPU server: `/tokenize` of the messages equals
`/tokenize` of the client's rendering (token ids) on 48 bbh/navigate chats, and a wrong template
is caught.

The server is the converted SmolLM2 that `gpo setup-local --vllm` makes (branch h/vllm), started
from its own environment (`GPO_VLLM_HOME/vllm-venv`, default ~/.cache/gpo-engine). The fixture
is named `vllm` and gated by GPO_SKIP_REAL_MODEL like tests/test_vllm_cpu.py's; once both
branches are merged it should move to a conftest and be shared (one start per session).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path

import pytest

from backends.chat_template import load_chat_template
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities
from backends.server_rendering import check_rendering
from tests.test_chat_template_llamacpp import navigate_chats

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.skipif(
        os.environ.get("GPO_SKIP_REAL_MODEL") == "1", reason="GPO_SKIP_REAL_MODEL=1"
    ),
]
HOME = Path(os.environ.get("GPO_VLLM_HOME", Path.home() / ".cache" / "gpo-engine")).expanduser()
PYTHON = HOME / "vllm-venv" / "bin" / "python"
MODEL_DIR = HOME / "models" / "SmolLM2-135M-Instruct"
NAME = "smollm2-vllm"
START_DEADLINE_S = 600.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as answer:
            return answer.status == 200
    except (OSError, HTTPException, ValueError):
        return False


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The vLLM CPU build serving the converted SmolLM2; its root URL."""
    assert PYTHON.is_file() and (MODEL_DIR / "config.json").is_file(), (
        f"no vLLM CPU install at {PYTHON.parent.parent} or no model at {MODEL_DIR}: run "
        "`gpo setup-local --vllm`"
    )
    port = _free_port()
    log = (tmp_path_factory.mktemp("vllm") / "vllm.log").open("wb")
    argv = [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR),
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", NAME,
            "--max-model-len", "2048", "--dtype", "bfloat16"]  # fmt: skip
    environment = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not _ready(url) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        assert _ready(url), f"vLLM did not answer within {START_DEADLINE_S:.0f} s ({log.name})"
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=60)
        log.close()


async def test_tokenize_of_messages_equals_tokenize_of_the_rendering(vllm) -> None:
    chats = navigate_chats()
    capabilities = Capabilities(prompt_lists=True, chat=True, completions=True)
    backend = OpenAICompatibleBackend(f"{vllm}/v1", NAME, capabilities=capabilities)
    template = load_chat_template(str(MODEL_DIR))
    wrong = load_chat_template("chatml")
    try:
        verdicts = [
            await check_rendering(backend, chat, template(chat), template.bos_token)
            for chat in chats
        ]
        caught = await check_rendering(backend, chats[0], wrong(chats[0]), "")
    finally:
        await backend.close()
    assert sum(v.matches for v in verdicts) == len(chats) == 48
    assert {v.method for v in verdicts} == {"/tokenize"}
    assert not caught.matches and "token ids differ" in caught.detail
