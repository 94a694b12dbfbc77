"""Problem datasets from the Hugging Face hub or local files (parquet, jsonl, json), read through a column
mapping into rows of (source, problem, answer, level, subject). Errors name the dataset, the file, the column or
the line."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

FORMATS = (".parquet", ".jsonl", ".json")
DATASETS_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "datasets.schema.json"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where it lives (hub id or local path) and which columns hold problem and answer, and, where
    mapped, the problem's difficulty level and subject (None: the dataset has none)."""

    name: str
    hub: str | None = None
    path: str | None = None
    split: str = "train"
    subset: str | None = None
    revision: str | None = None
    problem_column: str = "problem"
    answer_column: str = "answer"
    level_column: str | None = None
    subject_column: str | None = None

    @classmethod
    def from_config(cls, name: str, entry: dict) -> "DatasetSpec":
        """The spec of config entry `entry`, checked against schemas/datasets.schema.json (check_datasets)."""
        check_datasets({name: entry})
        columns = entry.get("columns") or {}
        return cls(name=name, hub=entry.get("hub"), path=entry.get("path"), split=entry.get("split") or cls.split,
                   subset=entry.get("subset"), revision=entry.get("revision"),
                   problem_column=columns.get("problem", cls.problem_column),
                   answer_column=columns.get("answer", cls.answer_column),
                   level_column=columns.get("level"), subject_column=columns.get("subject"))


def read_catalog(path: str | Path) -> dict[str, dict]:
    """The datasets of a catalog file (config/datasets.yaml) by name."""
    return yaml.safe_load(Path(path).read_text()) or {}


def check_datasets(entries: dict) -> dict[str, dict]:
    """`entries` ({name: entry}: config/datasets.yaml with data.datasets over it), once each entry follows
    schemas/datasets.schema.json, the one statement of what a valid entry is; else a ValueError naming, one line
    each, every dataset and key that does not."""
    errors = sorted(_datasets_validator().iter_errors(entries), key=lambda error: [str(part) for part in error.absolute_path])
    if errors:
        raise ValueError("\n".join(f"{'.'.join(['data.datasets', *map(str, error.absolute_path)])}: "
                                    f"{_error_text(error)}" for error in errors))
    return entries


@functools.cache
def _datasets_validator():
    """The validator of schemas/datasets.schema.json, built once per process (every DatasetSpec is checked)."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(DATASETS_SCHEMA.read_text()))


def _error_text(error) -> str:
    """An error in words: the schema's own (errorMessage) where it has them, unknown keys by name."""
    worded = error.schema.get("errorMessage", {}).get(error.validator)
    if worded:
        return worded.format(value=error.instance)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema["properties"]))
        return f"unknown keys {unknown} (expected {', '.join(error.schema['properties'])})"
    return error.message


def dataset_entry(name: str, entries: dict[str, dict]) -> dict:
    """The entry of dataset `name` in `entries` (config/datasets.yaml with data.datasets over it)."""
    if name not in entries:
        raise ValueError(f"data: dataset {name!r} is in neither data.datasets nor config/datasets.yaml "
                         f"(known: {', '.join(sorted(entries))})")
    return entries[name]


def check_source(source: str, hubs: dict[str, str | None], local: Iterable[str] = ()) -> None:
    """Hub datasets only with data.source hub: the fetch rule runs for no other source. `hubs`: the datasets in use
    by name, and the hub id of each (None: a local file); `local`: names read from a local copy instead (a script's
    --dataset_file)."""
    for name, hub in hubs.items():
        if hub and source != "hub" and name not in local:
            raise ValueError(f"data.datasets.{name} is a hub dataset ({hub}) but data.source is {source}; "
                             "set data.source: hub")


def resolve_specs(names: list[str], catalog: dict[str, dict], overrides: dict[str, dict] | None) -> dict[str, DatasetSpec]:
    """Specs for `names`, from `overrides` (the config's data.datasets) over `catalog` (config/datasets.yaml)."""
    merged = {**catalog, **(overrides or {})}
    return {name: DatasetSpec.from_config(name, dataset_entry(name, merged)) for name in names}


