#!/usr/bin/env python
"""Gather per-model evaluation rows into results/eval.json and print pass@1 ± stderr per model x benchmark."""

from __future__ import annotations

import argparse

from mathsft.evaluate import eval_document, package_versions, summary_table
from mathsft.io import EVAL_SCHEMA, read_parquet, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", nargs="+", required=True, help="results/eval/{model}.parquet files")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model_id", action="append", default=[], metavar="LABEL=ID", help="model id per label")
    parser.add_argument("--pass_k", type=int, nargs="*", default=[1])
    parser.add_argument("--config_hash", default=None)
    args = parser.parse_args()
    rows_by_model = {}
    for path in args.inputs:
        rows = read_parquet(path, EVAL_SCHEMA).to_pylist()
        if not rows:
            raise SystemExit(f"{path}: no evaluation rows")
        rows_by_model[rows[0]["evaluated_model"]] = rows
    model_ids = dict(item.split("=", 1) for item in args.model_id)
    document = eval_document(rows_by_model, model_ids, args.pass_k, args.config_hash, package_versions())
    write_json(document, args.output)
    print("pass@1 (%) ± stderr, mean over n samples per problem")
    print(summary_table(document))


if __name__ == "__main__":
    main()
