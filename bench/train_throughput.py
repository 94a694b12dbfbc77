#!/usr/bin/env python
"""Training throughput on this CPU: mathsft's trainer (packed; and padded per micro-batch) against TRL's
SFTTrainer with its defaults and padded to max_length (verl's way), on the same model and the same data.

Each configuration runs in its own process, one after another, in alternating order over --rounds (run-to-run
noise on a shared 2-core machine is large). Reported per run: real (non-padding) tokens per second over the
steps after the first, padding waste (padding positions / positions computed) and peak RSS.

    python bench/train_throughput.py --examples 32 --rounds 2

TRL is a benchmark-only dependency: pip install trl==1.16.0 (it leaves torch and transformers as they are).
The data is a synthetic curated set whose traces span 100-720 tokens (median about 400), like the teacher
traces of the embedded default; --train takes a real results/sft/train.parquet instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("mathsft_packed", "mathsft_padded", "trl_defaults", "trl_pad_to_max")


def synthetic_set(path: Path, count: int, seed: int) -> None:
    """Curated rows (SCORED_SCHEMA) with chat traces of 100-720 tokens."""
    from mathsft.io import SCORED_SCHEMA, write_parquet
    from mathsft.prompts import build_messages

    rng = random.Random(seed)
    steps = ["We expand the product and collect like terms.", "Then we substitute x = 3 into both sides.",
             "The remainder modulo 7 repeats with period 6.", "So the sum telescopes to the first and last terms."]
    rows = []
    for i in range(count):
        words = int(min(max(rng.lognormvariate(5.6, 0.45), 70), 520))  # about 1.35 tokens per word
        response = " ".join(rng.choice(steps) for _ in range(words // 9)) + f" \\boxed{{{i}}}"
        problem = f"Find the value of the expression in problem {i}, where x is a positive integer."
        rows.append({
            "problem_id": f"{i:016x}", "source": "synthetic", "problem": problem, "answer": f"${i}$", "sample_index": 0,
            "messages": json.dumps(build_messages(problem, "boxed_cot_v1")), "response": response,
            "finish_reason": "stop", "prompt_tokens": 40, "completion_tokens": words, "model": "synthetic",
            "served_model_name": None,
            "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 1024,
            "seed": i, "latency_s": 0.0, "extracted_answer": str(i), "reward": 1.0, "verifier_status": "correct",
        })
    write_parquet(rows, path, SCORED_SCHEMA)


def run_mathsft(args, packing: bool, work: Path) -> dict:
    from mathsft.train import train
    from mathsft.train_settings import TrainConfig

    cfg = TrainConfig(model=args.model, train_path=args.train, val_path=str(work / "none.parquet"),
                      output_dir=str(work / "model"), deepspeed_config=str(REPO / "config/deepspeed/zero2.json"),
                      epochs=1, learning_rate=2e-5, global_batch_size=args.batch, micro_batch_size_per_device=args.batch,
                      max_length=args.max_length, packing=packing)
    train(cfg, str(work / "metrics.jsonl"))
    steps = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    timed = steps[1:]  # the first step includes warm-up
    seconds = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
    real, computed = sum(s["tokens"] for s in timed), sum(s["computed_tokens"] for s in timed)
    return {"steps": len(steps), "real_tokens_per_s": real / seconds, "padding_waste": 1 - real / computed}


def run_trl(args, pad_to_max: bool, work: Path) -> dict:
    import pyarrow.parquet as pq
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = pq.read_table(args.train).to_pylist()
    # Prompt-completion rows: TRL then puts the loss on the completion only, as mathsft does.
    data = Dataset.from_list([{"prompt": json.loads(r["messages"]),
                               "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = SFTConfig(output_dir=str(work / "trl"), use_cpu=True, bf16=False, max_length=args.max_length,
                       per_device_train_batch_size=args.batch, num_train_epochs=1, learning_rate=2e-5,
                       logging_steps=1, save_strategy="no", report_to=[], seed=0,
                       pad_to_multiple_of=args.max_length if pad_to_max else None)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(args.model), args=config, train_dataset=data,
                         processing_class=tokenizer)
    seen: list[tuple[int, int]] = []
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        seen.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator  # read when the dataloader is built, in train()
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.monotonic())

    trainer.add_callback(Clock())
    trainer.train()
    timed = seen[1 : len(ends)]
    real, computed = sum(r for r, _ in timed), sum(c for _, c in timed)
    return {"steps": len(ends), "real_tokens_per_s": real / (ends[-1] - ends[0]), "padding_waste": 1 - real / computed}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"mathsft-bench-{args.config}-"))
    runner = {"mathsft_packed": lambda: run_mathsft(args, True, work),
              "mathsft_padded": lambda: run_mathsft(args, False, work),
              "trl_defaults": lambda: run_trl(args, False, work),
              "trl_pad_to_max": lambda: run_trl(args, True, work)}[args.config]
    result = runner()
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / ".cache/models/smollm2-135m-instruct"))
    parser.add_argument("--train", default=None, help="curated train parquet (default: a synthetic set)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--config", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()
    if args.config:
        return child(args)
    if args.train is None:
        args.train = str(Path(tempfile.mkdtemp(prefix="mathsft-bench-data-")) / "train.parquet")
        synthetic_set(Path(args.train), args.examples, seed=0)
    results: dict[str, list[dict]] = {name: [] for name in args.configs}
    for round_ in range(args.rounds):
        order = args.configs if round_ % 2 == 0 else list(reversed(args.configs))
        for name in order:
            command = [sys.executable, __file__, "--config", name, "--model", args.model, "--train", args.train,
                       "--batch", str(args.batch), "--max_length", str(args.max_length), "--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"{name} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            results[name].append(json.loads(line[len("RESULT "):]))
            print(name, results[name][-1], flush=True)
    summary = {name: {key: round(sum(r[key] for r in runs) / len(runs), 3) for key in runs[0]} for name, runs in results.items() if runs}
    if "mathsft_packed" in summary and "trl_defaults" in summary:
        summary["speedup_vs_trl_defaults"] = round(summary["mathsft_packed"]["real_tokens_per_s"] / summary["trl_defaults"]["real_tokens_per_s"], 2)
    print(json.dumps({"command": " ".join(sys.argv), "batch": args.batch, "max_length": args.max_length,
                      "examples": args.examples, "threads": args.threads, "results": summary,
                      "targets": {"padding_waste": "<= 0.03", "speedup_vs_trl_defaults": ">= 1.5"}}, indent=1))


if __name__ == "__main__":
    main()
