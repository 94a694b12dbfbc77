#!/usr/bin/env python
"""Curate the SFT train/val sets from scored trajectories with one DuckDB query (the curate stage)."""

from __future__ import annotations

import argparse
import json
import logging

from mathsft.cli import setup_logging
from mathsft.curate import curate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", nargs="+", required=True, help="scored parquet shards")
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--reward_threshold", type=float, default=1.0,
                        help="keep traces with reward >= this (rLLM's 0.0 would keep wrong answers)")
    parser.add_argument("--max_traces_per_problem", type=int, default=4)
    parser.add_argument("--val_fraction", type=float, default=0.1)
    args = parser.parse_args()
    setup_logging()
    stats = curate(args.inputs, args.train, args.val, args.stats, args.reward_threshold,
                   args.max_traces_per_problem, args.val_fraction)
    logging.info("summary %s", json.dumps({"funnel": stats["funnel"], "splits": stats["splits"]}))


if __name__ == "__main__":
    main()
