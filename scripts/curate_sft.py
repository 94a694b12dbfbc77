#!/usr/bin/env python
"""Curate the SFT train/val sets from scored trajectories with one DuckDB query (the curate stage)."""

from __future__ import annotations

import argparse
import json
import logging

from mathsft.cli import setup_logging
from mathsft.curate import SELECTIONS, curate
from mathsft.io import write_sha256sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", nargs="+", required=True, help="scored parquet shards")
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--stats", required=True, help="stats.json: the funnel, split sizes, params and the SQL")
    parser.add_argument("--sha256sums", default=None,
                        help="also write the train/val files' sha256 here (sha256sum's format): the curated set's "
                             "identity, by which the workflow skips retraining when a rerun keeps the same set")
    parser.add_argument("--reward_threshold", type=float, default=1.0,
                        help="keep traces with reward >= this (rLLM's 0.0 would keep wrong answers)")
    parser.add_argument("--max_length", type=int, required=True,
                        help="the training max length (train.max_length): traces whose prompt + completion "
                             "tokens exceed it are dropped and counted, never truncated")
    parser.add_argument("--max_traces_per_problem", type=int, default=4)
    parser.add_argument("--selection", choices=SELECTIONS, default="shortest",
                        help="which traces of a problem to keep: the shortest, or a random choice fixed by --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --selection random")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None,
                        help="DuckDB threads (default: all cores); the outputs do not depend on it")
    args = parser.parse_args()
    setup_logging()
    stats = curate(args.inputs, args.train, args.val, args.stats, args.reward_threshold,
                   args.max_traces_per_problem, args.val_fraction, max_length=args.max_length,
                   selection=args.selection, seed=args.seed, threads=args.threads)
    if args.sha256sums:
        write_sha256sums([args.train, args.val], args.sha256sums)
    logging.info("summary %s", json.dumps({key: stats[key] for key in ("funnel", "dropped", "problems", "splits")}))


if __name__ == "__main__":
    main()
