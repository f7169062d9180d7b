"""The offline limit on a real vLLM: a standalone script the vLLM environment's interpreter runs.

    VLLM_PYTHON perf/vllm_offline.py SPEC.json RESULT.json

It imports vLLM only (the vLLM environment has none of the project's packages). SPEC holds the
model directory, the engine arguments of the managed server (`max_num_seqs`,
`max_num_batched_tokens`, `enforce_eager`, `max_model_len`, `dtype`; the KV cache space comes
from the environment, as the server's does), the sampling of each turn, and the chains: each
chain's first-turn messages and its follow-up question (None for a one-turn chain).

It loads the model once, runs a warm-up (the first chains, untimed), then per repeat: the prefix
cache reset, every first turn through `LLM.chat` in one call, every second turn (the first
turn's messages, the answer as the assistant's turn, the follow-up as the user's, exactly as the
engine's chains build them) in a second call; the timing excludes the model load. RESULT holds
each repeat's seconds, the tokens generated, and the last repeat's answers per chain.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

WARM_UP_CHAINS = 8


def _sampling(settings: dict[str, Any]) -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=int(settings["max_tokens"]))


def _run_once(llm: Any, spec: dict[str, Any], chains: list[dict[str, Any]]) -> dict[str, Any]:
    """Turn 1 of every chain in one call, then every turn 2 in a second call."""
    firsts = [chain["messages"] for chain in chains]
    started = time.perf_counter()
    outputs = llm.chat(firsts, _sampling(spec["first_turn"]), use_tqdm=False)
    answers = [[out.outputs[0].text] for out in outputs]
    tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    seconds_index = [i for i, chain in enumerate(chains) if chain["follow_up"] is not None]
    conversations = [
        [
            *chains[i]["messages"],
            {"role": "assistant", "content": answers[i][0]},
            {"role": "user", "content": chains[i]["follow_up"]},
        ]
        for i in seconds_index
    ]
    if conversations:
        outputs = llm.chat(conversations, _sampling(spec["second_turn"]), use_tqdm=False)
        for i, out in zip(seconds_index, outputs, strict=True):
            answers[i].append(out.outputs[0].text)
            tokens += len(out.outputs[0].token_ids)
    return {"seconds": time.perf_counter() - started, "tokens": tokens, "answers": answers}


def main(spec_path: Path, result_path: Path) -> int:
    from vllm import LLM

    spec = json.loads(spec_path.read_text())
    engine = spec["engine_args"]
    load_started = time.perf_counter()
    llm = LLM(model=spec["model_dir"], **engine)
    load_s = time.perf_counter() - load_started
    chains = spec["chains"]
    _run_once(llm, spec, chains[:WARM_UP_CHAINS])
    runs = []
    for _ in range(int(spec["repeat"])):
        llm.reset_prefix_cache()
        runs.append(_run_once(llm, spec, chains))
    result = {
        "load_s": load_s,
        "engine_args": engine,
        "seconds": [run["seconds"] for run in runs],
        "tokens": [run["tokens"] for run in runs],
        "answers": runs[-1]["answers"],
    }
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
