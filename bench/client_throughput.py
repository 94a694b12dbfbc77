#!/usr/bin/env python
"""Output tokens/s of mathsft's sampling client against vLLM's own load generator (vllm bench serve), on
one server, with the same prompts, sampling and concurrency, alternating runs. Every answer runs to
max_tokens (ignore_eos) so both clients ask for the same work. Run from the repo root:

    python bench/client_throughput.py --model .cache/models/smollm2-135m-instruct --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def vllm_bench(base_url: str, model: str, tokenizer: str, prompts_path: Path, args, result_dir: Path) -> float:
    """One `vllm bench serve` run through its Python entry point; returns its output tokens/s."""
    from vllm.benchmarks import serve

    parser = argparse.ArgumentParser()
    serve.add_cli_args(parser)
    bench_args = parser.parse_args([
        "--backend", "openai-chat", "--base-url", base_url.removesuffix("/v1"), "--endpoint", "/v1/chat/completions",
        "--model", model, "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path", str(prompts_path),
        "--num-prompts", str(args.num_prompts), "--custom-output-len", str(args.max_tokens), "--ignore-eos",
        "--temperature", "0.6", "--top-p", "0.95", "--max-concurrency", str(args.concurrency),
        "--save-result", "--result-dir", str(result_dir), "--result-filename", "vllm.json", "--disable-tqdm",
    ])
    serve.main(bench_args)
    return json.loads((result_dir / "vllm.json").read_text())["output_throughput"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder to serve")
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from mathsft import data
    from mathsft.generate import ClientSettings, Sampling, sample
    from mathsft.prompts import build_messages
    from mathsft.serve import ManagedServer

    rows = data.take_problems(data.reasoning_gym_problems(["chain_sum", "basic_arithmetic", "gsm_symbolic"], 5),
                              args.num_prompts, data.Counts(), set())
    work = Path(tempfile.mkdtemp(prefix="mathsft-client-bench-"))
    prompts_path = work / "prompts.jsonl"
    prompts_path.write_text("".join(json.dumps({"prompt": build_messages(r["problem"], "boxed_cot_v1")[0]["content"]})
                                    + "\n" for r in rows))
    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    sampling = Sampling(samples_per_problem=1, temperature=0.6, top_p=0.95, max_tokens=args.max_tokens, seed=0,
                        ignore_eos=True)
    figures = {"mathsft": [], "vllm_bench_serve": []}
    with ManagedServer(args.model, "m", work / "server.log", args=server["args"], env=server["env"],
                       health_timeout_s=600) as managed:
        # vLLM's load generator sends the key of OPENAI_API_KEY; the managed server demands its per-job key.
        os.environ["OPENAI_API_KEY"] = managed.api_key
        # One short warm-up so neither client pays the first requests' start-up.
        sample(rows[:4], managed.base_url, "m", "boxed_cot_v1", sampling, ClientSettings(concurrency=4),
               api_key=managed.api_key)
        for _ in range(args.rounds):
            figures["vllm_bench_serve"].append(vllm_bench(managed.base_url, "m", args.model, prompts_path, args, work))
            started = time.monotonic()
            records, summary = sample(rows, managed.base_url, "m", "boxed_cot_v1", sampling,
                                      ClientSettings(concurrency=args.concurrency), api_key=managed.api_key,
                                      check_alive=managed.check_alive)
            tokens = sum(r["completion_tokens"] for r in records)
            figures["mathsft"].append(tokens / (time.monotonic() - started))
    mean = {name: sum(values) / len(values) for name, values in figures.items()}
    print(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "prompts": args.num_prompts, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        "output_tokens_per_s": {name: [round(v, 1) for v in values] for name, values in figures.items()},
        "ratio_mathsft_over_vllm_bench": round(mean["mathsft"] / mean["vllm_bench_serve"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
