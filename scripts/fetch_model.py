#!/usr/bin/env python
"""Fetch one hub model at its revision into a folder of the run (the local fetch_model rule: compute nodes often
have no internet, and their jobs load the folder offline): safetensors weights, config, tokenizer and generation
config only, checked complete and against the hub's sha256, with a SHA256SUMS manifest and origin.json.
A token for a gated model is read from the environment (HF_TOKEN), never from the command line."""

from __future__ import annotations

import argparse

from mathsft.cli import setup_logging
from mathsft.hub_models import fetch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True, help="model id, e.g. Qwen/Qwen2.5-Math-1.5B")
    parser.add_argument("--revision", default=None, help="a commit (or branch, tag) to fetch; default: main")
    parser.add_argument("--output", required=True, help="the folder to write (replaced whole)")
    args = parser.parse_args()
    setup_logging()
    try:
        fetch(args.hub, args.revision, args.output)
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
