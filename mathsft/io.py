"""Parquet schemas shared by the stages, and atomic writes of parquet and JSON."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

PROBLEM_SCHEMA = pa.schema(
    [
        ("problem_id", pa.string()),  # content hash of the normalised problem text
        ("source", pa.string()),  # dataset or generator name
        ("problem", pa.string()),
        ("answer", pa.string()),  # gold answer, wrapped in $...$ where it was bare
    ]
)

# What a benchmark says about each problem beyond its text, as text (MATH-500: level "1".."5" and subject); null
# where it says nothing. Evaluation groups pass@1 by them. They never decide a sample: the sample store neither
# keys on nor journals them (mathsft.data.benchmark_problems), and training problems do not carry them.
_METADATA_FIELDS = [
    ("level", pa.string()),
    ("subject", pa.string()),
]
METADATA_COLUMNS = tuple(name for name, _ in _METADATA_FIELDS)

# A reasoning model's turn as the server returned it (mathsft.turns): `response` holds the content, and these the
# thought where the server split it off (vLLM's reasoning parser: its `reasoning` field, `reasoning_content` on
# other servers) and whether the prompt ended inside an opened <think>. Samples stored before they existed read
# as null: no thought field, prompt unknown (a finished run is neither resampled nor rescored for them).
_TURN_FIELDS = [
    ("reasoning", pa.string()),
    ("think_prefilled", pa.bool_()),
]

TURN_COLUMNS = frozenset(name for name, _ in _TURN_FIELDS)

# Columns added to a schema after files of it were written: a row or file without them is read and written with
# them null (every other column of the schema is required).
OPTIONAL_COLUMNS = frozenset(METADATA_COLUMNS) | TURN_COLUMNS

# An evaluation set: its problems and their metadata (results/data/bench/{bench}.parquet).
BENCHMARK_SCHEMA = pa.schema(list(PROBLEM_SCHEMA) + [pa.field(name, type_) for name, type_ in _METADATA_FIELDS])

_SAMPLE_FIELDS = [
    ("problem_id", pa.string()),
    ("source", pa.string()),
    ("problem", pa.string()),
    ("answer", pa.string()),
    ("sample_index", pa.int32()),
    ("messages", pa.string()),  # JSON list of the chat messages sent
    ("response", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("model", pa.string()),  # the model id: the weights the server reports it loaded (a path or hub id)
    ("served_model_name", pa.string()),  # the name requests used, where it differs from the model id
    ("prompt_template", pa.string()),
    ("api", pa.string()),  # chat | completions (the chat template applied by us)
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("max_tokens", pa.int32()),
    # The request's seed (mathsft.generate.derive_request_seed of the base seed), stored beside temperature, top_p
    # and max_tokens under the API's own names. It is not renamed request_seed: a renamed column would change the
    # bytes of every stored shard and rerun every finished stage after it.
    ("seed", pa.int64()),
    ("latency_s", pa.float64()),
] + _TURN_FIELDS

TRAJECTORY_SCHEMA = pa.schema(_SAMPLE_FIELDS)

_SCORE_FIELDS = [
    ("extracted_answer", pa.string()),
    ("reward", pa.float64()),
    ("verifier_status", pa.string()),  # correct | wrong | no_answer | timeout | parse_error (mathsft.reward.STATUSES)
]

SCORED_SCHEMA = pa.schema(_SAMPLE_FIELDS + _SCORE_FIELDS)

_EVAL_FIELDS = [("evaluated_model", pa.string()), ("benchmark", pa.string())]

EVAL_GENERATION_SCHEMA = pa.schema(_EVAL_FIELDS + _SAMPLE_FIELDS + _METADATA_FIELDS)

# What evaluation sampling journals per sample: the evaluated model's label and the problem's metadata are added
# only after sampling (a journal written before the metadata existed stays whole).
EVAL_SAMPLE_SCHEMA = pa.schema([("benchmark", pa.string())] + _SAMPLE_FIELDS)

EVAL_SCHEMA = pa.schema(_EVAL_FIELDS + _SAMPLE_FIELDS + _METADATA_FIELDS + _SCORE_FIELDS)

# What the reward stage reads and writes, by kind of samples.
SCORING_SCHEMAS = {"teacher": (TRAJECTORY_SCHEMA, SCORED_SCHEMA), "eval": (EVAL_GENERATION_SCHEMA, EVAL_SCHEMA)}


def write_parquet(rows: Iterable[dict[str, Any]] | pa.Table, path: str | os.PathLike, schema: pa.Schema) -> None:
    """Write rows (dicts or a table) with `schema` to `path` atomically: a temporary name, then rename."""
    if not isinstance(rows, pa.Table):
        rows = list(rows)
        for index, row in enumerate(rows):
            missing = [name for name in schema.names if name not in row and name not in OPTIONAL_COLUMNS]
            if missing:  # from_pylist would silently write nulls
                raise ValueError(f"{path}: row {index} lacks column(s) {', '.join(missing)}")
        rows = pa.Table.from_pylist(rows, schema=schema)
    table = conform(rows, schema)
    # A file of samples that never held a turn's parts (samples stored before the columns existed) is written as it
    # was before them, byte for byte: a finished run's rescoring then reruns nothing after it (early cutoff).
    empty = [name for name in sorted(TURN_COLUMNS) if name in table.column_names and table[name].null_count == len(table)]
    table = table.drop_columns(empty)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read `path` and check it has every column of `schema` (but OPTIONAL_COLUMNS, read as null where a file
    written before them lacks them); the error names the file and the columns."""
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names and name not in OPTIONAL_COLUMNS]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; is this the output of the right stage?")
    return conform(table, schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the columns of `schema`, in its order and types; OPTIONAL_COLUMNS it lacks are added
    as nulls (the caller has checked it holds every other one)."""
    for field in schema:
        if field.name not in table.column_names and field.name in OPTIONAL_COLUMNS:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def folder_digest(folder: str | os.PathLike) -> str:
    """sha256 over a folder's files (relative names and contents, in name order): a model folder's identity."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sha256sums(paths: Iterable[str | os.PathLike], output: str | os.PathLike) -> None:
    """Write the sha256 of each file in `paths` to `output` atomically, in sha256sum's format (names relative to
    output's folder, so `sha256sum -c` there checks them). A stage's content identity: Snakemake compares this
    small file's checksum, so a rerun that writes the same bytes reruns nothing after it (rules/common.smk)."""
    folder = Path(output).parent
    lines = [f"{file_sha256(path)}  {os.path.relpath(path, folder)}\n" for path in paths]
    with atomic_path(output) as tmp:
        Path(tmp).write_text("".join(lines))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def fsync_parent(path: str | os.PathLike) -> None:
    """fsync the folder holding `path`, so that a file created or renamed there survives a crash of the node
    (the file's own fsync covers its data, not its name)."""
    fd = os.open(Path(path).parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class atomic_path:
    """Context manager yielding a temporary path beside `path`; on success the file is fsynced, renamed onto
    `path` and the rename fsynced, so a crash leaves the old file or the whole new one, never a torn one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # mkstemp makes the file private (0600); results get the permissions of an ordinary new file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            # Without it a crash soon after the rename can leave the new name on an empty or partial file.
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
            fsync_parent(self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)
