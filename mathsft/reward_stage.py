"""The reward stage over files: samples parquet files in (a teacher shard, or a model's evaluation parts), the same
rows scored with math-verify out (mathsft.reward), and optionally the output's sha256 for early cutoff."""

from __future__ import annotations

import json
import logging

from mathsft.io import SCORING_SCHEMAS, read_parquet, write_parquet, write_sha256sums
from mathsft.reward import RewardSettings, score_rows, status_counts


def score_file(input_paths: list[str], output_path: str, kind: str, settings: RewardSettings,
               sha256sums_path: str | None = None) -> dict[str, int]:
    """Score the `kind` samples (SCORING_SCHEMAS: teacher | eval) of `input_paths`, in their order (a model's
    evaluation parts), and write them to `output_path`, and the output's sha256 to `sha256sums_path` if given.
    Returns how many rows got each verifier status."""
    in_schema, out_schema = SCORING_SCHEMAS[kind]
    rows = [row for path in input_paths for row in read_parquet(path, in_schema).to_pylist()]
    counts = status_counts(score_rows(rows, settings.workers, settings.timeout_s))
    write_parquet(rows, output_path, out_schema)
    if sha256sums_path:
        write_sha256sums([output_path], sha256sums_path)
    logging.info("summary %s", json.dumps({"inputs": input_paths, "rows": len(rows), **counts}))
    return counts
