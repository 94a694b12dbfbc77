import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from mathsft.io import PROBLEM_SCHEMA, fsync_parent, read_parquet, write_json, write_parquet

ROW = {"problem_id": "0" * 16, "source": "s", "problem": "1+1", "answer": "$2$"}


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path):
    path = tmp_path / "p.parquet"
    write_parquet([ROW], path, PROBLEM_SCHEMA)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"row 0 lacks column\(s\) source, problem, answer"):
        write_parquet([{"problem_id": "x"}], path, PROBLEM_SCHEMA)  # missing columns
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]


def test_reading_a_file_without_the_stage_columns_names_file_and_columns(tmp_path):
    path = tmp_path / "other.parquet"
    write_json({"a": 1}, tmp_path / "x.json")
    pa.parquet.write_table(pa.table({"problem": ["x"]}), path)
    with pytest.raises(ValueError, match=r"other.parquet: missing column\(s\) problem_id, source, answer"):
        read_parquet(path, PROBLEM_SCHEMA)


def _record_fsyncs(monkeypatch, output: Path | None = None) -> list[tuple]:
    """Patch os.fsync to note what each call synced: (file, its name, its size) or (folder, its name, whether
    `output` exists then)."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        info = os.fstat(fd)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if stat.S_ISDIR(info.st_mode):
            synced.append(("folder", name, output is not None and output.exists()))
        else:
            synced.append(("file", name, info.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.parametrize("write", ["parquet", "json"])
def test_an_atomic_write_fsyncs_the_whole_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, write):
    folder = tmp_path / "out"
    path = folder / f"p.{write}"
    synced = _record_fsyncs(monkeypatch, output=path)
    if write == "parquet":
        write_parquet([ROW], path, PROBLEM_SCHEMA)
    else:
        write_json({"a": 1}, path)
    assert len(synced) == 2, synced
    (file_kind, file_name, file_size), (folder_kind, folder_name, renamed) = synced
    assert file_kind == "file" and Path(file_name).parent == folder and file_name != str(path)  # the temporary name
    assert file_size == path.stat().st_size  # synced with all its bytes
    assert (folder_kind, folder_name, renamed) == ("folder", str(folder), True)  # after the rename


def test_fsync_parent_syncs_the_folder_that_holds_a_path(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    fsync_parent(tmp_path / "not-yet-there.parquet")
    assert synced == [("folder", str(tmp_path), False)]


def test_sha256sums_are_what_sha256sum_checks_in_the_outputs_folder(tmp_path):
    from mathsft.io import write_sha256sums

    (tmp_path / "train.parquet").write_bytes(b"train rows")
    (tmp_path / "val.parquet").write_bytes(b"")
    write_sha256sums([tmp_path / "train.parquet", tmp_path / "val.parquet"], tmp_path / "sha256sums")
    lines = (tmp_path / "sha256sums").read_text().splitlines()
    assert lines == [f"{hashlib.sha256(b'train rows').hexdigest()}  train.parquet",
                     f"{hashlib.sha256(b'').hexdigest()}  val.parquet"]
    check = subprocess.run(["sha256sum", "-c", "sha256sums"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    (tmp_path / "val.parquet").write_bytes(b"changed")
    assert subprocess.run(["sha256sum", "-c", "sha256sums"], cwd=tmp_path, capture_output=True).returncode == 1


def test_files_written_before_level_and_subject_existed_read_with_them_null(tmp_path):
    from mathsft.io import BENCHMARK_SCHEMA, EVAL_SCHEMA, METADATA_COLUMNS

    bench = tmp_path / "bench.parquet"
    pa.parquet.write_table(pa.Table.from_pylist([ROW], schema=PROBLEM_SCHEMA), bench)
    assert read_parquet(bench, BENCHMARK_SCHEMA).to_pylist() == [ROW | {"level": None, "subject": None}]
    before = pa.schema([field for field in EVAL_SCHEMA if field.name not in METADATA_COLUMNS])
    sample = {name: None for name in before.names} | ROW | {"evaluated_model": "student", "benchmark": "b"}
    scored = tmp_path / "scored.parquet"
    pa.parquet.write_table(pa.Table.from_pylist([sample], schema=before), scored)
    table = read_parquet(scored, EVAL_SCHEMA)
    assert table.schema.equals(EVAL_SCHEMA)
    assert table.to_pylist() == [sample | {"level": None, "subject": None}]
    # Rows and tables without them are written with them null; any other missing column is still an error.
    write_parquet(pa.parquet.read_table(bench), tmp_path / "again.parquet", BENCHMARK_SCHEMA)
    write_parquet([ROW], tmp_path / "rows.parquet", BENCHMARK_SCHEMA)
    for path in ("again.parquet", "rows.parquet"):
        assert pa.parquet.read_table(tmp_path / path).to_pylist() == [ROW | {"level": None, "subject": None}]
    with pytest.raises(ValueError, match=r"missing column\(s\) evaluated_model, benchmark, sample_index") as error:
        read_parquet(bench, EVAL_SCHEMA)
    assert "level" not in str(error.value) and "subject" not in str(error.value)


def test_samples_without_a_turns_parts_are_written_byte_for_byte_as_before_the_columns_existed(tmp_path):
    """Rows stored before reasoning and think_prefilled existed: written without them, the very bytes of the old
    schema's file (a finished run's rescored shards change nothing after them); one row holding them keeps them."""
    import pyarrow.parquet as pq

    from mathsft.io import TRAJECTORY_SCHEMA, TURN_COLUMNS

    before = pa.schema([field for field in TRAJECTORY_SCHEMA if field.name not in TURN_COLUMNS])
    row = {name: None for name in before.names} | ROW | {"sample_index": 0, "response": "2"}
    pq.write_table(pa.Table.from_pylist([row], schema=before), tmp_path / "old.parquet", compression="zstd")
    write_parquet([row], tmp_path / "new.parquet", TRAJECTORY_SCHEMA)
    assert (tmp_path / "new.parquet").read_bytes() == (tmp_path / "old.parquet").read_bytes()
    write_parquet([row, row | {"sample_index": 1, "think_prefilled": False}], tmp_path / "turns.parquet",
                  TRAJECTORY_SCHEMA)
    table = read_parquet(tmp_path / "turns.parquet", TRAJECTORY_SCHEMA)
    assert table["think_prefilled"].to_pylist() == [None, False] and table["reasoning"].to_pylist() == [None, None]
