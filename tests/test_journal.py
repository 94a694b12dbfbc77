import errno
import json
import logging
import os
import stat
import subprocess
import sys

import pytest

from mathsft.io import EVAL_SAMPLE_SCHEMA, TRAJECTORY_SCHEMA, write_parquet
from mathsft.journal import Journal, StoreInUse, hold_output, store_path

FINGERPRINT = {"model": "m", "temperature": 0.6, "rows": "abc"}


def _record(row, k, text="x"):
    """A journaled sample as generation writes it: the row's fields, the sample's, and its row index."""
    return {
        "problem_id": f"{row:016x}", "source": "s", "problem": f"{row} + 1?", "answer": f"${row + 1}$",
        "row_index": row, "sample_index": k, "messages": "[]", "response": text, "finish_reason": "stop",
        "prompt_tokens": 10, "completion_tokens": 5, "model": "m", "served_model_name": None,
        "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 48,
        "seed": 123, "latency_s": 0.5,
    }


def _journal_with_lines(path, lines: list[bytes], fingerprint=FINGERPRINT) -> None:
    """A journal holding good records (0, 0) and (2, 0) around the given raw lines."""
    journal = Journal(path, fingerprint)
    journal.append(_record(0, 0))
    journal.close()
    with open(path, "ab") as f:
        for line in lines:
            f.write(line + b"\n")
        f.write(json.dumps(_record(2, 0)).encode() + b"\n")


def test_the_store_lives_beside_the_output_one_file_per_fingerprint(tmp_path):
    path = store_path(tmp_path / "00003.parquet", FINGERPRINT)
    assert path.parent == tmp_path / ".samples" and path.name.startswith("00003.") and path.suffix == ".jsonl"
    assert store_path(tmp_path / "00003.parquet", dict(reversed(FINGERPRINT.items()))) == path
    assert store_path(tmp_path / "00003.parquet", FINGERPRINT | {"temperature": 0.7}) != path


def test_records_survive_a_reopen_and_the_first_of_duplicates_wins(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", FINGERPRINT)
    journal.append(_record(0, 0, "first"))
    journal.append(_record(0, 1))
    journal.append(_record(0, 0, "again"))
    journal.close()
    loaded = Journal(tmp_path / "j.jsonl", FINGERPRINT).load()
    assert set(loaded) == {(0, 0), (0, 1)} and loaded[(0, 0)]["response"] == "first"


def test_records_stored_before_the_turn_columns_existed_load_and_are_written_with_them_null(tmp_path):
    """_record holds no reasoning or think_prefilled (samples a store kept before they existed): loaded, never
    asked again, and written as nulls; a record that holds them must hold the right types."""
    journal = Journal(tmp_path / "j.jsonl", FINGERPRINT)
    journal.append(_record(0, 0))
    journal.append(_record(1, 0) | {"reasoning": "2+2", "think_prefilled": True})
    journal.append(_record(2, 0) | {"reasoning": 4})
    journal.close()
    again = Journal(tmp_path / "j.jsonl", FINGERPRINT)
    loaded = again.load()
    assert set(loaded) == {(0, 0), (1, 0)} and again.skipped == 1
    write_parquet([{k: v for k, v in record.items() if k != "row_index"} for record in loaded.values()],
                  tmp_path / "out.parquet", TRAJECTORY_SCHEMA)
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(row["reasoning"], row["think_prefilled"]) for row in rows] == [(None, None), ("2+2", True)]


def test_a_torn_last_line_is_dropped_and_appends_continue_on_a_clean_line(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, FINGERPRINT)
    journal.append(_record(0, 0))
    journal.close()
    with open(path, "a") as f:
        f.write('{"row_index": 1, "sample_in')  # a kill in the middle of a write
    resumed = Journal(path, FINGERPRINT)
    assert set(resumed.load()) == {(0, 0)} and resumed.skipped == 1
    resumed.append(_record(1, 0))
    resumed.close()
    assert set(Journal(path, FINGERPRINT).load()) == {(0, 0), (1, 0)}


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


