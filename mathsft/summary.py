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


def teacher_cap_lines(stats: dict) -> list[str]:
    """What the teacher's max_tokens cost, per source, from the curation statistics (stats.json, teacher_lengths):
    the share of traces cut there and the problems that lost every trace to it."""
    lengths = stats.get("teacher_lengths")
    if not lengths:
        return []
    caps = ", ".join(str(cap) for cap in lengths["max_tokens"])
    lines = [f"teacher traces cut at max_tokens ({caps}), which curation drops:"]
    for source, entry in sorted(lengths["by_source"].items()):
        share = 100 * entry["cut"] / max(entry["samples"], 1)
        lines.append(f"  {source}: {entry['cut']} of {entry['samples']} ({share:.1f}%); "
                     f"{entry['problems_all_cut']} of {entry['problems']} problems lost every trace")
    return lines


def print_teacher_cap(stats: dict, file=None) -> None:
    for line in teacher_cap_lines(stats):
        print(line, file=file or sys.stdout)


def print_run_summary(eval_path: str | Path, cost_path: str | Path, started_at: float | None, file=None,
                      stats_path: str | Path | None = None) -> None:
    """Print each of stats.json's teacher cap (`stats_path`), eval.json and cost.json that exists and was written
    at or after started_at (all that exist when it is None)."""
    file = file or sys.stdout
    printers = [(Path(stats_path), print_teacher_cap)] if stats_path else []
    for path, printer in printers + [(Path(eval_path), print_summary), (Path(cost_path), print_cost)]:
        if path.exists() and (started_at is None or path.stat().st_mtime >= started_at):
            print("", file=file)
            printer(json.loads(path.read_text()), file=file)
