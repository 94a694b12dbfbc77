#!/usr/bin/env python
"""Prepare training problems, evaluation sets and static shards (the data stage)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mathsft.cli import setup_logging
from mathsft import data
from mathsft.io import PROBLEM_SCHEMA, write_json, write_parquet


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="reasoning_gym", choices=["reasoning_gym"])
    parser.add_argument("--tasks", nargs="+", default=["chain_sum", "basic_arithmetic", "gsm_symbolic"])
    parser.add_argument("--benchmarks", nargs="+", default=["chain_sum", "basic_arithmetic", "gsm_symbolic"])
    parser.add_argument("--num_samples", type=int, default=64, help="training problems to keep")
    parser.add_argument("--shard_size", type=int, default=32)
    parser.add_argument("--eval_problems", type=int, default=16, help="problems per benchmark")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval_seed", type=int, default=2)
    parser.add_argument("--ngram", type=_optional_int, default=None,
                        help="decontamination word n-gram size; None (default): exact text match only")
    parser.add_argument("--task_options", type=json.loads, default={},
                        help='JSON: options per reasoning-gym task, e.g. {"chain_sum": {"max_terms": 3}}')
    parser.add_argument("--output_dir", default="results/data", help="writes problems.parquet, bench/, shards/")
    args = parser.parse_args()
    setup_logging()

    train, bench_sets, report = data.prepare_reasoning_gym(
        args.tasks, args.benchmarks, args.num_samples, args.eval_problems, args.seed, args.eval_seed, args.ngram,
        args.task_options,
    )
    out = Path(args.output_dir)
    for bench, rows in bench_sets.items():
        write_parquet(rows, out / "bench" / f"{bench}.parquet", PROBLEM_SCHEMA)
    for k, (start, stop) in enumerate(data.shard_bounds(len(train), args.shard_size)):
        write_parquet(train[start:stop], out / "shards" / f"{k:05d}.parquet", PROBLEM_SCHEMA)
    write_parquet(train, out / "problems.parquet", PROBLEM_SCHEMA)
    write_json(report, out / "report.json")
    logging.info("kept %d training problems; dropped %s", len(train), report["train"]["dropped"])


if __name__ == "__main__":
    main()
