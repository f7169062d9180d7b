"""A stand-in for `vllm run-batch` in tests: `python tests/fake_run_batch.py -i IN -o OUT
[--wait-for PATH]` answers every chat line of IN in OpenAI's batch output format (the answer is
"answer: " + the last message), after PATH exists when given."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", required=True)
    parser.add_argument("-o", required=True)
    parser.add_argument("--wait-for")
    args = parser.parse_args()
    if args.wait_for:
        for _ in range(120_000):  # bounded: 20 minutes at most
            if Path(args.wait_for).exists():
                break
            time.sleep(0.01)
    out = []
    for number, raw in enumerate(Path(args.i).read_bytes().splitlines()):
        line = orjson.loads(raw)
        text = "answer: " + line["body"]["messages"][-1]["content"]
        body = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "model": line["body"]["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
        response = {"status_code": 200, "request_id": f"r{number}", "body": body}
        out.append({"id": f"vllm-{number}", "custom_id": line["custom_id"], "response": response})
    Path(args.o).write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in out))


if __name__ == "__main__":
    main()
