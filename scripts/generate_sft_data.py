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

from mathsft import cli
from mathsft.reward import RewardSettings
from mathsft.serve import exit_on_sigterm
from mathsft.teacher import sample_shard


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
    sample_shard(cli.sampler_from_args(args), args.output, shard=args.shard, num_samples=args.num_samples,
                 tasks=args.tasks, data_seed=args.data_seed, reward_threshold=args.reward_threshold,
                 reward=RewardSettings(timeout_s=args.reward_timeout_s))


if __name__ == "__main__":
    main()
