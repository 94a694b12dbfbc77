#!/usr/bin/env python
"""Evaluate one model on the benchmark sets: serve it, sample n answers per problem with the training
prompt, score them with math-verify and print the same metrics tables as the pipeline's results/eval.json
(--no-score: only sample; the pipeline scores in a rule of its own, so a reward change never resamples).
--compare MODEL.parquet BASELINE.parquet: no sampling; compare two models' scored rows as eval.json does (paired
over problems: pass@1 delta, its stderr, bootstrap 95% CI, permutation p-value)."""

from __future__ import annotations

import argparse
import glob
import json
import logging
from pathlib import Path

from mathsft import cli, data
from mathsft.compare import comparison_methods, compare_models
from mathsft.metrics import check_document, eval_document, package_versions, print_comparisons, print_summary
from mathsft.io import (BENCHMARK_SCHEMA, EVAL_GENERATION_SCHEMA, EVAL_SAMPLE_SCHEMA, EVAL_SCHEMA, read_parquet,
                        write_json, write_parquet)
from mathsft.reward import RewardSettings, score_rows
from mathsft.serve import exit_on_sigterm


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default=None, help="name of the evaluated model in outputs (default: --model)")
    parser.add_argument("--benchmarks", nargs="+", default=sorted(glob.glob("results/data/bench/*.parquet")),
                        help="benchmark parquet files (default: results/data/bench/*.parquet)")
    parser.add_argument("--output", default="eval_samples.parquet", help="per-sample rows to write")
    parser.add_argument("--score", action=argparse.BooleanOptionalAction, default=True,
                        help="score with math-verify and print metrics (default) or only sample")
    parser.add_argument("--pass_k", type=int, nargs="*", default=[1], help="k of pass@k and maj@k")
    parser.add_argument("--eval_json", default=None,
                        help="also write the metrics as an eval.json document (schemas/eval.schema.json)")
    parser.add_argument("--reward_timeout_s", type=float, default=RewardSettings.timeout_s,
                        help="per-check time bound of the scoring, in seconds")
    parser.add_argument("--workers", type=int, default=RewardSettings.workers, help="math-verify worker processes")
    parser.add_argument("--compare", nargs=2, default=None, metavar=("MODEL", "BASELINE"),
                        help="scored eval parquet files (e.g. results/eval/sft.parquet results/eval/student.parquet): "
                             "print MODEL - BASELINE per benchmark, paired over problems, bootstrap and permutations "
                             "seeded with --seed; nothing is sampled")
    parser.add_argument("--comparisons_json", default=None,
                        help="with --compare: also write the comparisons and their methods as JSON")
    cli.add_sampling_args(parser)
    cli.add_server_args(parser, model_required=False)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.compare:
        compare_files(*args.compare, args.seed, args.comparisons_json)
        return
    if args.model is None:
        parser.error("the following arguments are required: --model (or --compare)")
    cli.setup_logging()
    exit_on_sigterm()
    if not args.benchmarks:
        parser.error("no benchmark files given and none found under results/data/bench/")
    label = args.label or args.model

    problems, metadata = data.benchmark_problems(
        [(Path(path).stem, read_parquet(path, BENCHMARK_SCHEMA).to_pylist()) for path in args.benchmarks])
    # Through the sample store, as a teacher shard: a killed evaluation resumes, more samples add only new indices.
    records, summary = cli.sample_from_args(args, problems, args.output, EVAL_SAMPLE_SCHEMA,
                                            cli.renderer_from_args(args))
    rows = [r | metadata[r["benchmark"], r["problem_id"]] | {"evaluated_model": label} for r in records]
    logging.info("summary %s", json.dumps({"model": label, **summary}))
    if not args.score:
        write_parquet(rows, args.output, EVAL_GENERATION_SCHEMA)
        return
    score_rows(rows, args.workers, args.reward_timeout_s)
    write_parquet(rows, args.output, EVAL_SCHEMA)
    document = eval_document({label: rows}, {}, args.pass_k, None, package_versions(),
                             seed=args.seed)
    check_document(document)
    if args.eval_json:
        write_json(document, args.eval_json)
    print_summary(document)


def compare_files(model_path: str, baseline_path: str, seed: int, output: str | None) -> None:
    """Print (and write to `output`) the paired comparisons of the model in `model_path` with the one in
    `baseline_path`, each a scored eval parquet file of one model."""
    (model, model_rows), (baseline, baseline_rows) = (_labelled_rows(model_path), _labelled_rows(baseline_path))
    if model == baseline:
        model, baseline = model_path, baseline_path
    try:
        comparisons = compare_models(model, model_rows, baseline, baseline_rows, seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if not comparisons:
        raise SystemExit(f"{model_path} and {baseline_path} share no benchmark; nothing to compare")
    if output:
        write_json({"comparison_methods": comparison_methods(seed), "comparisons": comparisons}, output)
    print_comparisons(comparisons)


def _labelled_rows(path: str) -> tuple[str, list[dict]]:
    """The evaluated model's label and the rows of a scored eval parquet file holding one model."""
    rows = read_parquet(path, EVAL_SCHEMA).to_pylist()
    labels = sorted({row["evaluated_model"] for row in rows})
    if len(labels) != 1:
        raise SystemExit(f"{path}: expected the rows of one evaluated model, found {len(labels)} ({', '.join(labels)})")
    return labels[0], rows


if __name__ == "__main__":
    main()
