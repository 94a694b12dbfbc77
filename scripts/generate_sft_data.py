#!/usr/bin/env python
"""Sample teacher trajectories for one shard of problems (the teacher stage)."""

from __future__ import annotations

import argparse
import json
import logging

from mathsft import cli
from mathsft.generate import sample
from mathsft.io import PROBLEM_SCHEMA, TRAJECTORY_SCHEMA, read_parquet, write_parquet
from mathsft.serve import exit_on_sigterm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shard", required=True, help="problems parquet (results/data/shards/NNNNN.parquet)")
    parser.add_argument("--output", required=True, help="trajectories parquet to write")
    cli.add_sampling_args(parser, samples=4, max_tokens=8192)
    cli.add_server_args(parser)
    args = parser.parse_args()
    cli.setup_logging()
    exit_on_sigterm()

    rows = read_parquet(args.shard, PROBLEM_SCHEMA).to_pylist()
    with cli.serving_from_args(args, default_log=args.output + ".server.log") as (base_url, check_alive):
        records, summary = sample(rows, base_url, args.served_model_name, args.prompt_template,
                                  cli.sampling_from_args(args), cli.client_settings_from_args(args),
                                  api_key=cli.api_key_from_args(args), check_alive=check_alive)
    write_parquet(records, args.output, TRAJECTORY_SCHEMA)
    logging.info("summary %s", json.dumps({"shard": args.shard, "problems": len(rows), **summary}))


if __name__ == "__main__":
    main()