DAMAGED_LINES = {
    "a bad UTF-8 byte": json.dumps(_record(1, 0)).encode().replace(b'"x"', b'"\xff"'),
    "a missing row_index": json.dumps(_without(_record(1, 1), "row_index")).encode(),
    "a missing column of the output": json.dumps(_without(_record(1, 2), "finish_reason")).encode(),
    "a string row_index": json.dumps(_record(1, 3) | {"row_index": "1"}).encode(),
    "a float sample_index": json.dumps(_record(1, 4) | {"sample_index": 4.0}).encode(),
    "a boolean sample_index": json.dumps(_record(1, 5) | {"sample_index": True}).encode(),
    "a negative sample_index": json.dumps(_record(1, 6) | {"sample_index": -1}).encode(),
    "a null response": json.dumps(_record(1, 7) | {"response": None}).encode(),
    "a number as response": json.dumps(_record(1, 8) | {"response": 8}).encode(),
    "a string token count": json.dumps(_record(1, 9) | {"completion_tokens": "5"}).encode(),
    "a token count beyond int32": json.dumps(_record(1, 10) | {"prompt_tokens": 2 ** 40}).encode(),
    "a lone surrogate escape": json.dumps(_record(1, 11)).encode().replace(b'"x"', b'"\\ud800"'),
    "a JSON list": b"[1, 2]",
    "a JSON number": b"17",
    "a JSON null": b"null",
    "not JSON at all": b"\x00\x00\x00",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_LINES))
def test_a_line_with_damage_is_skipped_counted_and_its_sample_requested_again(tmp_path, caplog, damage):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, [DAMAGED_LINES[damage]])
    journal = Journal(path, FINGERPRINT)
    with caplog.at_level(logging.INFO, logger="mathsft.journal"):
        loaded = journal.load()
    assert set(loaded) == {(0, 0), (2, 0)}  # the good lines on both sides are kept
    assert journal.skipped == 1
    assert "1 line(s) skipped" in caplog.text and "line 3:" in caplog.text  # names the line


def test_every_damaged_line_is_counted_and_after_load_and_append_the_file_is_clean(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, list(DAMAGED_LINES.values()))
    journal = Journal(path, FINGERPRINT)
    with caplog.at_level(logging.WARNING, logger="mathsft.journal"):
        loaded = journal.load()
    assert set(loaded) == {(0, 0), (2, 0)} and journal.skipped == len(DAMAGED_LINES)
    assert f"{len(DAMAGED_LINES)} line(s) skipped" in caplog.text
    journal.append(_record(1, 0, "redone"))
    journal.close()

    lines = path.read_bytes().decode("utf-8").splitlines()  # valid UTF-8 throughout
    assert len(lines) == 1 + 3 and json.loads(lines[0])["fingerprint"] == FINGERPRINT
    again = Journal(path, FINGERPRINT)
    records = again.load()
    assert again.skipped == 0 and set(records) == {(0, 0), (1, 0), (2, 0)}
    # What was kept can be written as the stage's output.
    write_parquet(list(records.values()), tmp_path / "out.parquet", TRAJECTORY_SCHEMA)


def test_a_null_in_a_nullable_column_is_kept_as_a_fresh_sample_would_be(tmp_path):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, [json.dumps(_record(1, 0) | {"finish_reason": None}).encode()])
    journal = Journal(path, FINGERPRINT)
    assert set(journal.load()) == {(0, 0), (1, 0), (2, 0)} and journal.skipped == 0


def test_evaluation_records_keep_their_benchmark_and_need_it(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, FINGERPRINT, schema=EVAL_SAMPLE_SCHEMA)
    journal.append(_record(0, 0) | {"benchmark": "aime24"})
    journal.append(_record(1, 0))  # no benchmark: the evaluation output could not hold it
    journal.close()
    resumed = Journal(path, FINGERPRINT, schema=EVAL_SAMPLE_SCHEMA)
    records = resumed.load()
    assert set(records) == {(0, 0)} and records[(0, 0)]["benchmark"] == "aime24" and resumed.skipped == 1
    resumed.close()
    assert Journal(path, FINGERPRINT, schema=EVAL_SAMPLE_SCHEMA).load()[(0, 0)]["benchmark"] == "aime24"


@pytest.mark.parametrize("header", [b"\xff\xfe", b"[1]", b"", b'{"journal": 1, "fingerp'])
def test_a_journal_with_an_unreadable_header_is_set_aside_not_used(tmp_path, header):
    path = tmp_path / "j.jsonl"
    path.write_bytes(header + b"\n" + json.dumps(_record(0, 0)).encode() + b"\n")
    assert Journal(path, FINGERPRINT).load() == {}
    assert not path.exists() and len(list(tmp_path.glob("j.jsonl.stale-*"))) == 1


def test_a_journal_from_other_settings_is_set_aside_not_used(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, FINGERPRINT)
    journal.append(_record(0, 0))
    journal.close()
    assert Journal(path, FINGERPRINT | {"temperature": 0.7}).load() == {}
    assert not path.exists()
    stale = list(tmp_path.glob("j.jsonl.stale-*"))
    assert len(stale) == 1 and json.loads(stale[0].read_text().splitlines()[0])["fingerprint"] == FINGERPRINT


