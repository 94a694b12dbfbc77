#!/usr/bin/env python
"""Write the cost ledger, results/cost.json (mathsft.cost): per stage wall and device seconds, tokens and peak
memory from the jobs' benchmark files, the records and the training metrics; checked against
schemas/cost.schema.json."""

from __future__ import annotations

import argparse

from mathsft.cost import Job, build_ledger
from mathsft.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", nargs="+", required=True, type=Job.parse, metavar="STAGE:NAME:GPUS:BENCHMARK",
                        help="every job the ledger counts, with the GPUs it asked for and its benchmark file")
    parser.add_argument("--teacher_samples", nargs="*", default=[], help="results/teacher/{shard}.parquet files")
    parser.add_argument("--eval_samples", nargs="*", default=[], help="results/eval/generations/{model}/{part}.parquet")
    parser.add_argument("--train_metrics", nargs="*", default=[], help="results/train/{run}/metrics.jsonl")
    parser.add_argument("--curate_stats", default=None, help="results/sft/stats.json (the kept trajectories)")
    parser.add_argument("--eval_json", default=None, help="results/eval.json (the paired comparisons)")
    parser.add_argument("--invocation_start_file", required=True,
                        help="the invocation's start time, written by the Snakefile's onstart handler")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    try:
        ledger = build_ledger(args.job, args.teacher_samples, args.eval_samples, args.train_metrics,
                              args.curate_stats, args.eval_json, args.invocation_start_file)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    write_json(ledger, args.output)


if __name__ == "__main__":
    main()
