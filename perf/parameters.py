"""What a benchmark run measured and how: the parameters bench.py prints first and writes with
its results."""

from __future__ import annotations

from typing import Any

from perf.rounds import WARM_UP_SCORED_PROMPTS
from perf.scales import TASK_NAME
from perf.servers import API_BURST_FRACTION, API_REQUESTS_PER_MINUTE, API_TOKENS_PER_MINUTE


def describe_parameters(settings: Any) -> dict[str, Any]:
    """What the run measured and how, printed first and written with the results."""
    scale = settings.scale
    return {
        "mode": scale.name,
        "task": TASK_NAME,
        "repeat": settings.repeat,
        "run budget s": settings.budget_s,
        "scorer model": "simulated Llama-2-7b-chat, one H100 80GB, vLLM "
        "(max_num_seqs 256, 8192 batched tokens, chunked prefill, prefix caching)"
        if not settings.url and not settings.vllm_cpu
        else "the managed vLLM CPU server (embedded SmolLM2-135M-Instruct)"
        if settings.vllm_cpu
        else f"{settings.model} at {settings.url}",
        "time_scale": f"{scale.time_scale:g} (W1, W2, W4), {scale.api_time_scale:g} (W3): "
        "simulated seconds per real second",
        "peak memory": "worker's peak RSS during the run minus its RSS before (VmHWM reset via "
        "/proc/self/clear_refs; ru_maxrss where /proc is unavailable)",
        "W3 engine limits": f"{API_REQUESTS_PER_MINUTE * API_BURST_FRACTION:g} requests and "
        f"{API_TOKENS_PER_MINUTE * API_BURST_FRACTION:,.0f} tokens per "
        f"{60 * API_BURST_FRACTION:g} simulated s (the limits as the server enforces them); "
        "the cookbook is given the per-minute figures, which is all it takes",
        "client CPU": "worker's process_time (all threads); the server is another process",
        "W5/W6 warm-up": f"each worker first scores up to {WARM_UP_SCORED_PROMPTS:,} chains of "
        "other prompts, unmeasured (a warm process's per-prompt cost, not its start-up)",
    }
