#!/usr/bin/env python
"""Score sampled responses with math-verify (the reward stage, for teacher shards and eval samples)."""

from __future__ import annotations

import argparse

from mathsft.cli import setup_logging
from mathsft.io import SCORING_SCHEMAS
from mathsft.reward import RewardSettings
from mathsft.reward_stage import score_file
from mathsft.serve import exit_on_sigterm
from mathsft.settings import add_dataclass_arguments, from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", nargs="+", required=True,
                        help="samples parquet files, scored into one output in this order "
                             "(results/teacher/NNNNN.parquet; a model's results/eval/generations/MODEL/*.parquet)")
    parser.add_argument("--output", required=True, help="scored parquet to write")
    parser.add_argument("--sha256sums", default=None,
                        help="also write the output's sha256 here (sha256sum's format): its identity, by which the "
                             "workflow skips what comes after when a rescoring changes no score")
    parser.add_argument("--kind", choices=sorted(SCORING_SCHEMAS), default="teacher", help="which samples")
    add_dataclass_arguments(parser, RewardSettings)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    setup_logging()
    # SIGTERM (scancel, a SLURM time limit) ends scoring through its `finally`, which kills the workers: a busy
    # one would otherwise keep a core until its check ends, however long that is.
    exit_on_sigterm()
    score_file(args.input, args.output, args.kind, from_args(RewardSettings, args), args.sha256sums)


if __name__ == "__main__":
    main()