def _record_fsyncs(monkeypatch) -> list[tuple[str, str]]:
    """Patch os.fsync to note what each call synced (a file by its name, or a folder) before syncing it."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_rewriting_on_load_fsyncs_the_file_then_its_folder(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, [b"not JSON"])
    synced = _record_fsyncs(monkeypatch)
    Journal(path, FINGERPRINT).load()
    assert synced == [("file", str(path) + ".tmp"), ("folder", str(tmp_path))]


def test_loading_a_clean_journal_writes_nothing(tmp_path):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, [json.dumps(_record(1, 0)).encode()])
    before = path.stat()
    assert set(Journal(path, FINGERPRINT).load()) == {(0, 0), (1, 0), (2, 0)}
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl"]


ROWS = [{key: _record(row, 0)[key] for key in ("problem_id", "source", "problem", "answer")} for row in range(3)]
NOT_ITS_ROW = {
    "another problem id": _record(1, 0) | {"problem_id": "ffffffffffffffff"},
    "another answer": _record(1, 0) | {"answer": "$99$"},
    "a row past the output's rows": _record(7, 0),
    "another model": _record(1, 0) | {"model": "impostor"},
    "more tokens than max_tokens": _record(1, 0) | {"completion_tokens": 49},
    "a 50 kB response for 5 tokens": _record(1, 0, "x" * 50_000),
}


@pytest.mark.parametrize("record", NOT_ITS_ROW.values(), ids=NOT_ITS_ROW.keys())
def test_a_stored_sample_that_does_not_match_its_row_or_the_stores_model_is_skipped_and_counted(tmp_path, record):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, [json.dumps(record).encode()], FINGERPRINT | {"max_tokens": 48})
    journal = Journal(path, FINGERPRINT | {"max_tokens": 48}, rows=ROWS)
    assert set(journal.load()) == {(0, 0), (2, 0)} and journal.skipped == 1


def test_a_line_longer_than_any_sample_of_the_store_is_skipped_without_being_read_whole(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    fingerprint = FINGERPRINT | {"max_tokens": 48}
    _journal_with_lines(path, [b'{"response": "' + b"x" * 5_000_000 + b'"}'], fingerprint)
    journal = Journal(path, fingerprint, rows=ROWS)
    with caplog.at_level(logging.WARNING, logger="mathsft.journal"):
        assert set(journal.load()) == {(0, 0), (2, 0)} and journal.skipped == 1
    assert "line 3: longer than a sample of this store can be" in caplog.text
    assert path.stat().st_size < 10_000  # rewritten without it


def test_a_rewrite_that_fills_the_disk_removes_its_temporary_file_and_says_so(tmp_path):
    """A real full disk: a 1 MB tmpfs (needs root: skipped without it) holding a damaged journal."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        path = disk / "j.jsonl"
        _journal_with_lines(path, [b"not JSON"] + [json.dumps(_record(3, k, "y" * 2000)).encode() for k in range(300)])
        with pytest.raises(OSError) as full, open(disk / "filler", "wb") as filler:  # the rest of the disk
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        assert full.value.errno == errno.ENOSPC
        before = path.read_bytes()
        with pytest.raises(OSError, match="could not rewrite the sample store .*: free some space and run again"):
            Journal(path, FINGERPRINT).load()
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "j.jsonl"] and path.read_bytes() == before
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_one_process_at_a_time_samples_an_output(tmp_path):
    """The lock dies with its holder: a second process is refused while the first lives, and takes over after."""
    output = tmp_path / "00000.parquet"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mathsft.journal import hold_output; "
                               "hold_output(sys.argv[1]); print('held', flush=True); time.sleep(600)", str(output)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StoreInUse, match=rf"{output} is being sampled by another job \(pid {holder.pid} on "):
            hold_output(output)
    finally:
        holder.kill()
        holder.wait()
    hold_output(output)  # the kill dropped the lock
    hold_output(output)  # and this process holds it already


def test_a_new_journal_fsyncs_its_folder_once_so_its_name_survives_a_crash(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    journal = Journal(tmp_path / "j.jsonl", FINGERPRINT, fsync_every_s=0.0)
    journal.append(_record(0, 0))
    journal.append(_record(0, 1))
    journal.close()
    assert [kind for kind, _ in synced].count("folder") == 1 and ("folder", str(tmp_path)) in synced


def test_remove_deletes_the_journal(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", FINGERPRINT)
    journal.append(_record(0, 0))
    journal.remove()
    assert not (tmp_path / "j.jsonl").exists()
