"""Convert a GGUF model file into a Hugging Face model directory that vLLM loads.

Run as a script by the vLLM environment's interpreter (`gpo setup-local --vllm` does), which has
`transformers`, `gguf` and `accelerate`; it imports nothing from this project, since that
environment does not have it installed:

    VLLM_PYTHON backends/gguf_to_hf.py MODEL.gguf OUT_DIR

transformers' own GGUF loader reads the weights (dequantised) and the tokenizer, with the chat
template from the GGUF metadata; the weights are saved in bfloat16 as safetensors. The loader
marks the config as GGUF-quantised, and `save_pretrained` refuses such a config, so the marker is
dropped first. The directory is written under a temporary name and renamed when complete, with
`gpo-conversion.json` recording the source file's name and size: an interrupted conversion never
leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

MARKER_FILE = "gpo-conversion.json"


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Write the HF-format model for `gguf_path` to `out_dir` (replacing what is there)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    source_dir, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=file_name)
    model = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=file_name, dtype=torch.bfloat16
    )
    for holder in (model.config, getattr(model, "generation_config", None)):
        if holder is not None and hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.hf_quantizer = None
    model.is_quantized = False
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    marker = {"source": file_name, "source_bytes": gguf_path.stat().st_size, "dtype": "bfloat16"}
    (partial / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    print(f"converted {gguf_path} to {out_dir} in {time.monotonic() - started:.1f} s")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gguf_to_hf.py MODEL.gguf OUT_DIR", file=sys.stderr)
        return 2
    gguf_path, out_dir = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    if not gguf_path.is_file():
        print(f"gguf_to_hf.py: {gguf_path} is not a file", file=sys.stderr)
        return 2
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    convert(gguf_path, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
