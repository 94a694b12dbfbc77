#!/usr/bin/env python
"""Stop before installing a GPU lock whose CUDA build this machine's NVIDIA driver cannot run (setup.sh calls it
with the system Python and PYTHONPATH=. before the venv exists). Exit 0 with a line to print, or 1 with why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mathsft.cuda_driver import SKIP_VARIABLE, check_driver, read_driver_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lock", type=Path, required=True, help="the GPU lock setup.sh is about to install")
    args = parser.parse_args()
    try:
        result = check_driver(args.lock, read_driver_version())
    except (RuntimeError, ValueError, OSError) as exc:
        sys.exit(f"setup: the NVIDIA driver could not be checked ({exc}); nothing was installed. Where the GPU "
                 f"nodes are not this machine, set {SKIP_VARIABLE}=1 to install here anyway.")
    if not result.ok:
        sys.exit(f"setup: {result.message}")
    print(f"setup: {result.message}")


if __name__ == "__main__":
    main()
