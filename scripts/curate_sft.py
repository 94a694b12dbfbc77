#!/usr/bin/env python
"""Curate the SFT train/val sets from scored trajectories with one DuckDB query (the curate stage)."""

from __future__ import annotations

import argparse
import json
import logging

from mathsft.cli import setup_logging
from mathsft.curate import CurateSettings, curate
from mathsft.io import write_sha256sums
from mathsft.settings import add_dataclass_arguments, from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", nargs="+", required=True, help="scored parquet shards")
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--stats", required=True, help="stats.json: the funnel, split sizes, params and the SQL")
    parser.add_argument("--sha256sums", default=None,
                        help="also write the train/val files' sha256 here (sha256sum's format): the curated set's "
                             "identity, by which the workflow skips retraining when a rerun keeps the same set")
    add_dataclass_arguments(parser, CurateSettings)
    parser.add_argument("--threads", type=int, default=None,
                        help="DuckDB threads (default: all cores); the outputs do not depend on it")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    setup_logging()
    stats = curate(args.inputs, args.train, args.val, args.stats, from_args(CurateSettings, args), threads=args.threads)
    if args.sha256sums:
        write_sha256sums([args.train, args.val], args.sha256sums)
    logging.info("summary %s", json.dumps({key: stats[key] for key in ("funnel", "dropped", "problems", "splits")}))


if __name__ == "__main__":
    main()