def load_hub(spec: DatasetSpec) -> pa.Table:
    """Download (or read from the local `datasets` cache) one split of a hub dataset as an Arrow table."""
    import datasets

    try:
        dataset = datasets.load_dataset(spec.hub, spec.subset, split=spec.split, revision=spec.revision)
    except Exception as exc:
        raise RuntimeError(f"data.datasets.{spec.name}: loading {spec.hub!r} (split {spec.split!r}) failed: "
                           f"{type(exc).__name__}: {exc}") from exc
    return dataset.with_format("arrow")[:]


def read_table(path: str | Path) -> pa.Table:
    """A local dataset file as an Arrow table: parquet, JSON lines, or a JSON list of objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path}: not a readable parquet file ({exc})") from exc
    if path.suffix == ".jsonl":
        numbered = list(_json_lines(path))
        return _table(path, [record for _, record in numbered], [f"{path}:{line}" for line, _ in numbered])
    if path.suffix == ".json":
        records = _json_document(path)
        return _table(path, records, [f"{path}, item {index}" for index in range(1, len(records) + 1)])
    raise ValueError(f"{path}: unknown format (expected {', '.join(FORMATS)})")


def _table(path: Path, records: list[dict], places: list[str]) -> pa.Table:
    """The records of a JSON file as a table; a column whose values Arrow cannot hold in one type (3 on one line,
    "3" on another) is an error naming the column and the first line that differs."""
    try:
        return pa.Table.from_pylist(records)
    except (pa.ArrowException, OverflowError) as exc:
        for column in dict.fromkeys(key for record in records for key in record):
            values = [record.get(column) for record in records]
            try:
                pa.array(values)
            except (pa.ArrowException, OverflowError):
                first = next(i for i, value in enumerate(values) if value is not None)
                kind = type(values[first]).__name__
                other = next((i for i, value in enumerate(values) if value is not None
                              and type(value).__name__ != kind), None)
                if other is None:
                    raise ValueError(f"{places[first]}: column {column!r} cannot be read ({exc})") from exc
                raise ValueError(f"{places[other]}: column {column!r} holds {type(values[other]).__name__} "
                                 f"{str(values[other])[:40]!r}, but {kind} at {places[first]}; a column holds one "
                                 "type (quote numbers given as text)") from exc
        raise ValueError(f"{path}: cannot be read as a table ({exc})") from exc


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {exc.start} of the line); re-encode the file") from exc


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-empty line of a JSON-lines file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = _decode(raw, path, number).strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def _json_document(path: Path) -> list[dict]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text; re-encode the file") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise ValueError(f"{path}: expected a JSON list of objects (for one object per line, name it .jsonl)")
    return document


def dataset_rows(spec: DatasetSpec, table: pa.Table, origin: str) -> Iterator[dict]:
    """Rows of `table` as {source, problem, answer, level, subject, where} through the spec's column mapping (level
    and subject None where unmapped, as stored where mapped); `origin` (a file or hub id) names where the table came
    from in errors, and `where` names the row in it (for the rows normalisation drops)."""
    mapped = {"problem": spec.problem_column, "answer": spec.answer_column, "level": spec.level_column,
              "subject": spec.subject_column}
    for key, column in mapped.items():
        if column is not None and column not in table.column_names:
            raise ValueError(f"data.datasets.{spec.name}.columns.{key}: column {column!r} is not in {origin} "
                             f"(its columns: {', '.join(table.column_names)})")
    problems = table.column(spec.problem_column)
    if not (pa.types.is_string(problems.type) or pa.types.is_large_string(problems.type)):
        raise ValueError(f"{origin}: column {spec.problem_column!r} holds {problems.type}, not text")
    unmapped = [None] * table.num_rows
    levels = table.column(spec.level_column).to_pylist() if spec.level_column else unmapped
    subjects = table.column(spec.subject_column).to_pylist() if spec.subject_column else unmapped
    answers = table.column(spec.answer_column).to_pylist()
    for row, (problem, answer, level, subject) in enumerate(zip(problems.to_pylist(), answers, levels, subjects)):
        yield {"source": spec.name, "problem": problem, "answer": answer, "level": level, "subject": subject,
               "where": f"{origin}, row {row + 1}"}


def load_spec(spec: DatasetSpec) -> tuple[pa.Table, str]:
    """The table of a spec and where it came from: the local file, or the hub."""
    if spec.path:
        return read_table(spec.path), spec.path
    return load_hub(spec), f"hub dataset {spec.hub}"
