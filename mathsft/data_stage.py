"""The data stage: reads the datasets a config names (or generates reasoning-gym problems), prepares them
(mathsft.data) and writes the training problems, their static shards, the evaluation sets and a report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mathsft import data, sources
from mathsft.io import BENCHMARK_SCHEMA, PROBLEM_SCHEMA, write_json, write_parquet

CATALOG = Path(__file__).resolve().parents[1] / "config" / "datasets.yaml"
# What a run by hand prepares when it names no benchmarks or no number of problems.
HUB_BENCHMARKS = ["aime24", "amc23", "math500", "minerva", "olympiadbench"]
REASONING_GYM_NUM_SAMPLES = 64


def dataset_tables(names: list[str], specs: dict[str, sources.DatasetSpec], files: dict[str, str]) -> dict:
    """Rows of each named dataset: from a given local file (`files`: name -> path), its own path, or the hub."""
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


def prepare_data_stage(output_dir: str | Path, *, source: str, tasks: list[str], train_sets: list[str],
                       benchmarks: list[str] | None, datasets: dict[str, dict], catalog: str | Path,
                       dataset_files: dict[str, str], num_samples: int | None, shard_size: int, eval_problems: int,
                       seed: int, eval_seed: int, ngram: int | None, max_problem_chars: int | None,
                       task_options: dict[str, dict]) -> dict:
    """Write problems.parquet, shards/{shard}.parquet, bench/{benchmark}.parquet and report.json under
    `output_dir`, and return the report. reasoning_gym draws `tasks` (and evaluation sets of `benchmarks`, default
    the tasks); hub and files read `train_sets` and `benchmarks` (default HUB_BENCHMARKS), specs from `datasets`
    over `catalog`, each from its file in `dataset_files` where it has one. num_samples None: 64 generated
    problems, or every usable dataset row."""
    if source == "reasoning_gym":
        train, bench_sets, report = data.prepare_reasoning_gym(
            tasks, benchmarks or tasks, num_samples or REASONING_GYM_NUM_SAMPLES, eval_problems, seed, eval_seed,
            ngram, task_options,
        )
    else:
        benchmarks = benchmarks or HUB_BENCHMARKS
        specs = sources.resolve_specs(train_sets + benchmarks, sources.read_catalog(catalog), datasets)
        sources.check_source(source, {name: spec.hub for name, spec in specs.items()}, local=dataset_files)
        train, bench_sets, report = data.prepare_datasets(
            dataset_tables(train_sets, specs, dataset_files), dataset_tables(benchmarks, specs, dataset_files),
            num_samples, seed, ngram, max_problem_chars,
        )
    out = Path(output_dir)
    for bench, rows in bench_sets.items():
        write_parquet(rows, out / "bench" / f"{bench}.parquet", BENCHMARK_SCHEMA)
    # Training problems leave level and subject out: only evaluation reads them, and shards the teacher has
    # sampled keep their bytes.
    for index, (start, stop) in enumerate(data.shard_bounds(len(train), shard_size)):
        write_parquet(train[start:stop], out / "shards" / f"{data.shard_name(index)}.parquet", PROBLEM_SCHEMA)
    write_parquet(train, out / "problems.parquet", PROBLEM_SCHEMA)
    write_json(report, out / "report.json")
    logging.info("summary %s", json.dumps({"kept": len(train), "train": report["train"],
                                            "benchmarks": {b: len(r) for b, r in bench_sets.items()}}))
    return report
