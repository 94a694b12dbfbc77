"""The sample store: per model and sampling settings (a fingerprint: everything that decides a sample but its
problem and index), a folder of append-only journals of finished samples, one per output (a teacher shard, a
model's evaluation), each written only by the job that samples that output. A sample is found by its problem
(mathsft.generate.problem_key: the problem's id and a digest of its text and gold answer) and its index, in any
journal of the folder: a killed job resumes without losing or repeating samples; a rerun that asks for more
samples per problem requests only the new indices, one that asks for fewer requests nothing; adding, removing or
reordering problems (a benchmark added, a shard grown) requests only the problems no journal holds; switching a
setting back reuses what was sampled under it. It lives in a stage's `.samples` folder (beside the teacher's
shards; beside the evaluated models' folders of parts), never a declared output (Snakemake deletes those before a
rerun).

A stored line is outside input too: it is used only when it is whole and well typed and matches the store's model
and the max_tokens asked for; one that does not is skipped, counted and sampled again. One job at a time samples
an output: it holds the output's lock (hold_output) until it exits."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from mathsft.generate import problem_key, reply_byte_limit, token_count_problem, turn_bytes
from mathsft.io import OPTIONAL_COLUMNS, TRAJECTORY_SCHEMA, fsync_parent

log = logging.getLogger(__name__)
VERSION = 1
# Fields a journaled sample must hold a value in; other fields of the output schema may be null, as a fresh
# sample's may (served_model_name, for one).
_NOT_NULL = ("problem_id", "problem", "answer", "sample_index", "response")
_SURROGATE = re.compile("[\ud800-\udfff]")
HEADER_BYTES = 1 << 20  # a header holds a fingerprint: a few hundred bytes


class StoreInUse(SystemExit):
    """Another process samples this output (it holds the output's lock): the job stops with this message."""


_HELD: dict[Path, int] = {}  # lock file -> open descriptor, held until this process exits


def store_place(output: str | os.PathLike, store: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The sample store an output's samples go to and the output's name in it: `store` (default: the `.samples`
    folder beside `output`) and the output's path below the store's parent folder, without its suffix
    (results/teacher/00000.parquet: results/teacher/.samples, 00000; an evaluation part
    results/eval/generations/sft/aime.parquet in results/eval/generations/.samples: sft/aime)."""
    output = Path(os.path.abspath(output))
    root = Path(os.path.abspath(store)) if store is not None else output.parent / ".samples"
    try:
        name = output.with_suffix("").relative_to(root.parent).as_posix()
    except ValueError:
        raise ValueError(f"{output}: not under {root.parent}, the folder of its sample store {root}") from None
    return root, name


def hold_output(output: str | os.PathLike, store: str | os.PathLike | None = None) -> None:
    """Lock the sample store of `output` for the rest of this process, or raise StoreInUse naming the process that
    holds it (a job left running by a killed Snakemake, or a second run beside the first). The lock is a flock on
    {store}/{output's name}.lock (store_place): the kernel drops it when its holder exits, however it ends."""
    root, name = store_place(output, store)
    lock = root / f"{name}.lock"
    if lock in _HELD:
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "a process"
        os.close(fd)
        raise StoreInUse(f"{output} is being sampled by another job ({holder}), which holds {lock}; it may be one "
                         f"that a killed Snakemake left running: wait for it to end or stop it, then run again") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD[lock] = fd


def store_folder(output: str | os.PathLike, fingerprint: dict[str, Any],
                 store: str | os.PathLike | None = None) -> Path:
    """The folder of the samples drawn under `fingerprint` in the sample store of `output` (store_place):
    {store}/{digest}; the journal of `output` in it is {output's name}.jsonl."""
    return store_place(output, store)[0] / _digest(fingerprint)


def _digest(fingerprint: dict[str, Any]) -> str:
    """A fingerprint's folder name in a store."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


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
    """Why a journal record cannot go into an output of `schema` (and be keyed by problem and sample index),
    or None when it can."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for field in schema:
        if field.name not in record:
            if field.name in OPTIONAL_COLUMNS:  # a record stored before the column existed: null
                continue
            return f"missing key {field.name!r}"
        value = record[field.name]
        if value is None:
            if field.name in _NOT_NULL or not field.nullable:
                return f"{field.name} is null"
        elif not _fits(value, field.type):
            return f"{field.name} is {type(value).__name__} {str(value)[:40]!r}, not {field.type}"
    if record["sample_index"] < 0:
        return f"sample_index {record['sample_index']} is negative"
    return None


class Journal:
    """One output's journal in the store: records keyed by (problem_key, sample_index), valid only for one
    fingerprint (model, sampling settings, prompt template...): a journal written under other settings is set aside
    unused. A record must hold every field of `schema` (the output it ends up in); one that does not is skipped.
    `read_only`: another output's journal (or one written before samples were keyed by problem, `legacy`), read
    and never changed: its damaged lines are skipped, not removed, and a header from other settings leaves it be."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], fsync_every_s: float = 1.0,
                 schema: pa.Schema = TRAJECTORY_SCHEMA, rows: list[dict] | None = None, read_only: bool = False,
                 legacy: bool = False):
        """`rows`: the problem rows the caller samples; they bound how long a line of the journal can be."""
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.fsync_every_s = fsync_every_s
        self.schema = schema
        self.rows = rows
        self.read_only = read_only or legacy
        self.legacy = legacy
        self.skipped = 0  # unreadable record lines found by the last load()
        self._file = None
        self._last_sync = 0.0

    def header_matches(self, header: Any) -> bool:
        """Whether a journal's header says it was written under this journal's fingerprint (a legacy journal's, with
        the digest of its rows, under this fingerprint and any rows)."""
        if not isinstance(header, dict) or header.get("journal") != VERSION:
            return False
        fingerprint = header.get("fingerprint")
        if self.legacy:
            if not isinstance(fingerprint, dict) or "rows" not in fingerprint:
                return False
            fingerprint = {key: value for key, value in fingerprint.items() if key != "rows"}
        return fingerprint == self.fingerprint

    def load(self, problems: set[str] | None = None) -> dict[tuple[str, int], dict]:
        """Finished records from an earlier run (first of any duplicate kept), keyed by (problem_key, sample_index);
        only those of `problems` (problem keys) where given. Unreadable lines (torn by a kill, damaged bytes,
        missing or mistyped fields) and records that do not match the store's model or its max_tokens are skipped
        and counted in `skipped`: those samples are requested again. Only a journal of this output holding such
        lines (or duplicates) is rewritten, with every good record it holds."""
        self.skipped = 0
        if not self.path.exists():
            return {}
        records: dict[tuple[str, int], dict] = {}
        damaged = []
        lines = 0
        ids = None if problems is None else {key.rsplit(":", 1)[0] for key in problems}
        with open(self.path, "rb") as f:
            header_line = f.readline(HEADER_BYTES)
            try:
                header = json.loads(header_line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                header = None
            if not self.header_matches(header):
                f.close()
                why = "was written under other settings" if isinstance(header, dict) else "has an unreadable header"
                if self.read_only:
                    log.warning("journal %s %s; not read", self.path, why)
                    return {}
                stale = self.path.with_name(self.path.name + f".stale-{int(time.time())}")
                os.replace(self.path, stale)
                log.warning("journal %s %s; set aside as %s", self.path, why, stale.name)
                return {}
            ends_clean = header_line.endswith(b"\n")
            for number, raw in enumerate(_bounded_lines(f, self._line_limit()), start=2):
                lines += 1
                ends_clean = raw is None or raw.endswith(b"\n")
                problem = "longer than a sample of this store can be" if raw is None else None
                if ids is not None and raw is not None and _another_problem(raw, ids):
                    continue  # another problem's sample (read first by its id, without parsing the line)
                if raw is not None:
                    try:
                        record = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        problem = "not UTF-8"
                    except (ValueError, RecursionError):
                        problem = "not JSON (torn by a kill?)"
                    else:
                        problem = _record_problem(record, self.schema) or self._mismatch(record)
                if problem is not None:
                    damaged.append(f"line {number}: {problem}")
                    continue
                record.pop("row_index", None)  # where an earlier output held the problem: meaningless here
                key = problem_key(record)
                if problems is None or key in problems:
                    records.setdefault((key, record["sample_index"]), record)
        self.skipped = len(damaged)
        if damaged:
            log.warning("journal %s: %d line(s) skipped, their samples are requested again (%s%s)",
                        self.path, len(damaged), "; ".join(damaged[:3]), "; ..." if len(damaged) > 3 else "")
        log.info("journal %s: %d finished samples (%d lines skipped)", self.path, len(records), self.skipped)
        if not self.read_only and problems is None and (damaged or len(records) < lines or not ends_clean):
            self._rewrite(records)  # only good records, so that appends start on a clean line
        return records

    def _line_limit(self) -> int:
        """The most bytes a record line of this store can take: a reply's text at max_tokens, escaped, plus the row
        (twice: its fields and the prompt messages) and the sample's fields."""
        row_bytes = max((len(json.dumps(row)) for row in self.rows), default=0) if self.rows is not None else 1 << 20
        return reply_byte_limit(int(self.fingerprint.get("max_tokens") or 1 << 16)) + 4 * row_bytes

    def _mismatch(self, record: dict) -> str | None:
        """Why a well-formed record is not a sample of this store's model, or None."""
        model = self.fingerprint.get("model")
        if model is not None and record["model"] != model:
            return f"model {str(record['model'])[:60]!r} is not the store's {model!r}"
        tokens = record.get("completion_tokens")
        if tokens is not None:
            problem = token_count_problem(turn_bytes(record["response"], record.get("reasoning")), tokens,
                                          self.fingerprint.get("max_tokens"))
            if problem:
                return f"its response {problem}"
        return None

    def _header_line(self) -> str:
        return json.dumps({"journal": VERSION, "fingerprint": self.fingerprint}) + "\n"

    def _rewrite(self, records: dict[tuple[int, int], dict]) -> None:
        """Replace the journal by one holding `records`, through a temporary file that a failed write removes."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self._header_line())
                for key in sorted(records):
                    f.write(json.dumps(records[key]) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            hint = ": free some space and run again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise OSError(exc.errno, f"could not rewrite the sample store {self.path} without its damaged lines "
                                     f"({exc.strerror}){hint}; it is unchanged") from exc
        fsync_parent(self.path)  # the rename itself survives a crash of the node

    def append(self, record: dict) -> None:
        """Add one finished sample. Flushed at once (a killed process loses nothing written), fsynced
        at most every fsync_every_s (a crashed node loses at most that much)."""
        if self.read_only:
            raise ValueError(f"{self.path} is another output's journal: read, never written")
        if self._file is None:
            new = not self.path.exists()
            created, folder = [], self.path.parent
            while not folder.is_dir():
                created.append(folder)
                folder = folder.parent
            if created:
                self.path.parent.mkdir(parents=True)
                for folder in reversed(created):  # a new settings' folder: its name too must survive a crash
                    fsync_parent(folder)
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


class SampleStore:
    """The samples of one output under one fingerprint: its own journal ({store}/{digest}/{output's name}.jsonl,
    store_place), which it appends to, and every other journal under the same fingerprint, which it reads: another
    output's in the same folder (an evaluation part's in a subfolder), and those written before samples were keyed
    by problem ({store}/{output stem}.{digest of the fingerprint and rows}.jsonl, whose header names its
    fingerprint). So a finished run moved to this store resamples nothing."""

    def __init__(self, output: str | os.PathLike, fingerprint: dict[str, Any], schema: pa.Schema = TRAJECTORY_SCHEMA,
                 rows: list[dict] | None = None, fsync_every_s: float = 1.0, store: str | os.PathLike | None = None):
        """`store`: the store's folder (store_place; default: .samples beside `output`)."""
        root, name = store_place(output, store)
        self.folder = root / _digest(fingerprint)
        self.fingerprint, self.schema, self.rows = fingerprint, schema, rows
        self.own = Journal(self.folder / f"{name}.jsonl", fingerprint, fsync_every_s, schema, rows)
        self.path = self.own.path
        self.skipped = 0  # damaged lines of this output's own journal, by the last load()
        self.others_skipped = 0  # damaged lines of the other journals read (left as they are)

    def load(self) -> dict[tuple[str, int], dict]:
        """Every sample of the store's journals that this output asks for (its rows' problems, any sample index;
        without rows, every sample of its own journal): its own journal's first, then the others' in name order."""
        records = self.own.load()
        self.skipped, self.others_skipped = self.own.skipped, 0
        if self.rows is None:
            return records
        problems = {problem_key(row) for row in self.rows}
        for journal in self._others():
            for pair, record in journal.load(problems).items():
                records.setdefault(pair, record)
            self.others_skipped += journal.skipped
        if self.others_skipped:
            log.warning("sample store %s: %d damaged line(s) in other outputs' journals skipped",
                        self.folder, self.others_skipped)
        return records

    def _others(self) -> list[Journal]:
        """The other journals this output's samples may be in: the folder's, then the legacy ones beside it whose
        header names this fingerprint."""
        common = dict(schema=self.schema, rows=self.rows, read_only=True)
        found = [Journal(path, self.fingerprint, **common) for path in sorted(self.folder.rglob("*.jsonl"))
                 if path != self.own.path]
        for path in sorted(self.folder.parent.glob("*.jsonl")):
            legacy = Journal(path, self.fingerprint, legacy=True, **common)
            if legacy.header_matches(_read_header(path)):
                found.append(legacy)
        return found

    def append(self, record: dict) -> None:
        self.own.append(record)

    def close(self) -> None:
        self.own.close()

    def remove(self) -> None:
        """Delete this output's journal (the pipeline keeps it: see the module's docstring)."""
        self.own.remove()


_LEADING_ID = re.compile(rb'\{"problem_id": "([0-9A-Za-z_.:/-]{1,200})", ')


def _another_problem(line: bytes, ids: set[str]) -> bool:
    """Whether a record line starts with the id of a problem not in `ids`, as mathsft.generate writes records (the
    row's fields first). A line written otherwise, or damaged at its start, is not known to be: it is parsed whole."""
    match = _LEADING_ID.match(line)
    return match is not None and match.group(1).decode() not in ids


def _read_header(path: Path) -> Any:
    """The header of the journal at `path`, or None where it has no readable one."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.readline(HEADER_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def _bounded_lines(f, limit: int):
    """The lines of binary file `f` (each with its newline, the last maybe without), reading at most `limit` bytes
    of any one line: a longer line is read through and given as None."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            while line and not line.endswith(b"\n"):
                line = f.readline(1 << 20)
            yield None
        else:
            yield line
