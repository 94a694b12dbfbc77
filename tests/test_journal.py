import errno
import json
import logging
import os
import stat
import subprocess
import sys

import pytest

from helpers.sample_store import write_legacy_journal

from mathsft.generate import problem_key
from mathsft.io import EVAL_SAMPLE_SCHEMA, TRAJECTORY_SCHEMA, write_parquet
from mathsft.journal import Journal, SampleStore, StoreInUse, hold_output, store_folder, store_place

FINGERPRINT = {"model": "m", "temperature": 0.6}


def _row(row):
    """Problem row `row` of these tests (its id is the row number in hex)."""
    return {"problem_id": f"{row:016x}", "source": "s", "problem": f"{row} + 1?", "answer": f"${row + 1}$"}


def _record(row, k, text="x"):
    """A journaled sample as generation writes it: the row's fields, then the sample's."""
    return _row(row) | {
        "sample_index": k, "messages": "[]", "response": text, "finish_reason": "stop",
        "prompt_tokens": 10, "completion_tokens": 5, "model": "m", "served_model_name": None,
        "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 48,
        "seed": 123, "latency_s": 0.5,
    }


def _pairs(loaded) -> set[tuple[int, int]]:
    """(row, sample index) of each loaded record, after checking that it is keyed by its problem and index."""
    assert all(key == (problem_key(record), record["sample_index"]) for key, record in loaded.items())
    return {(int(record["problem_id"], 16), record["sample_index"]) for record in loaded.values()}


def _journal_with_lines(path, lines: list[bytes], fingerprint=FINGERPRINT) -> None:
    """A journal holding good records (0, 0) and (2, 0) around the given raw lines."""
    journal = Journal(path, fingerprint)
    journal.append(_record(0, 0))
    journal.close()
    with open(path, "ab") as f:
        for line in lines:
            f.write(line + b"\n")
        f.write(json.dumps(_record(2, 0)).encode() + b"\n")


def test_the_store_lives_beside_the_output_one_folder_per_fingerprint_one_journal_per_output(tmp_path):
    folder = store_folder(tmp_path / "00003.parquet", FINGERPRINT)
    assert folder.parent == tmp_path / ".samples" and len(folder.name) == 16
    assert store_folder(tmp_path / "00004.parquet", dict(reversed(FINGERPRINT.items()))) == folder
    assert store_folder(tmp_path / "00003.parquet", FINGERPRINT | {"temperature": 0.7}) != folder
    assert SampleStore(tmp_path / "00003.parquet", FINGERPRINT).path == folder / "00003.jsonl"


def test_an_evaluation_part_is_named_by_its_path_below_the_stage_and_finds_the_models_earlier_samples(tmp_path):
    """Evaluation parts (results/eval/generations/MODEL/PART.parquet) keep their samples in the stage's store, named
    MODEL/PART: each its own journal and lock, and a part finds the samples of another part, or of the model's one
    file from before parts (MODEL.parquet, its journal MODEL.jsonl), under the same settings."""
    stage = tmp_path / "generations"
    store = stage / ".samples"
    assert store_place(stage / "sft" / "a.parquet", store) == (store, "sft/a")
    assert store_place(stage / "00001.parquet") == (store, "00001")
    with pytest.raises(ValueError, match=r"not under .*generations, the folder of its sample store"):
        store_place(tmp_path / "elsewhere" / "a.parquet", store)
    whole = SampleStore(stage / "sft.parquet", FINGERPRINT, rows=ROWS)
    for row in (0, 1, 2):
        whole.append(_record(row, 0))
    whole.close()
    part = SampleStore(stage / "sft" / "a.parquet", FINGERPRINT, rows=ROWS[:2], store=store)
    assert part.path == whole.path.parent / "sft" / "a.jsonl"
    assert _pairs(part.load()) == {(0, 0), (1, 0)}
    part.append(_record(0, 1))
    part.close()
    other = SampleStore(stage / "sft" / "b.parquet", FINGERPRINT, rows=ROWS, store=store)
    assert _pairs(other.load()) == {(0, 0), (1, 0), (2, 0), (0, 1)}
    hold_output(stage / "sft" / "a.parquet", store)
    assert (store / "sft" / "a.lock").exists()


