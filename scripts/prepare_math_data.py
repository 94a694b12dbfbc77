#!/usr/bin/env python
"""Prepare training problems, evaluation sets and static shards (the data stage).

Sources: reasoning_gym (the offline generator of the embedded default), hub (Hugging Face datasets, e.g.
DeepScaleR-Preview-Dataset and the AIME/AMC/MATH-500/Minerva/OlympiadBench test sets) or files (local
parquet/jsonl/json), each named in config/datasets.yaml or given with --datasets."""

from __future__ import annotations

import argparse
import json

from mathsft.cli import setup_logging
from mathsft.data_stage import CATALOG, HUB_BENCHMARKS, REASONING_GYM_NUM_SAMPLES, prepare_data_stage


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def _dataset_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="reasoning_gym", choices=["reasoning_gym", "hub", "files"])
    parser.add_argument("--tasks", nargs="+", default=["chain_sum", "basic_arithmetic", "gsm_symbolic"],
                        help="reasoning_gym: tasks to train on")
    parser.add_argument("--train_sets", nargs="+", default=["deepscaler"], help="hub/files: training datasets")
    parser.add_argument("--benchmarks", nargs="+", default=None,
                        help=f"evaluation sets (default: the tasks for reasoning_gym, {' '.join(HUB_BENCHMARKS)} else)")
    parser.add_argument("--datasets", type=json.loads, default={},
                        help="hub/files: JSON {name: {hub|path, split, subset, revision, columns}} over --catalog")
    parser.add_argument("--catalog", default=str(CATALOG), help="YAML of known datasets (config/datasets.yaml)")
    parser.add_argument("--dataset_file", type=_dataset_file, action="append", default=[], metavar="NAME=PATH",
                        help="read dataset NAME from this local file (e.g. a fetched copy of its hub split)")
    parser.add_argument("--num_samples", type=_optional_int, default=None,
                        help=f"training problems to keep (default: {REASONING_GYM_NUM_SAMPLES} for reasoning_gym, "
                             "all usable ones else)")
    parser.add_argument("--shard_size", type=int, default=32)
    parser.add_argument("--eval_problems", type=int, default=16, help="reasoning_gym: problems per benchmark")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training problem order")
    parser.add_argument("--eval_seed", type=int, default=2, help="reasoning_gym: seed of the evaluation sets")
    parser.add_argument("--ngram", type=_optional_int, default=None,
                        help="decontamination word n-gram size (8 as s1/open-r1); None: exact text match only")
    parser.add_argument("--max_problem_chars", type=_optional_int, default=None,
                        help="drop (and count) training problems whose problem + answer text is longer")
    parser.add_argument("--task_options", type=json.loads, default={},
                        help='reasoning_gym: JSON options per task, e.g. {"chain_sum": {"max_terms": 3}}')
    parser.add_argument("--output_dir", default="results/data", help="writes problems.parquet, bench/, shards/")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    setup_logging()
    try:
        prepare_data_stage(
            args.output_dir, source=args.source, tasks=args.tasks, train_sets=args.train_sets,
            benchmarks=args.benchmarks, datasets=args.datasets, catalog=args.catalog,
            dataset_files=dict(args.dataset_file), num_samples=args.num_samples, shard_size=args.shard_size,
            eval_problems=args.eval_problems, seed=args.seed, eval_seed=args.eval_seed, ngram=args.ngram,
            max_problem_chars=args.max_problem_chars, task_options=args.task_options,
        )
    except ValueError as exc:  # bad data or specs: the message names the dataset, file or row
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()
