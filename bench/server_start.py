#!/usr/bin/env python
"""How long a managed vLLM CPU server takes to answer and to sample, with the model in a process of its own (vLLM's
CPU default, the embedded default's) and in the engine process (VLLM_ENABLE_V1_MULTIPROCESSING=0), alternating
runs; and whether both give the same replies to the same seeded requests. Run it on an idle machine and again
beside a busy core (`python3 -c "while True: pass" &`): the second layout starts sooner but samples far slower
when another process wants a core. Run from the repo root:

    python bench/server_start.py --model .cache/models/qwen2.5-coder-0.5b-instruct --rounds 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {"model in its own process": "1", "model in the engine process": "0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder to serve")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()

    from mathsft import data
    from mathsft.generate import ClientSettings, Sampling, sample
    from mathsft.serve import ManagedServer

    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    rows = data.take_problems(data.reasoning_gym_problems(["chain_sum", "basic_arithmetic"], 5), args.requests,
                              data.Counts(), set())
    work = Path(tempfile.mkdtemp(prefix="mathsft-server-start-"))
    figures = []
    for round_index in range(args.rounds):
        for layout, value in LAYOUTS.items():
            started = time.monotonic()
            with ManagedServer(args.model, "m", work / f"{round_index}-{value}.log", args=server["args"],
                               env={**server["env"], "VLLM_ENABLE_V1_MULTIPROCESSING": value},
                               health_timeout_s=server["health_timeout_s"]) as managed:
                ready_s = time.monotonic() - started
                records, summary = sample(rows, managed.base_url, "m", "boxed_cot_v1",
                                          Sampling(samples_per_problem=1, temperature=0.6, top_p=0.95, max_tokens=128,
                                                   seed=0),
                                          ClientSettings(concurrency=args.requests), api_key=managed.api_key)
            replies = hashlib.sha256(json.dumps(sorted((r["problem_id"], r["response"]) for r in records)).encode())
            figures.append({"round": round_index, "layout": layout, "ready_s": round(ready_s, 1),
                            "sampling_s": summary["elapsed_s"], "replies_sha256": replies.hexdigest()[:16]})
            print(json.dumps(figures[-1]), flush=True)
    for layout in LAYOUTS:
        ready = [f["ready_s"] for f in figures if f["layout"] == layout]
        print(f"{layout}: ready after {min(ready):.1f} to {max(ready):.1f} s over {len(ready)} starts")
    print("same replies in every run:", len({f["replies_sha256"] for f in figures}) == 1)


if __name__ == "__main__":
    main()
