#!/usr/bin/env python
"""Sample teacher trajectories (the teacher stage).

In the pipeline: one shard of problems in, one trajectories parquet out. Standalone, as in rLLM's math
SFT example, without --shard: draw --num_samples problems from the offline generator, sample, and with
--reward_threshold score with math-verify and keep only traces with reward >= threshold that finished:

    python scripts/generate_sft_data.py --num_samples 1000 --reward_threshold 1.0 \\
        --output large_sft_data.parquet --endpoint http://localhost:8000/v1 --model MODEL

(rLLM's default threshold, 0.0, keeps wrong answers; here it must be given to filter at all.)"""

from __future__ import annotations

import argparse
import json
import logging

from mathsft import cli, data
from mathsft.io import PROBLEM_SCHEMA, SCORED_SCHEMA, TRAJECTORY_SCHEMA, read_parquet, write_parquet
from mathsft.reward import RewardSettings, score_rows
from mathsft.serve import exit_on_sigterm


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", default=None, help="problems parquet (results/data/shards/NNNNN.parquet)")
    parser.add_argument("--output", default="sft_data.parquet", help="trajectories parquet to write")
    standalone = parser.add_argument_group("standalone (without --shard)")
    standalone.add_argument("--num_samples", type=int, default=1000, help="problems to draw")
    standalone.add_argument("--tasks", nargs="+", default=["chain_sum", "basic_arithmetic", "gsm_symbolic"],
                            help="reasoning-gym tasks to draw from (not decontaminated against any eval set)")
    standalone.add_argument("--data_seed", type=int, default=1)
    standalone.add_argument("--reward_threshold", type=float, default=None,
                            help="score and keep finished traces with reward >= this")
    standalone.add_argument("--reward_timeout_s", type=float, default=RewardSettings.timeout_s,
                            help="per-check time bound of the scoring, in seconds")
    cli.add_sampling_args(parser)
    cli.add_server_args(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cli.setup_logging()
    exit_on_sigterm()

    if args.shard:
        rows = read_parquet(args.shard, PROBLEM_SCHEMA).to_pylist()
    else:
        stream = data.reasoning_gym_problems(args.tasks, args.data_seed)
        rows = data.take_problems(stream, args.num_samples, data.Counts(), set())
    # Finished samples go to the sample store as they arrive: a killed job, rerun, requests only the rest, and a
    # rerun with more samples per problem only the new indices.
    records, summary = cli.sample_from_args(args, rows, args.output, TRAJECTORY_SCHEMA, cli.renderer_from_args(args))
    if args.reward_threshold is None:
        write_parquet(records, args.output, TRAJECTORY_SCHEMA)
    else:
        score_rows(records, workers=RewardSettings.workers, timeout_s=args.reward_timeout_s)
        kept = [r for r in records if r["reward"] >= args.reward_threshold and r["finish_reason"] == "stop"]
        summary["kept"] = len(kept)
        write_parquet(kept, args.output, SCORED_SCHEMA)
    logging.info("summary %s", json.dumps({"shard": args.shard, "problems": len(rows), **summary}))


if __name__ == "__main__":
    main()
