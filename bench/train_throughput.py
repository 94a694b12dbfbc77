#!/usr/bin/env python
"""Training throughput on this CPU: mathsft's trainer (packed; and padded per micro-batch) against TRL's
SFTTrainer with its defaults and padded to max_length (verl's way), on the same model and the same data.

Each configuration runs in its own process, one after another, in alternating order over --rounds (run-to-run
noise on a shared 2-core machine is large). Reported per run: real (non-padding) tokens per second over the
steps after the first, padding waste (padding positions / positions computed), peak RSS and each step's
loss; then the mean and the range over the rounds.

    python bench/train_throughput.py --examples 32 --rounds 3

--baseline DIR adds the trainer of another checkout (e.g. `git worktree add DIR REV`) as baseline_packed, run
in the same alternation: a change's before and after, side by side on the same machine and day.
mathsft_recompute_all is the packed trainer with train.gradient_checkpointing (TRL's default), for reference.

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
CONFIGS = ("mathsft_packed", "mathsft_padded", "mathsft_recompute_all", "trl_defaults", "trl_pad_to_max",
           "baseline_packed")


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


def bench_config(args, work: Path, packing: bool, **settings):
    """The TrainConfig of the mathsft runs: one epoch at 2e-5, the whole global batch in one micro-batch."""
    from mathsft.train_settings import TrainConfig

    return TrainConfig(model=args.model, train_path=args.train, val_path=str(work / "none.parquet"),
                       output_dir=str(work / "model"), deepspeed_config=str(REPO / "config/deepspeed/zero2.json"),
                       epochs=1, learning_rate=2e-5, global_batch_size=args.batch,
                       micro_batch_size_per_device=args.batch, max_length=args.max_length, packing=packing, **settings)


def run_mathsft(args, packing: bool, work: Path, **settings) -> dict:
    from mathsft.train import train

    train(bench_config(args, work, packing, **settings), str(work / "metrics.jsonl"))
    steps = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    timed = steps[1:]  # the first step includes warm-up
    seconds = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
    real, computed = sum(s["tokens"] for s in timed), sum(s["computed_tokens"] for s in timed)
    return {"steps": len(steps), "real_tokens_per_s": real / seconds, "padding_waste": 1 - real / computed,
            "losses": [s["loss"] for s in steps]}


def run_trl(args, pad_to_max: bool, work: Path) -> dict:
    """TRL's SFTTrainer with its defaults for what decides speed and memory (a batch padded to its longest
    row, gradient checkpointing, full logits), and mathsft's data order, optimizer and schedule, so that the
    two loss curves compare step by step."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mathsft.train import learning_rate_schedule
    from mathsft.train_data import epoch_plan

    rows = pq.read_table(args.train).to_pylist()
    cfg = bench_config(args, work, packing=True)
    plan = epoch_plan([1] * len(rows), cfg, 0, 0, 1)  # which rows each step takes; their lengths change nothing
    rows = [rows[i] for step in plan for group in step for i in group]
    # Prompt-completion rows: TRL then puts the loss on the completion only, as mathsft does.
    data = Dataset.from_list([{"prompt": json.loads(r["messages"]),
                               "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = SFTConfig(output_dir=str(work / "trl"), use_cpu=True, bf16=False, max_length=args.max_length,
                       per_device_train_batch_size=args.batch, num_train_epochs=1, learning_rate=cfg.learning_rate,
                       max_grad_norm=cfg.max_grad_norm, logging_steps=1, save_strategy="no", report_to=[], seed=0,
                       pad_to_multiple_of=args.max_length if pad_to_max else None)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    betas = json.loads((REPO / "config/deepspeed/zero2.json").read_text())["optimizer"]["params"]["betas"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=tuple(betas), eps=1e-8,
                                  weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_schedule(cfg, len(plan)))
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         optimizers=(optimizer, schedule))
    trainer._get_train_sampler = lambda *_: SequentialSampler(trainer.train_dataset)  # the order set above
    seen: list[tuple[int, int]] = []
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        seen.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator  # read when the dataloader is built, in train()
    ends: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.monotonic())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer.add_callback(Clock())
    trainer.train()
    timed = seen[1 : len(ends)]
    real, computed = sum(r for r, _ in timed), sum(c for _, c in timed)
    return {"steps": len(ends), "real_tokens_per_s": real / (ends[-1] - ends[0]), "padding_waste": 1 - real / computed,
            "losses": losses}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"mathsft-bench-{args.config}-"))
    runner = {"mathsft_packed": lambda: run_mathsft(args, True, work),
              "mathsft_padded": lambda: run_mathsft(args, False, work),
              "mathsft_recompute_all": lambda: run_mathsft(args, True, work, gradient_checkpointing=True),
              "baseline_packed": lambda: run_mathsft(args, True, work),  # with the baseline's mathsft first on the path
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
    parser.add_argument("--configs", nargs="+", default=[c for c in CONFIGS if c != "baseline_packed"], choices=CONFIGS)
    parser.add_argument("--baseline", default=None, help="a checkout whose trainer runs as baseline_packed")
    parser.add_argument("--config", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()
    if args.config:
        return child(args)
    if args.baseline and "baseline_packed" not in args.configs:
        args.configs.append("baseline_packed")
    if "baseline_packed" in args.configs and not args.baseline:
        parser.error("baseline_packed needs --baseline DIR (a checkout of the commit to compare with)")
    if args.train is None:
        args.train = str(Path(tempfile.mkdtemp(prefix="mathsft-bench-data-")) / "train.parquet")
        synthetic_set(Path(args.train), args.examples, seed=0)
    results: dict[str, list[dict]] = {name: [] for name in args.configs}
    for round_ in range(args.rounds):
        order = args.configs if round_ % 2 == 0 else list(reversed(args.configs))
        for name in order:
            command = [sys.executable, __file__, "--config", name, "--model", args.model, "--train", args.train,
                       "--batch", str(args.batch), "--max_length", str(args.max_length), "--threads", str(args.threads)]
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            if name == "baseline_packed":  # the baseline's mathsft is imported before this checkout's
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.baseline).resolve()), env.get("PYTHONPATH")]))
            out = subprocess.run(command, capture_output=True, text=True, env=env)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"{name} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            results[name].append(json.loads(line[len("RESULT "):]))
            print(name, results[name][-1], flush=True)
    print(json.dumps({"command": " ".join(sys.argv), "batch": args.batch, "max_length": args.max_length,
                      "examples": args.examples, "threads": args.threads, "results": summarise(results),
                      "targets": {"padding_waste": "<= 0.03", "tokens_per_s_vs_trl_defaults": ">= 2.0",
                                  "peak_vs_trl_defaults": "<= 1.0"}}, indent=1))


def summarise(results: dict[str, list[dict]]) -> dict:
    """Per configuration, the mean of each figure and its range over the rounds, and the loss of each step;
    then mathsft_packed's speed and peak as ratios to TRL's defaults, from runs of the same round."""
    spread = lambda values: {"mean": round(sum(values) / len(values), 3), "min": round(min(values), 3),  # noqa: E731
                             "max": round(max(values), 3)}
    summary = {name: {key: spread([run[key] for run in runs]) for key in runs[0] if key != "losses"}
               for name, runs in results.items() if runs}
    for name, runs in results.items():  # each step's loss, from the first round (the runs are seeded)
        if runs:
            summary[name]["losses"] = [round(value, 5) for value in runs[0]["losses"]]
    ours, theirs = results.get("mathsft_packed", []), results.get("trl_defaults", [])
    for figure, key in (("tokens_per_s_vs_trl_defaults", "real_tokens_per_s"), ("peak_vs_trl_defaults", "peak_rss_gb")):
        if ours and len(ours) == len(theirs):
            summary[figure] = spread([a[key] / b[key] for a, b in zip(ours, theirs)])
    return summary

if __name__ == "__main__":
    main()
