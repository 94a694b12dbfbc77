#!/usr/bin/env python
"""Evaluate one model on the benchmark sets: serve it, sample n answers per problem with the training
prompt, score them with math-verify and print the same metrics tables as the pipeline's results/eval.json
(--no-score: only sample; the pipeline scores in a rule of its own, so a reward change never resamples).
--compare MODEL.parquet BASELINE.parquet: no sampling; compare two models' scored rows as eval.json does (paired
over problems: pass@1 delta, its stderr, bootstrap 95% CI, permutation p-value)."""

from __future__ import annotations

import argparse
import glob

from mathsft import cli
from mathsft.reward import RewardSettings
from mathsft.sample_eval import compare_files, evaluate_model
from mathsft.serve import exit_on_sigterm


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default=None, help="name of the evaluated model in outputs (default: --model)")
    parser.add_argument("--benchmarks", nargs="+", default=sorted(glob.glob("results/data/bench/*.parquet")),
                        help="benchmark parquet files (default: results/data/bench/*.parquet)")
    parser.add_argument("--output", default="eval_samples.parquet", help="per-sample rows to write")
    parser.add_argument("--sample_store", default=None,
                        help="the sample store's folder, in a folder above --output (default: .samples beside it); "
                             "samples of the same model and settings are found there by problem, whichever output "
                             "they were drawn for")
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
    evaluate_model(cli.sampler_from_args(args), args.benchmarks, args.output, args.label or args.model,
                   score=args.score, pass_k=args.pass_k, eval_json=args.eval_json,
                   reward=RewardSettings(timeout_s=args.reward_timeout_s, workers=args.workers),
                   sample_store=args.sample_store)


if __name__ == "__main__":
    main()
