"""A small curated SFT set in the curate stage's schema, for training tests."""

from __future__ import annotations

import json
from pathlib import Path

from mathsft.io import SCORED_SCHEMA, write_parquet
from mathsft.prompts import build_messages


def write_sft_set(path: Path, count: int = 8) -> Path:
    rows = []
    for i in range(count):
        a, b = 3 + 7 * i, 11 + 5 * i
        problem = f"What is {a} + {b}?"
        response = f"We add the two numbers: {a} + {b} = {a + b}." + " Checking once more." * (i % 4) + f" \\boxed{{{a + b}}}"
        rows.append({
            "problem_id": f"{i:016x}", "source": "test", "problem": problem, "answer": f"${a + b}$", "sample_index": 0,
            "messages": json.dumps(build_messages(problem, "boxed_cot_v1")), "response": response, "finish_reason": "stop",
            "prompt_tokens": 40, "completion_tokens": 20, "model": "teacher",
            "served_model_name": None, "prompt_template": "boxed_cot_v1",
            "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 256, "seed": i, "latency_s": 1.0,
            "extracted_answer": str(a + b), "reward": 1.0, "verifier_status": "correct",
        })
    write_parquet(rows, path, SCORED_SCHEMA)
    return path
