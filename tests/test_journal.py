import json

from mathsft.journal import Journal, journal_path

FINGERPRINT = {"model": "m", "temperature": 0.6, "rows": "abc"}


def _record(row, k, text="x"):
    return {"row_index": row, "sample_index": k, "response": text}


def test_journal_lives_beside_the_output_as_a_hidden_file(tmp_path):
    assert journal_path(tmp_path / "00003.parquet") == tmp_path / ".00003.parquet.journal.jsonl"


def test_records_survive_a_reopen_and_the_first_of_duplicates_wins(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", FINGERPRINT)
    journal.append(_record(0, 0, "first"))
    journal.append(_record(0, 1))
    journal.append(_record(0, 0, "again"))
    journal.close()
    loaded = Journal(tmp_path / "j.jsonl", FINGERPRINT).load()
    assert set(loaded) == {(0, 0), (0, 1)} and loaded[(0, 0)]["response"] == "first"


def test_a_torn_last_line_is_dropped_and_appends_continue_on_a_clean_line(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, FINGERPRINT)
    journal.append(_record(0, 0))
    journal.close()
    with open(path, "a") as f:
        f.write('{"row_index": 1, "sample_in')  # a kill in the middle of a write
    resumed = Journal(path, FINGERPRINT)
    assert set(resumed.load()) == {(0, 0)}
    resumed.append(_record(1, 0))
    resumed.close()
    assert set(Journal(path, FINGERPRINT).load()) == {(0, 0), (1, 0)}


def test_a_journal_from_other_settings_is_set_aside_not_used(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, FINGERPRINT)
    journal.append(_record(0, 0))
    journal.close()
    assert Journal(path, FINGERPRINT | {"temperature": 0.7}).load() == {}
    assert not path.exists()
    stale = list(tmp_path.glob("j.jsonl.stale-*"))
    assert len(stale) == 1 and json.loads(stale[0].read_text().splitlines()[0])["fingerprint"] == FINGERPRINT


def test_remove_deletes_the_journal(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", FINGERPRINT)
    journal.append(_record(0, 0))
    journal.remove()
    assert not (tmp_path / "j.jsonl").exists()
