#!/usr/bin/env python
"""Prepare training problems, evaluation sets and static shards (the data stage).

Sources: reasoning_gym (the offline generator of the embedded default), hub (Hugging Face datasets, e.g.
DeepScaleR-Preview-Dataset and the AIME/AMC/MATH-500/Minerva/OlympiadBench test sets) or files (local
parquet/jsonl/json), each named in config/datasets.yaml or given with --datasets."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from mathsft import data, sources
from mathsft.cli import setup_logging
from mathsft.io import BENCHMARK_SCHEMA, PROBLEM_SCHEMA, write_json, write_parquet

CATALOG = Path(__file__).resolve().parent.parent / "config" / "datasets.yaml"
HUB_BENCHMARKS = ["aime24", "amc23", "math500", "minerva", "olympiadbench"]


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "") else int(text)


def _dataset_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def dataset_tables(names, specs, files):
    """Rows of each named dataset: from a given local file (--dataset_file), its own path, or the hub."""
    rows = {}
    for name in names:
        spec = specs[name]
        if name in files:
            table, origin = sources.read_table(files[name]), files[name]
        else:
            table, origin = sources.load_spec(spec)
        logging.info("%s: %d rows from %s", name, table.num_rows, origin)
        rows[name] = sources.dataset_rows(spec, table, origin)
    return rows


def main() -> None:
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
                        help="training problems to keep (default: 64 for reasoning_gym, all usable ones else)")
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
    args = parser.parse_args()
    setup_logging()

    if args.source == "reasoning_gym":
        train, bench_sets, report = data.prepare_reasoning_gym(
            args.tasks, args.benchmarks or args.tasks, args.num_samples or 64, args.eval_problems, args.seed,
            args.eval_seed, args.ngram, args.task_options,
        )
    else:
        benchmarks = args.benchmarks or HUB_BENCHMARKS
        catalog = yaml.safe_load(Path(args.catalog).read_text()) or {}
        specs = sources.resolve_specs(args.train_sets + benchmarks, catalog, args.datasets)
        files = dict(args.dataset_file)
        if args.source == "files":
            remote = [name for name, spec in specs.items() if spec.hub and name not in files]
            if remote:
                parser.error(f"--source files but {', '.join(remote)} name a hub dataset; use --source hub")
        train, bench_sets, report = data.prepare_datasets(
            dataset_tables(args.train_sets, specs, files), dataset_tables(benchmarks, specs, files),
            args.num_samples, args.seed, args.ngram, args.max_problem_chars,
        )
    out = Path(args.output_dir)
    for bench, rows in bench_sets.items():
        write_parquet(rows, out / "bench" / f"{bench}.parquet", BENCHMARK_SCHEMA)
    # Training problems leave level and subject out: only evaluation reads them, and shards the teacher has
    # sampled keep their bytes.
    for k, (start, stop) in enumerate(data.shard_bounds(len(train), args.shard_size)):
        write_parquet(train[start:stop], out / "shards" / f"{k:05d}.parquet", PROBLEM_SCHEMA)
    write_parquet(train, out / "problems.parquet", PROBLEM_SCHEMA)
    write_json(report, out / "report.json")
    logging.info("summary %s", json.dumps({"kept": len(train), "train": report["train"],
                                            "benchmarks": {b: len(r) for b, r in bench_sets.items()}}))


if __name__ == "__main__":
    main()
