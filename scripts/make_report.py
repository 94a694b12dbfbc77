#!/usr/bin/env python
"""Write results/report.html: one self-contained page with the metrics table and bars, the paired comparisons
with the student and teacher (delta bars with 95% intervals, and their table), response-length histograms,
training loss and learning-rate curves, the curation funnel and the cost ledger of a run."""

from __future__ import annotations

import argparse

from mathsft.report import build_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", required=True, help="results/eval.json")
    parser.add_argument("--samples", nargs="*", default=[], help="results/eval/{model}.parquet files (response lengths)")
    parser.add_argument("--train_metrics", nargs="*", default=[], help="results/train/{run}/metrics.jsonl files")
    parser.add_argument("--curation", nargs="?", default=None, help="results/sft/stats.json (the curation funnel)")
    parser.add_argument("--cost", default=None, help="results/cost.json (the cost ledger)")
    parser.add_argument("--output", default="results/report.html")
    args = parser.parse_args()
    try:
        build_report(args.eval, args.samples, args.train_metrics, args.curation, args.output, args.cost)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"make_report: {exc}") from exc
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
