import pyarrow as pa
import pytest

from mathsft.io import PROBLEM_SCHEMA, read_parquet, write_json, write_parquet

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