def test_records_survive_a_reopen_and_the_first_of_duplicates_wins(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", FINGERPRINT)
    journal.append(_record(0, 0, "first"))
    journal.append(_record(0, 1))
    journal.append(_record(0, 0, "again"))
    journal.close()
    loaded = Journal(tmp_path / "j.jsonl", FINGERPRINT).load()
    assert _pairs(loaded) == {(0, 0), (0, 1)} and loaded[problem_key(_row(0)), 0]["response"] == "first"


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
    assert _pairs(loaded) == {(0, 0), (1, 0)} and again.skipped == 1
    write_parquet(list(loaded.values()), tmp_path / "out.parquet", TRAJECTORY_SCHEMA)
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(row["reasoning"], row["think_prefilled"]) for row in rows] == [(None, None), ("2+2", True)]


def test_a_torn_last_line_is_dropped_and_appends_continue_on_a_clean_line(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, FINGERPRINT)
    journal.append(_record(0, 0))
    journal.close()
    with open(path, "a") as f:
        f.write('{"problem_id": "0000000000000001", "sample_in')  # a kill in the middle of a write
    resumed = Journal(path, FINGERPRINT)
    assert _pairs(resumed.load()) == {(0, 0)} and resumed.skipped == 1
    resumed.append(_record(1, 0))
    resumed.close()
    assert _pairs(Journal(path, FINGERPRINT).load()) == {(0, 0), (1, 0)}


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


DAMAGED_LINES = {
    "a bad UTF-8 byte": json.dumps(_record(1, 0)).encode().replace(b'"x"', b'"\xff"'),
    "a missing problem_id": json.dumps(_without(_record(1, 1), "problem_id")).encode(),
    "a missing column of the output": json.dumps(_without(_record(1, 2), "finish_reason")).encode(),
    "a null answer": json.dumps(_record(1, 3) | {"answer": None}).encode(),
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
    assert _pairs(loaded) == {(0, 0), (2, 0)}  # the good lines on both sides are kept
    assert journal.skipped == 1
    assert "1 line(s) skipped" in caplog.text and "line 3:" in caplog.text  # names the line


def test_every_damaged_line_is_counted_and_after_load_and_append_the_file_is_clean(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, list(DAMAGED_LINES.values()))
    journal = Journal(path, FINGERPRINT)
    with caplog.at_level(logging.WARNING, logger="mathsft.journal"):
        loaded = journal.load()
    assert _pairs(loaded) == {(0, 0), (2, 0)} and journal.skipped == len(DAMAGED_LINES)
    assert f"{len(DAMAGED_LINES)} line(s) skipped" in caplog.text
    journal.append(_record(1, 0, "redone"))
    journal.close()

    lines = path.read_bytes().decode("utf-8").splitlines()  # valid UTF-8 throughout
    assert len(lines) == 1 + 3 and json.loads(lines[0])["fingerprint"] == FINGERPRINT
    again = Journal(path, FINGERPRINT)
    records = again.load()
    assert again.skipped == 0 and _pairs(records) == {(0, 0), (1, 0), (2, 0)}
    # What was kept can be written as the stage's output.
    write_parquet(list(records.values()), tmp_path / "out.parquet", TRAJECTORY_SCHEMA)


def test_a_null_in_a_nullable_column_is_kept_as_a_fresh_sample_would_be(tmp_path):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, [json.dumps(_record(1, 0) | {"finish_reason": None}).encode()])
    journal = Journal(path, FINGERPRINT)
    assert _pairs(journal.load()) == {(0, 0), (1, 0), (2, 0)} and journal.skipped == 0


