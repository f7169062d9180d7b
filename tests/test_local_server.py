"""The embedded model's local server: vLLM where the machine runs it, llama.cpp where it cannot,
chosen by the command, said with why, kept with the run (and on resume); `gpo setup-local`
installs the one the default would choose. Fake probes; the dry runs start no server."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from backends.errors import ConfigError
from gpo import cli_setup
from gpo.cli import build_parser
from gpo.endpoint_flags import ROLES, spec_from_args
from gpo.local_server import (
    LOCAL_SERVER_ENV,
    MachineProbe,
    _cpu_flags,
    choose_local_server,
    kind_to_install,
    probe_machine,
    requested_local_server,
    settle_local_server,
    vllm_unsupported,
)
from gpo.optimize_args import build_optimize_parser
from gpo.resume import resumed_arguments, stored_arguments
from gpo.run_servers import read_servers, record_server
from tests.gpo_process import REPO, gpo_environment

AVX512_BF16 = frozenset({"avx2", "fma", "avx512f", "avx512_bf16"})
MACHINE = MachineProbe(
    system="Linux",
    machine="x86_64",
    python=(3, 11),
    glibc=(2, 36),
    cpu_flags=AVX512_BF16,
    gpus=0,
    vllm_installed=True,
    llamacpp_installed=True,
    vllm_home="/home/u/.cache/gpo-engine",
)


def probe(**changes: object) -> MachineProbe:
    return dataclasses.replace(MACHINE, **changes)


@pytest.mark.parametrize(
    ("changes", "kind", "says"),
    [
        ({}, "vllm", "CPU build is installed and this CPU runs it (AVX-512 BF16)"),
        ({"cpu_flags": frozenset({"avx2", "avx512f"})}, "vllm", "(AVX-512)"),
        ({"cpu_flags": frozenset({"avx2", "fma"})}, "vllm", "(AVX2)"),
        ({"cpu_flags": frozenset({"sse4_2", "avx"})}, "llamacpp", "lacks AVX2"),
        ({"machine": "aarch64", "cpu_flags": frozenset({"fp", "asimd"})}, "vllm", "(NEON)"),
        ({"machine": "aarch64", "cpu_flags": frozenset({"fp"})}, "llamacpp", "NEON"),
        ({"machine": "riscv64"}, "llamacpp", "x86_64 and aarch64 only"),
        ({"system": "Darwin", "glibc": None}, "llamacpp", "Linux only"),
        ({"glibc": (2, 17)}, "llamacpp", "glibc 2.28 or newer"),
        ({"glibc": None}, "llamacpp", "glibc 2.28"),
        ({"python": (3, 15)}, "llamacpp", "Python 3.11 to 3.14"),
        ({"vllm_installed": False}, "llamacpp", "not installed in /home/u/.cache/gpo-engine"),
        ({"vllm_installed": False, "llamacpp_installed": False}, "vllm", "run gpo setup-local"),
        ({"gpus": 1, "cpu_flags": frozenset()}, "vllm", "a GPU is visible"),
    ],
)
def test_auto_picks_vllm_where_it_is_installed_and_runs_else_llamacpp(changes, kind, says):
    choice = choose_local_server("auto", probe(**changes))
    assert choice.kind == kind
    assert says in choice.reason
    assert choice.line().startswith({"vllm": "vLLM (auto: ", "llamacpp": "llama.cpp (auto: "}[kind])


@pytest.mark.parametrize("requested", ["vllm", "llamacpp"])
def test_an_explicit_choice_wins_over_the_machine(requested):
    for machine in (MACHINE, probe(cpu_flags=frozenset(), vllm_installed=False)):
        assert choose_local_server(requested, machine).kind == requested


def test_the_flag_beats_the_environment_and_a_bad_value_is_named():
    assert requested_local_server(None, {}) == "auto"
    assert requested_local_server(None, {LOCAL_SERVER_ENV: " LlamaCpp "}) == "llamacpp"
    assert requested_local_server("vllm", {LOCAL_SERVER_ENV: "llamacpp"}) == "vllm"
    with pytest.raises(ConfigError, match=LOCAL_SERVER_ENV):
        requested_local_server(None, {LOCAL_SERVER_ENV: "sglang"})
    with pytest.raises(ConfigError, match="choose auto, vllm, llamacpp"):
        choose_local_server("sglang", MACHINE)


def test_cpu_flags_are_read_from_proc_cpuinfo_on_x86_and_arm():
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\nbugs\t\t: spectre\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm\n"
    assert _cpu_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert _cpu_flags(arm) == {"fp", "asimd", "evtstrm"}
    assert _cpu_flags("") == frozenset()


def test_setup_local_installs_what_auto_would_choose_once_installed():
    nothing = probe(vllm_installed=False, llamacpp_installed=False)
    assert kind_to_install(nothing, {}).kind == "vllm"
    assert "AVX-512 BF16" in kind_to_install(nothing, {}).reason
    old_cpu = probe(cpu_flags=frozenset({"avx"}), vllm_installed=False)
    assert kind_to_install(old_cpu, {}).kind == "llamacpp"
    assert "lacks AVX2" in kind_to_install(old_cpu, {}).reason
    assert kind_to_install(nothing, {LOCAL_SERVER_ENV: "llamacpp"}).kind == "llamacpp"


@pytest.mark.parametrize(
    ("argv", "machine", "installed"),
    [
        ([], MACHINE, ["gguf", "vllm"]),
        ([], probe(cpu_flags=frozenset({"avx"})), ["llamacpp"]),
        (["--vllm"], probe(cpu_flags=frozenset({"avx"})), ["llamacpp", "gguf", "vllm"]),
        (["--llamacpp"], MACHINE, ["llamacpp"]),
    ],
)
def test_setup_local_runs_the_installers_for_its_choice(
    monkeypatch, capsys, argv, machine, installed
):
    calls: list[str] = []
    monkeypatch.delenv(LOCAL_SERVER_ENV, raising=False)
    monkeypatch.setattr("gpo.local_server.probe_machine", lambda: machine)
    monkeypatch.setattr("gpo.setup_local.install_local_model", lambda: calls.append("llamacpp"))
    monkeypatch.setattr("gpo.setup_local.install_gguf_carrier", lambda: calls.append("gguf"))
    monkeypatch.setattr("gpo.setup_vllm.install_vllm", lambda: calls.append("vllm"))
    args = build_parser().parse_args(["setup-local", *argv])
    assert cli_setup.run(args) == 0
    assert calls == installed
    if not argv:
        said = capsys.readouterr().out
        assert "the default local server here is" in said
        assert ("vLLM" if "vllm" in installed else "lacks AVX2") in said


def _optimize_args(*extra: str):
    return build_parser().parse_args(["optimize", "--task", "bbh/navigate", *extra])


def test_settling_maps_the_embedded_roles_to_the_chosen_server_and_says_why():
    said: list[str] = []
    args = _optimize_args()
    choice = settle_local_server(args, ROLES, probe=lambda: MACHINE, say=said.append)
    assert choice is not None and choice.kind == "vllm"
    assert args.local_server == "vllm"
    assert said and "local server: vLLM (auto: vLLM's CPU build is installed" in said[0]
    assert "--local-server llamacpp" in said[0]
    spec = spec_from_args(args, ROLES, None)
    assert [(e.kind, e.serve) for e in spec.endpoints] == [("vllm", "embedded")] * 2
    assert all("AVX-512 BF16" in (e.origin or "") for e in spec.endpoints)
    pinned = _optimize_args("--local-server", "llamacpp")
    settle_local_server(pinned, ROLES, probe=lambda: MACHINE, say=said.append)
    spec = spec_from_args(pinned, ROLES, None)
    assert [e.kind for e in spec.endpoints] == ["embedded", "embedded"]
    assert "asked for by --local-server" in said[-1]


def test_roles_with_their_own_endpoints_choose_nothing():
    args = _optimize_args("--scorer-url", "http://127.0.0.1:9/v1", "--optimizer-vllm", "m")
    assert settle_local_server(args, ROLES, probe=lambda: MACHINE, say=print) is None
    assert args.local_server is None


def test_a_resumed_run_keeps_its_server_whatever_the_machine_says_now(tmp_path: Path):
    parser = build_optimize_parser()
    first = _optimize_args()
    settle_local_server(first, ROLES, probe=lambda: MACHINE, say=lambda _: None)
    stored = orjson.loads(orjson.dumps(stored_arguments(first)))
    assert stored["local_server"] == "vllm"
    again = build_parser().parse_args(["optimize", "--resume", str(tmp_path)])
    merged = resumed_arguments(again, stored, parser)
    now = probe(vllm_installed=False)  # vLLM would not be chosen any more
    said: list[str] = []
    settle_local_server(merged, ROLES, stored=stored, probe=lambda: now, say=said.append)
    assert merged.local_server == "vllm" and "resumed: the run started on vLLM" in said[0]
    clash = build_parser().parse_args(
        ["optimize", "--resume", str(tmp_path), "--local-server", "llamacpp"]
    )
    with pytest.raises(ConfigError, match="--local-server"):
        resumed_arguments(clash, stored, parser)
    older = {key: value for key, value in stored.items() if key != "local_server"}
    for asked in (None, "vllm"):
        extra = ["--local-server", asked] if asked else []
        args = build_parser().parse_args(["optimize", "--resume", str(tmp_path), *extra])
        merged = resumed_arguments(args, older, parser)
        if asked:  # a run from before the choice ran on llama.cpp, and stays there
            with pytest.raises(ConfigError, match=r"started on llama\.cpp"):
                settle_local_server(merged, ROLES, stored=older, say=said.append)
        else:
            settle_local_server(merged, ROLES, stored=older, say=said.append)
            assert merged.local_server == "llamacpp"


def test_servers_jsonl_keeps_why_the_server_was_chosen(tmp_path: Path, capsys):
    record_server(
        tmp_path,
        "scorer",
        kind="managed-vllm",
        description="managed vLLM 0.32.0 (CPU build)",
        url="http://127.0.0.1:1234/v1",
        model="SmolLM2-135M-Instruct",
        origin="local server vllm: vLLM's CPU build is installed",
    )
    (entry,) = read_servers(tmp_path)
    assert entry["origin"] == "local server vllm: vLLM's CPU build is installed"
    assert "[local server vllm: vLLM's CPU build is installed]" in capsys.readouterr().err


def _dry_run(extra_env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gpo", "optimize", "--task", "bbh/navigate", "--dry-run"],
        cwd=REPO,
        env=gpo_environment(extra_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Dry run" in done.stdout
    (line,) = [x for x in done.stderr.splitlines() if "local server:" in x]
    return line


def test_the_main_job_dry_run_says_the_server_this_machine_would_use(monkeypatch, tmp_path):
    monkeypatch.delenv(LOCAL_SERVER_ENV, raising=False)
    here = probe_machine()
    line = _dry_run({})
    assert choose_local_server("auto", here).line() in line
    if here.vllm_installed and vllm_unsupported(here) is None:  # as after setup-local --vllm
        assert "local server: vLLM (auto:" in line
    empty = tmp_path / "no-vllm"
    monkeypatch.setenv("GPO_VLLM_HOME", str(empty))
    line = _dry_run({"GPO_VLLM_HOME": str(empty)})
    assert choose_local_server("auto", probe_machine()).line() in line
    assert "vLLM is not installed" in line or "nothing installed" in line or "vLLM" not in line
    line = _dry_run({LOCAL_SERVER_ENV: "llamacpp"})
    assert "local server: llama.cpp (llamacpp: asked for by GPO_LOCAL_SERVER)" in line
