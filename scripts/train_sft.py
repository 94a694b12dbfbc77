#!/usr/bin/env python
"""Fine-tune the student on the curated SFT set with DeepSpeed (the train stage).

One process on a CPU; on GPUs launch with `torchrun --nproc_per_node N scripts/train_sft.py ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mathsft.cli import setup_logging
from mathsft.io import write_json
from mathsft.serve import exit_on_sigterm
from mathsft.settings import add_dataclass_arguments, from_args
from mathsft.train import TrainingDiverged, train
from mathsft.train_settings import ConfigError, TrainConfig, one_or_several

# TrainConfig's inputs and outputs: their options, required and some named otherwise, are written out below.
PATH_FIELDS = ("model", "train_path", "val_path", "output_dir", "deepspeed_config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model to start from (seed: model.partial_pretrain)")
    parser.add_argument("--train_files", required=True, nargs="+",
                        help="curated train parquet file(s), read in the order given as one training set")
    parser.add_argument("--val_files", required=True, nargs="+",
                        help="curated val parquet file(s), read in the order given; missing ones are skipped")
    parser.add_argument("--output_dir", required=True, help="Hugging Face folder to export")
    parser.add_argument("--metrics", required=True, help="training metrics jsonl to write")
    parser.add_argument("--summary", required=True, help="training summary json to write")
    parser.add_argument("--deepspeed", required=True, help="DeepSpeed JSON (config/deepspeed/*.json)")
    # The remaining options are TrainConfig's fields.
    add_dataclass_arguments(parser, TrainConfig, exclude=PATH_FIELDS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the parsed options; one file each keeps the plain path (its recorded config and
    its checkpoints' fingerprint stay those of runs before several files were taken)."""
    return from_args(TrainConfig, args, train_path=one_or_several(args.train_files),
                     val_path=one_or_several(args.val_files), deepspeed_config=args.deepspeed)


def main() -> None:
    args = build_parser().parse_args()
    setup_logging()
    # SIGTERM (scancel, a SLURM time limit; torchrun forwards it to every rank) ends the run through `finally`
    # blocks: a first start's extension build releases its lock, which would otherwise stall every later start.
    exit_on_sigterm()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = train_config(args)
    try:
        summary = train(cfg, args.metrics)
    except (ConfigError, TrainingDiverged) as exc:
        sys.exit(f"error: {exc}")
    write_json(summary, args.summary)
    logging.info("summary %s", json.dumps({k: v for k, v in summary.items() if k != "config"}))


if __name__ == "__main__":
    main()
