"""The end-of-run summary a run prints (the Snakefile's onsuccess handler): pass@1, every metric and the paired
comparisons from results/eval.json, then the cost ledger from results/cost.json, for each of them this invocation
wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mathsft.cost import cost_rows, unit_cost_lines
from mathsft.metrics import print_summary, text_table

COST_HEADING = "cost per stage (wall s summed over jobs; GPU s = wall x GPUs asked; CPU s of jobs without GPUs)"


def print_cost(ledger: dict, file=None) -> None:
    """The ledger's table, then the cost per kept trajectory and per significant pass@1 point."""
    file = file or sys.stdout
    print(COST_HEADING, file=file)
    print(text_table(cost_rows(ledger)), file=file)
    for line in unit_cost_lines(ledger):
        print(line, file=file)


def print_run_summary(eval_path: str | Path, cost_path: str | Path, started_at: float | None, file=None) -> None:
    """Print each of eval.json and cost.json that exists and was written at or after started_at (all that exist
    when it is None)."""
    file = file or sys.stdout
    for path, printer in ((Path(eval_path), print_summary), (Path(cost_path), print_cost)):
        if path.exists() and (started_at is None or path.stat().st_mtime >= started_at):
            print("", file=file)
            printer(json.loads(path.read_text()), file=file)
