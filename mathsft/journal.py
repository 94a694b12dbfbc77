"""A per-shard append-only journal of finished samples, so a killed generation job resumes without
losing or repeating samples. It lives beside the declared output (Snakemake deletes declared outputs
before a rerun) and is removed once the output is complete."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
VERSION = 1


def journal_path(output: str | os.PathLike) -> Path:
    """Where the journal of `output` lives: a hidden file beside it, never a declared output."""
    output = Path(output)
    return output.with_name(f".{output.name}.journal.jsonl")


class Journal:
    """Records keyed by (row_index, sample_index), valid only for one fingerprint (model, sampling
    settings, prompt template, the rows): a journal written under other settings is set aside unused."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], fsync_every_s: float = 1.0):
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.fsync_every_s = fsync_every_s
        self._file = None
        self._last_sync = 0.0

    def load(self) -> dict[tuple[int, int], dict]:
        """Finished records from an earlier run (first of any duplicate kept; a torn last line skipped)."""
        if not self.path.exists():
            return {}
        records: dict[tuple[int, int], dict] = {}
        torn = 0
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if not header or header.get("journal") != VERSION or header.get("fingerprint") != self.fingerprint:
            stale = self.path.with_name(self.path.name + f".stale-{int(time.time())}")
            os.replace(self.path, stale)
            log.warning("journal %s was written under other settings; set aside as %s", self.path, stale.name)
            return {}
        for line in lines[1:]:
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn += 1  # a write cut short by a kill: that sample is requested again
                continue
            records.setdefault((record["row_index"], record["sample_index"]), record)
        log.info("journal %s: resuming with %d finished samples (%d torn lines skipped)", self.path, len(records), torn)
        self._rewrite(records)  # drop torn lines and duplicates so appends start on a clean line
        return records

    def _header_line(self) -> str:
        return json.dumps({"journal": VERSION, "fingerprint": self.fingerprint}) + "\n"

    def _rewrite(self, records: dict[tuple[int, int], dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self._header_line())
            for key in sorted(records):
                f.write(json.dumps(records[key]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        """Add one finished sample. Flushed at once (a killed process loses nothing written), fsynced
        at most every fsync_every_s (a crashed node loses at most that much)."""
        if self._file is None:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if new:
                self._file.write(self._header_line())
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        now = time.monotonic()
        if now - self._last_sync >= self.fsync_every_s:
            os.fsync(self._file.fileno())
            self._last_sync = now

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """Delete the journal once its samples are in the final output."""
        self.close()
        self.path.unlink(missing_ok=True)
