#!/usr/bin/env python
"""Fetch one split of a Hugging Face hub dataset into a local parquet file, all columns kept (a local rule:
compute nodes often have no internet). The data stage then reads it through the dataset's column mapping."""

from __future__ import annotations

import argparse
import logging

from mathsft.cli import setup_logging
from mathsft.io import write_parquet
from mathsft.sources import DatasetSpec, load_hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="the dataset's name in the config")
    parser.add_argument("--hub", required=True, help="dataset id, e.g. agentica-org/DeepScaleR-Preview-Dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--subset", default=None, help="the dataset's config name, if it has several")
    parser.add_argument("--revision", default=None, help="a commit or tag to pin")
    parser.add_argument("--output", required=True, help="parquet file to write")
    args = parser.parse_args()
    setup_logging()
    spec = DatasetSpec(name=args.name, hub=args.hub, split=args.split, subset=args.subset, revision=args.revision)
    table = load_hub(spec)
    write_parquet(table, args.output, table.schema)
    logging.info("summary {\"dataset\": %r, \"rows\": %d, \"columns\": %r}", args.name, table.num_rows, table.column_names)


if __name__ == "__main__":
    main()
