"""How a script's log lines look, and what each process of a training run logs: the first everything, the others
their warnings and their own lines."""

from __future__ import annotations

import logging

# Every script's log line (mathsft.cli.setup_logging).
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# extra= of a line that every process of a run logs, not only the first: what is its own (the step it resumed from).
EVERY_RANK = {"every_rank": True}


def log_as_rank(rank: int) -> None:
    """In a run of several processes, every process but the first logs only warnings, errors and EVERY_RANK lines,
    each naming its rank: one line per step, not one per process (accelerate's and TRL's main-process logging)."""
    if rank == 0:
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or getattr(record, "every_rank", False))
        handler.setFormatter(logging.Formatter(LOG_FORMAT.replace("%(message)s", f"rank {rank}: %(message)s")))