def test_evaluation_records_keep_their_benchmark_and_need_it(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, FINGERPRINT, schema=EVAL_SAMPLE_SCHEMA)
    journal.append(_record(0, 0) | {"benchmark": "aime24"})
    journal.append(_record(1, 0))  # no benchmark: the evaluation output could not hold it
    journal.close()
    resumed = Journal(path, FINGERPRINT, schema=EVAL_SAMPLE_SCHEMA)
    records = resumed.load()
    key = (problem_key(_row(0)), 0)
    assert _pairs(records) == {(0, 0)} and records[key]["benchmark"] == "aime24" and resumed.skipped == 1
    resumed.close()
    assert Journal(path, FINGERPRINT, schema=EVAL_SAMPLE_SCHEMA).load()[key]["benchmark"] == "aime24"


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
    assert _pairs(Journal(path, FINGERPRINT).load()) == {(0, 0), (1, 0), (2, 0)}
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl"]


ROWS = [_row(row) for row in range(3)]
NOT_THE_STORES = {
    "another model": _record(1, 0) | {"model": "impostor"},
    "more tokens than max_tokens": _record(1, 0) | {"completion_tokens": 49},
    "a 50 kB response for 5 tokens": _record(1, 0, "x" * 50_000),
}


@pytest.mark.parametrize("record", NOT_THE_STORES.values(), ids=NOT_THE_STORES.keys())
def test_a_stored_sample_that_does_not_match_the_stores_model_or_max_tokens_is_skipped_and_counted(tmp_path, record):
    path = tmp_path / "j.jsonl"
    _journal_with_lines(path, [json.dumps(record).encode()], FINGERPRINT | {"max_tokens": 48})
    journal = Journal(path, FINGERPRINT | {"max_tokens": 48}, rows=ROWS)
    assert _pairs(journal.load()) == {(0, 0), (2, 0)} and journal.skipped == 1


OTHER_PROBLEMS = {
    "another problem id": _record(1, 0) | {"problem_id": "ffffffffffffffff"},
    "another answer": _record(1, 0) | {"answer": "$99$"},
    "another problem text": _record(1, 0) | {"problem": "1 + 2?"},
    "a problem no row holds": _record(7, 0),
}


@pytest.mark.parametrize("record", OTHER_PROBLEMS.values(), ids=OTHER_PROBLEMS.keys())
def test_a_stored_sample_of_another_problem_is_not_one_of_a_rows_even_under_its_id(tmp_path, record):
    """Another output's journal holds a sample of a problem that differs from row 1 in id, text or answer: the store
    does not give it to row 1, and does not count it as damage (it is someone else's sample, kept where it is)."""
    other = SampleStore(tmp_path / "other.parquet", FINGERPRINT)
    other.append(record)
    other.append(_record(2, 0))
    other.close()
    before = other.path.read_bytes()
    store = SampleStore(tmp_path / "mine.parquet", FINGERPRINT, rows=ROWS)
    assert _pairs(store.load()) == {(2, 0)} and store.skipped == store.others_skipped == 0
    assert other.path.read_bytes() == before


