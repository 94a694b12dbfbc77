"""Evaluation sampling (run_sft_model.py): a model's answers to the benchmark problems, optionally scored into
eval.json's metrics, and the paired comparison of two models' scored evaluations."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mathsft import data
from mathsft.compare import compare_models, comparison_methods
from mathsft.io import (BENCHMARK_SCHEMA, EVAL_GENERATION_SCHEMA, EVAL_SAMPLE_SCHEMA, EVAL_SCHEMA, read_parquet,
                        write_json, write_parquet)
from mathsft.metrics import check_document, eval_document, package_versions, print_comparisons, print_summary
from mathsft.reward import RewardSettings, score_rows
from mathsft.sampler import Sampler, sample_rows

log = logging.getLogger(__name__)


def sample_benchmarks(sampler: Sampler, benchmark_files: list[str], output: str, label: str,
                      sample_store: str | None = None) -> list[dict]:
    """The samples of the problems in `benchmark_files` (each named by its file's stem), labelled `label` and with
    their problem's metadata (EVAL_GENERATION_SCHEMA rows). Sampled through the sample store of `output`
    (`sample_store`, default: .samples beside it), as a teacher shard is: a killed evaluation resumes, more samples
    add only the new indices, a problem sampled for another output under the same settings is not sampled again."""
    problems, metadata = data.benchmark_problems(
        [(Path(path).stem, read_parquet(path, BENCHMARK_SCHEMA).to_pylist()) for path in benchmark_files])
    records, summary = sample_rows(sampler, problems, output, EVAL_SAMPLE_SCHEMA, sample_store)
    log.info("summary %s", json.dumps({"model": label, **summary}))
    return [r | metadata[r["benchmark"], r["problem_id"]] | {"evaluated_model": label} for r in records]


def evaluate_model(sampler: Sampler, benchmark_files: list[str], output: str, label: str, *, score: bool,
                   pass_k: list[int], eval_json: str | None, reward: RewardSettings,
                   sample_store: str | None = None) -> None:
    """Sample the benchmarks (through `sample_store`: sample_benchmarks) and write the rows to `output`. With
    `score`, score them (EVAL_SCHEMA rows), print the metrics tables of results/eval.json and write its document to
    `eval_json` where given; the pipeline scores in a rule of its own instead, so that a reward change never
    resamples."""
    rows = sample_benchmarks(sampler, benchmark_files, output, label, sample_store)
    if not score:
        write_parquet(rows, output, EVAL_GENERATION_SCHEMA)
        return
    score_rows(rows, reward.workers, reward.timeout_s)
    write_parquet(rows, output, EVAL_SCHEMA)
    document = eval_document({label: rows}, {}, pass_k, None, package_versions(), base_seed=sampler.sampling.seed)
    check_document(document)
    if eval_json:
        write_json(document, eval_json)
    print_summary(document)


def compare_files(model_path: str, baseline_path: str, comparison_seed: int, output: str | None) -> None:
    """Print (and write to `output`) the paired comparisons of the model in `model_path` with the one in
    `baseline_path`, each a scored eval parquet file of one model; `comparison_seed` seeds the bootstrap and the
    permutations."""
    (model, model_rows), (baseline, baseline_rows) = (_labelled_rows(model_path), _labelled_rows(baseline_path))
    if model == baseline:
        model, baseline = model_path, baseline_path
    try:
        comparisons = compare_models(model, model_rows, baseline, baseline_rows, comparison_seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if not comparisons:
        raise SystemExit(f"{model_path} and {baseline_path} share no benchmark; nothing to compare")
    if output:
        write_json({"comparison_methods": comparison_methods(comparison_seed), "comparisons": comparisons}, output)
    print_comparisons(comparisons)


def _labelled_rows(path: str) -> tuple[str, list[dict]]:
    """The evaluated model's label and the rows of a scored eval parquet file holding one model."""
    rows = read_parquet(path, EVAL_SCHEMA).to_pylist()
    labels = sorted({row["evaluated_model"] for row in rows})
    if len(labels) != 1:
        raise SystemExit(f"{path}: expected the rows of one evaluated model, found {len(labels)} ({', '.join(labels)})")
    return labels[0], rows
