#!/usr/bin/env python
"""Gather per-model evaluation rows into results/eval.json (checked against schemas/eval.schema.json) and print
pass@1 ± stderr per model x benchmark, then every metric."""

from __future__ import annotations

import argparse

from mathsft.metrics import print_summary, write_eval_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", nargs="+", required=True, help="results/eval/{model}.parquet files")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model_id", action="append", default=[], metavar="LABEL=ID", help="model id per label")
    parser.add_argument("--pass_k", type=int, nargs="*", default=[1], help="k of pass@k and maj@k")
    parser.add_argument("--seed", type=int, default=None,
                        help="base sampling seed (eval.seed); every sample's request seed is checked against it")
    parser.add_argument("--config_hash", default=None)
    args = parser.parse_args()
    model_ids = dict(item.split("=", 1) for item in args.model_id)
    try:
        document = write_eval_summary(args.inputs, args.output, model_ids, args.pass_k, args.config_hash, args.seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    print_summary(document)


if __name__ == "__main__":
    main()
