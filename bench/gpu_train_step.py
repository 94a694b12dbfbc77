#!/usr/bin/env python
"""Training throughput and MFU of mathsft's trainer on a GPU, for the deepscaler student's shape.

Builds a randomly initialised model with Qwen2.5-Math-1.5B's architecture (or loads --model), writes a
synthetic curated set of chat traces (fixed length, or with --packing lengths spread evenly over
[seq_len/4, seq_len] as real traces are), runs mathsft.train.train (DeepSpeed ZeRO, bf16) for a few steps
and prints tokens/s and MFU from the trainer's own metrics log. Run on a GPU machine:

    python bench/gpu_train_step.py --tokenizer PATH_TO_A_CHATML_TOKENIZER --steps 6 [--packing] [--liger_kernel]

Model FLOPs per trace of l tokens: l x (6N + 12 x layers x hidden x l) (PaLM's convention: no discount for
causal attention), summed over the traces of the timed steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

# Qwen/Qwen2.5-Math-1.5B's config.json (the values that set its compute).
QWEN25_MATH_15B = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=True,
    rms_norm_eps=1e-6,
)
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, SXM


def synthetic_traces(tokenizer, lengths: list[int]) -> tuple[list[dict], list[int]]:
    """Curated-set rows whose chat-formatted lengths are close to `lengths` (and those lengths)."""
    from mathsft.chat import end_of_turn_token, tokenize_example

    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    messages = [{"role": "user", "content": "Compute the sum of the first 100 primes."}]
    words = "we add the next prime to the running total and check the parity of the result".split()
    long_ids = tokenizer(" ".join(words[i % len(words)] for i in range(max(lengths))), add_special_tokens=False)["input_ids"]
    overhead = len(tokenize_example(tokenizer, messages, "", end_of_turn_id)[0])
    responses, actual = {}, []
    for tokens in sorted(set(lengths)):
        response = tokenizer.decode(long_ids[: max(1, tokens - overhead - 2)])
        responses[tokens] = (response, len(tokenize_example(tokenizer, messages, response, end_of_turn_id)[0]))
    rows = []
    for i, tokens in enumerate(lengths):
        response = responses[tokens][0]
        actual.append(responses[tokens][1])
        rows.append({
            "problem_id": f"{i:016x}", "source": "synthetic", "problem": messages[0]["content"], "answer": "$1$",
            "sample_index": 0, "messages": json.dumps(messages), "response": response, "finish_reason": "stop",
            "prompt_tokens": 20, "completion_tokens": tokens, "model": "synthetic",
            "served_model_name": None, "prompt_template": "boxed_cot_v1",
            "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": tokens, "seed": i, "latency_s": 0.0,
            "extracted_answer": "1", "reward": 1.0, "verifier_status": "correct",
        })
    return rows, actual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a chat tokenizer folder (ChatML)")
    parser.add_argument("--model", default=None, help="a model folder; default: random Qwen2.5-Math-1.5B shape")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--micro_batch", type=int, default=4)
    parser.add_argument("--global_batch", type=int, default=16)
    parser.add_argument("--deepspeed", default=str(Path(__file__).resolve().parents[1] / "config/deepspeed/zero2.json"))
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--recompute_elementwise", action="store_true",
                        help="keep only matmul and attention outputs (train.recompute_elementwise; off under Liger)")
    parser.add_argument("--liger_kernel", action="store_true", help="Liger's fused kernels and cross-entropy")
    parser.add_argument("--profile", action="store_true",
                        help="run under torch.profiler and print the kernels that took the most GPU time")
    parser.add_argument("--packing", action="store_true",
                        help="varied trace lengths packed into micro-batches of seq_len x micro_batch tokens")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from mathsft.io import SCORED_SCHEMA, write_parquet
    from mathsft.train import train
    from mathsft.train_settings import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="mathsft-gpu-bench-"))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model_dir = args.model
    if model_dir is None:
        model_dir = str(work / "model")
        config = Qwen2Config(**QWEN25_MATH_15B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        torch.cuda.empty_cache()
    count = args.global_batch * args.steps
    if args.packing:  # evenly spread over [seq_len/4, seq_len], in a shuffled order
        lengths = [args.seq_len // 4 + (i * 7919) % (args.seq_len - args.seq_len // 4 + 1) for i in range(count)]
    else:
        lengths = [args.seq_len] * count
    rows, lengths = synthetic_traces(tokenizer, lengths)
    write_parquet(rows, work / "train.parquet", SCORED_SCHEMA)
    cfg = TrainConfig(model=model_dir, train_path=str(work / "train.parquet"), val_path=str(work / "none.parquet"),
                      output_dir=str(work / "out"), deepspeed_config=args.deepspeed, epochs=1, learning_rate=1e-5,
                      global_batch_size=args.global_batch, micro_batch_size_per_device=args.micro_batch,
                      max_length=args.seq_len, gradient_checkpointing=args.gradient_checkpointing,
                      recompute_elementwise=args.recompute_elementwise, liger_kernel=args.liger_kernel,
                      packing=args.packing)
    started = time.monotonic()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            summary = train(cfg, str(work / "metrics.jsonl"))
        events = prof.key_averages()
        print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
        busy = sum(e.self_device_time_total for e in events) / 1e6
        print(f"GPU kernel time {busy:.1f} s of {time.monotonic() - started:.1f} s wall (profiler on)")
    else:
        summary = train(cfg, str(work / "metrics.jsonl"))
    wall = time.monotonic() - started
    steps = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    from transformers import AutoConfig, AutoModelForCausalLM

    mc = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(mc).parameters())  # tied: once
    timed = steps[1:]  # the first step includes warm-up
    tokens_per_s = sum(s["tokens_per_s"] for s in timed) / len(timed)
    # Every trace is trained on once per epoch, so the mean FLOPs per token over the set is the same as over
    # the timed steps up to the shuffle.
    flops = sum(l * (6 * n_params + 12 * mc.num_hidden_layers * mc.hidden_size * l) for l in lengths)
    flops_per_token = flops / sum(lengths)
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    achieved = flops_per_token * tokens_per_s / 1e12
    print(json.dumps({
        "device": name, "params": n_params, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
        "global_batch": args.global_batch, "packing": args.packing, "liger_kernel": args.liger_kernel, "mean_trace_tokens": round(sum(lengths) / len(lengths)),
        "padding_waste": round(sum(s["padding_waste"] for s in timed) / len(timed), 4),
        "steps_timed": len(timed), "tokens_per_s": round(tokens_per_s, 1),
        "model_tflops": round(achieved, 1), "peak_bf16_tflops": peak,
        "mfu": round(achieved / peak, 4) if peak else None, "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "train_wall_s": round(wall, 1), "losses": [round(s["loss"], 3) for s in steps], "summary_steps": summary["steps"],
    }, indent=1))


if __name__ == "__main__":
    main()