def test_a_line_longer_than_any_sample_of_the_store_is_skipped_without_being_read_whole(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    fingerprint = FINGERPRINT | {"max_tokens": 48}
    _journal_with_lines(path, [b'{"response": "' + b"x" * 5_000_000 + b'"}'], fingerprint)
    journal = Journal(path, fingerprint, rows=ROWS)
    with caplog.at_level(logging.WARNING, logger="mathsft.journal"):
        assert _pairs(journal.load()) == {(0, 0), (2, 0)} and journal.skipped == 1
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


def test_a_sample_is_found_by_its_problem_in_another_outputs_journal_which_stays_as_it_was(tmp_path):
    """Shard 00000 sampled rows 0 and 1; 00001 now asks for rows 1 and 2 (a shard regrown, a benchmark added):
    row 1's samples come from 00000's journal, and only row 2 is missing. New samples go to 00001's own journal."""
    first = SampleStore(tmp_path / "00000.parquet", FINGERPRINT, rows=ROWS[:2])
    for row in (0, 1):
        for k in (0, 1):
            first.append(_record(row, k))
    first.close()
    before = first.path.read_bytes()
    second = SampleStore(tmp_path / "00001.parquet", FINGERPRINT, rows=ROWS[1:])
    assert _pairs(second.load()) == {(1, 0), (1, 1)}
    second.append(_record(2, 0))
    second.close()
    assert first.path.read_bytes() == before and second.path.parent == first.path.parent
    assert _pairs(SampleStore(tmp_path / "00001.parquet", FINGERPRINT, rows=ROWS).load()) == {
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0)}
    # Under other settings nothing is found.
    assert SampleStore(tmp_path / "00001.parquet", FINGERPRINT | {"temperature": 0.7}, rows=ROWS).load() == {}


def test_damaged_lines_of_another_outputs_journal_are_skipped_counted_and_left_alone(tmp_path, caplog):
    other = tmp_path / "00000.parquet"
    _journal_with_lines(SampleStore(other, FINGERPRINT).path, [b"not JSON", DAMAGED_LINES["a null response"]])
    before = SampleStore(other, FINGERPRINT).path.read_bytes()
    store = SampleStore(tmp_path / "00001.parquet", FINGERPRINT, rows=ROWS)
    with caplog.at_level(logging.WARNING, logger="mathsft.journal"):
        assert _pairs(store.load()) == {(0, 0), (2, 0)}
    assert (store.skipped, store.others_skipped) == (0, 2) and "2 damaged line(s)" in caplog.text
    assert SampleStore(other, FINGERPRINT).path.read_bytes() == before


def test_a_store_written_before_samples_were_keyed_by_problem_is_read_as_it_is(tmp_path):
    """A finished run's store (one journal per output, its rows' digest in the fingerprint): every sample it holds
    is found, for the same rows or others, so an upgrade resamples nothing; a legacy journal of other settings is
    not read; nothing old is changed."""
    output = tmp_path / "student.parquet"
    legacy = write_legacy_journal(output, FINGERPRINT, ROWS[:2],
                                  [_record(row, k) | {"row_index": row} for row in (0, 1) for k in (0, 1)])
    other = write_legacy_journal(tmp_path / "teacher.parquet", FINGERPRINT | {"model": "t"}, ROWS,
                                 [_record(2, 0) | {"row_index": 2, "model": "t"}])
    before = {path: path.read_bytes() for path in (legacy, other)}
    store = SampleStore(output, FINGERPRINT, rows=ROWS)
    loaded = store.load()
    assert _pairs(loaded) == {(0, 0), (0, 1), (1, 0), (1, 1)} and store.skipped == store.others_skipped == 0
    assert all("row_index" not in record for record in loaded.values())
    assert {path: path.read_bytes() for path in (legacy, other)} == before and not store.path.exists()
    assert _pairs(SampleStore(tmp_path / "another.parquet", FINGERPRINT, rows=ROWS[1:]).load()) == {(1, 0), (1, 1)}


def test_only_the_lines_of_wanted_problems_are_parsed(tmp_path, monkeypatch):
    """Another output's journal is read line by line, but a line whose leading id is not a wanted problem's is not
    parsed: a store of long traces shared by many shards costs each job a read, not a parse, of the rest."""
    other = SampleStore(tmp_path / "00000.parquet", FINGERPRINT)
    for row in range(40):
        other.append(_record(row, 0))
    other.close()
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **kw: parsed.append(text) or real_loads(text, *a, **kw))
    assert _pairs(SampleStore(tmp_path / "00001.parquet", FINGERPRINT, rows=ROWS[1:2]).load()) == {(1, 0)}
    record_lines = [text for text in parsed if '"sample_index"' in str(text)]
    assert len(record_lines) == 1  # row 1's line, not 40
