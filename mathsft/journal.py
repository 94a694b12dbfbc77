"""The sample store: per output (a teacher shard, a model's evaluation) and per fingerprint (the model and
everything that decides a sample but how many are drawn), an append-only journal of finished samples. A killed
job resumes from it without losing or repeating samples, and it stays after the output is complete: a rerun
that asks for more samples per problem requests only the new indices, one that asks for fewer requests
nothing, and switching a setting back reuses what was sampled under it. It lives in a `.samples` folder
beside the output, never a declared output (Snakemake deletes those before a rerun)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from mathsft.io import TRAJECTORY_SCHEMA, fsync_parent

log = logging.getLogger(__name__)
VERSION = 1
# Fields a journaled sample must hold a value in; other fields of the output schema may be null, as a fresh
# sample's may (served_model_name, for one).
_NOT_NULL = ("row_index", "sample_index", "response")
_SURROGATE = re.compile("[\ud800-\udfff]")


def store_path(output: str | os.PathLike, fingerprint: dict[str, Any]) -> Path:
    """Where the samples of `output` under `fingerprint` live: .samples/{output stem}.{digest}.jsonl beside it."""
    output = Path(output)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return output.parent / ".samples" / f"{output.stem}.{digest}.jsonl"


def _fits(value: Any, type_: pa.DataType) -> bool:
    """Whether a JSON value can go into a parquet column of `type_` as it is."""
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        # A lone surrogate (from a damaged \u escape) reads as JSON but cannot be written as UTF-8.
        return isinstance(value, str) and not _SURROGATE.search(value)
    if pa.types.is_integer(type_):
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        width = type_.bit_width
        low, high = (-(2 ** (width - 1)), 2 ** (width - 1)) if pa.types.is_signed_integer(type_) else (0, 2 ** width)
        return low <= value < high
    if pa.types.is_floating(type_):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if pa.types.is_boolean(type_):
        return isinstance(value, bool)
    try:
        pa.array([value], type=type_)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return False
    return True


def _record_problem(record: Any, schema: pa.Schema) -> str | None:
    """Why a journal record cannot go into an output of `schema` (and be keyed by row and sample index),
    or None when it can."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    fields = [pa.field("row_index", pa.int64(), nullable=False)] + list(schema)
    for field in fields:
        if field.name not in record:
            return f"missing key {field.name!r}"
        value = record[field.name]
        if value is None:
            if field.name in _NOT_NULL or not field.nullable:
                return f"{field.name} is null"
        elif not _fits(value, field.type):
            return f"{field.name} is {type(value).__name__} {str(value)[:40]!r}, not {field.type}"
    for key in ("row_index", "sample_index"):
        if record[key] < 0:
            return f"{key} {record[key]} is negative"
    return None


class Journal:
    """Records keyed by (row_index, sample_index), valid only for one fingerprint (model, sampling
    settings, prompt template, the rows): a journal written under other settings is set aside unused.
    A record must hold every field of `schema` (the output it ends up in); one that does not is skipped."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], fsync_every_s: float = 1.0,
                 schema: pa.Schema = TRAJECTORY_SCHEMA):
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.fsync_every_s = fsync_every_s
        self.schema = schema
        self.skipped = 0  # unreadable record lines found by the last load()
        self._file = None
        self._last_sync = 0.0

    def load(self) -> dict[tuple[int, int], dict]:
        """Finished records from an earlier run (first of any duplicate kept). Unreadable lines (torn by a kill,
        damaged bytes, missing or mistyped fields) are skipped and counted in `skipped`: those samples are
        requested again. The journal is rewritten with only the records returned."""
        self.skipped = 0
        if not self.path.exists():
            return {}
        lines = self.path.read_bytes().split(b"\n")
        try:
            header = json.loads(lines[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            header = None
        readable = isinstance(header, dict)
        if not readable or header.get("journal") != VERSION or header.get("fingerprint") != self.fingerprint:
            stale = self.path.with_name(self.path.name + f".stale-{int(time.time())}")
            os.replace(self.path, stale)
            why = "was written under other settings" if readable else "has an unreadable header"
            log.warning("journal %s %s; set aside as %s", self.path, why, stale.name)
            return {}
        records: dict[tuple[int, int], dict] = {}
        problems = []
        for number, raw in enumerate(lines[1:], start=2):
            if not raw:
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "not UTF-8"
            except (ValueError, RecursionError):
                problem = "not JSON (torn by a kill?)"
            else:
                problem = _record_problem(record, self.schema)
            if problem is not None:
                problems.append(f"line {number}: {problem}")
                continue
            records.setdefault((record["row_index"], record["sample_index"]), record)
        self.skipped = len(problems)
        if problems:
            log.warning("journal %s: %d unreadable line(s) skipped, their samples are requested again (%s%s)",
                        self.path, len(problems), "; ".join(problems[:3]), "; ..." if len(problems) > 3 else "")
        log.info("journal %s: resuming with %d finished samples (%d unreadable lines skipped)", self.path,
                 len(records), self.skipped)
        self._rewrite(records)  # keep only good records, so appends start on a clean line
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
        fsync_parent(self.path)  # the rename itself survives a crash of the node

    def append(self, record: dict) -> None:
        """Add one finished sample. Flushed at once (a killed process loses nothing written), fsynced
        at most every fsync_every_s (a crashed node loses at most that much)."""
        if self._file is None:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if new:
                self._file.write(self._header_line())
                fsync_parent(self.path)  # once: a journal whose name is lost loses every sample in it
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
        """Delete the journal (the pipeline keeps it: see the module's docstring)."""
        self.close()
        self.path.unlink(missing_ok=True)
