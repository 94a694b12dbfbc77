import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mathsft.curate import CurateSettings, _even_chunks, curate, kept_rows
from mathsft.io import SCORED_SCHEMA, read_parquet, write_parquet

MAX_LENGTH = 100


def _pid(i):
    return hashlib.sha256(str(i).encode()).hexdigest()[:16]


def _row(pid, k, reward=1.0, finish="stop", tokens=10, prompt_tokens=5, source="s"):
    return {
        "problem_id": pid, "source": source, "problem": f"p{pid}", "answer": "$1$", "sample_index": k,
        "messages": json.dumps([{"role": "user", "content": f"p{pid}"}]), "response": f"{'x' * tokens} \\boxed{{1}}",
        "finish_reason": finish, "prompt_tokens": prompt_tokens, "completion_tokens": tokens, "model": "m",
        "served_model_name": None,
        "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 100,
        "seed": k,
        "latency_s": 0.1, "reasoning": None, "think_prefilled": False, "extracted_answer": "1", "reward": reward,
        "verifier_status": "correct",
    }


def _shards(tmp_path, rows, n=2, name="scored"):
    paths = []
    for i in range(n):
        path = tmp_path / f"{name}{i}.parquet"
        write_parquet(rows[i::n], path, SCORED_SCHEMA)
        paths.append(str(path))
    return paths


def _curate(tmp_path, files, tag="", threads=None, **overrides):
    """curate() with the tests' settings; returns (stats, train rows, val rows)."""
    settings = {"reward_threshold": 1.0, "max_traces_per_problem": 4, "val_fraction": 0.25, "max_length": MAX_LENGTH}
    settings |= overrides
    out = {k: tmp_path / f"{k}{tag}.parquet" for k in ("train", "val")}
    stats = curate(files, str(out["train"]), str(out["val"]), str(tmp_path / f"stats{tag}.json"),
                   CurateSettings(**settings), threads=threads)
    return stats, *(read_parquet(out[split], SCORED_SCHEMA).to_pylist() for split in ("train", "val"))


@pytest.fixture
def scored_shards(tmp_path):
    """40 problems from two sources, each with two good traces, a wrong one, a cut one and an over-long one."""
    rows = []
    for i in range(40):
        pid, source = _pid(i), ("aime", "math")[i % 2]
        rows += [_row(pid, 0, tokens=30, source=source), _row(pid, 1, tokens=20, source=source),
                 _row(pid, 2, tokens=10, reward=0.0, source=source),
                 _row(pid, 3, tokens=5, finish="length", source=source),
                 _row(pid, 4, tokens=MAX_LENGTH, source=source)]
    return _shards(tmp_path, rows)


def test_curation_keeps_only_correct_finished_traces_that_fit_shortest_first(tmp_path, scored_shards):
    stats, train, val = _curate(tmp_path, scored_shards, max_traces_per_problem=1)
    rows = train + val
    assert len(rows) == 40
    assert all(r["reward"] == 1.0 and r["finish_reason"] == "stop" and r["sample_index"] == 1 for r in rows)
    assert stats["funnel"] == {"generated": 200, "correct": 160, "finished": 120, "fits": 80, "kept": 40}
    assert stats["dropped"] == {"wrong": 40, "unfinished": 40, "too_long": 40, "over_cap": 40}
    assert stats["problems"] == {"generated": 40, "kept": 40}


def test_traces_below_the_reward_threshold_are_dropped(tmp_path):
    pid = _pid(0)
    files = _shards(tmp_path, [_row(pid, 0, reward=0.0), _row(pid, 1, reward=0.5), _row(pid, 2, reward=1.0),
                               _row(pid, 3, reward=None)], n=1)
    for threshold, kept in ((1.0, {2}), (0.5, {1, 2}), (0.0, {0, 1, 2})):  # a missing reward never passes
        stats, train, val = _curate(tmp_path, files, reward_threshold=threshold)
        assert {r["sample_index"] for r in train + val} == kept
        assert stats["funnel"]["correct"] == len(kept)


def test_zero_threshold_would_keep_wrong_answers(tmp_path, scored_shards):
    stats, _, _ = _curate(tmp_path, scored_shards, reward_threshold=0.0)
    assert stats["funnel"]["kept"] == 120  # rLLM's default: the wrong trace of every problem is kept too


def test_unfinished_traces_are_dropped_even_when_correct(tmp_path):
    pid = _pid(0)
    files = _shards(tmp_path, [_row(pid, 0, finish="length"), _row(pid, 1, finish=None), _row(pid, 2, finish="abort"),
                               _row(pid, 3, finish="stop")], n=1)
    stats, train, val = _curate(tmp_path, files)
    assert [r["sample_index"] for r in train + val] == [3]
    assert stats["dropped"]["unfinished"] == 3


def test_over_long_traces_are_dropped_and_counted_never_truncated(tmp_path):
    pid = _pid(0)
    # Prompt + completion tokens, the teacher's counts, against the training max length.
    rows = [_row(pid, 0, prompt_tokens=10, tokens=MAX_LENGTH - 10),
            _row(pid, 1, prompt_tokens=10, tokens=MAX_LENGTH - 9),
            _row(pid, 2, prompt_tokens=MAX_LENGTH, tokens=1), _row(pid, 3, prompt_tokens=None, tokens=5)]
    files = _shards(tmp_path, rows, n=1)
    stats, train, val = _curate(tmp_path, files)
    assert train + val == [rows[0]]  # whole, every column as it came
    assert stats["funnel"]["finished"] - stats["funnel"]["fits"] == stats["dropped"]["too_long"] == 3


def test_at_most_k_shortest_traces_per_problem_ties_broken_by_sample_index(tmp_path):
    pid = _pid(0)
    files = _shards(tmp_path, [_row(pid, k, tokens=t) for k, t in enumerate([50, 10, 30, 10, 20])])
    stats, train, val = _curate(tmp_path, files, max_traces_per_problem=3)
    assert sorted(r["sample_index"] for r in train + val) == [1, 3, 4]
    assert stats["dropped"]["over_cap"] == 2


def test_the_cap_counts_only_traces_that_passed_every_filter(tmp_path):
    pid = _pid(0)
    # The three shortest traces are wrong, cut or too long: the two kept are the next ones.
    rows = [_row(pid, 0, tokens=1, reward=0.0), _row(pid, 1, tokens=2, finish="length"),
            _row(pid, 2, tokens=3, prompt_tokens=MAX_LENGTH), _row(pid, 3, tokens=40), _row(pid, 4, tokens=50),
            _row(pid, 5, tokens=60)]
    _, train, val = _curate(tmp_path, _shards(tmp_path, rows), max_traces_per_problem=2)
    assert sorted(r["sample_index"] for r in train + val) == [3, 4]


def test_random_selection_is_an_md5_order_fixed_by_the_seed(tmp_path):
    rows = [_row(_pid(i), k) for i in range(20) for k in range(8)]
    files = _shards(tmp_path, rows)
    chosen = {}
    for seed in (0, 0, 1, 2):
        _, train, val = _curate(tmp_path, files, max_traces_per_problem=2, selection="random", seed=seed)
        chosen.setdefault(seed, []).append(sorted((r["problem_id"], r["sample_index"]) for r in train + val))
    assert chosen[0][0] == chosen[0][1]  # the same seed, the same traces
    assert chosen[0][0] != chosen[1][0] != chosen[2][0]
    # Reproducible outside DuckDB: the two smallest md5("seed:problem_id:sample_index") of each problem.
    expected = sorted(
        (pid, k) for pid in {r["problem_id"] for r in rows}
        for k in sorted(range(8), key=lambda k: hashlib.md5(f"1:{pid}:{k}".encode()).hexdigest())[:2]
    )
    assert chosen[1][0] == expected


def test_no_validation_problem_appears_in_training(tmp_path, scored_shards):
    stats, train, val = _curate(tmp_path, scored_shards, val_fraction=0.3)
    train_ids, val_ids = {r["problem_id"] for r in train}, {r["problem_id"] for r in val}
    assert train_ids and val_ids and not train_ids & val_ids
    assert stats["splits"] == {"train": {"traces": 2 * len(train_ids), "problems": len(train_ids)},
                               "val": {"traces": 2 * len(val_ids), "problems": len(val_ids)}}
    # The split rule: the first 8 hex digits of the id, mod 10^6, below val_fraction * 10^6.
    assert all((int(pid[:8], 16) % 1_000_000 < 300_000) == (pid in val_ids) for pid in train_ids | val_ids)


def test_funnel_per_source_sums_to_the_total_and_only_narrows(tmp_path, scored_shards):
    stats, _, _ = _curate(tmp_path, scored_shards, max_traces_per_problem=1)
    assert set(stats["funnel_by_source"]) == {"aime", "math"}
    for step, total in stats["funnel"].items():
        assert sum(source[step] for source in stats["funnel_by_source"].values()) == total
    for counts in [stats["funnel"], *stats["funnel_by_source"].values()]:
        steps = list(counts.values())
        assert list(counts) == ["generated", "correct", "finished", "fits", "kept"]
        assert steps == sorted(steps, reverse=True) and steps[-1] > 0
    assert stats["funnel"]["kept"] == stats["splits"]["train"]["traces"] + stats["splits"]["val"]["traces"]


def test_same_inputs_give_byte_identical_outputs_whatever_the_file_order_or_threads(tmp_path):
    rows = [_row(_pid(i), k, tokens=random.Random(i * 8 + k).randint(1, 90), source=f"s{i % 3}")
            for i in range(60) for k in range(8)]
    random.Random(0).shuffle(rows)
    files = _shards(tmp_path, rows, n=5)
    outputs = []
    for run, (order, threads) in enumerate([(files, 1), (files[::-1], 4), (random.Random(1).sample(files, 5), 2)]):
        _curate(tmp_path, order, tag=str(run), max_traces_per_problem=3, threads=threads)
        outputs.append([(tmp_path / f"{name}{run}.parquet").read_bytes() for name in ("train", "val")]
                       + [json.loads((tmp_path / f"stats{run}.json").read_text())])
    assert outputs[0] == outputs[1] == outputs[2]


def test_parquet_bytes_do_not_depend_on_how_duckdb_chunked_the_result(tmp_path):
    table = pa.table({"x": [f"row {i}" * (i % 7) for i in range(10_000)]})
    layouts = [table.combine_chunks(), pa.Table.from_batches(table.to_batches(max_chunksize=4096)),
               pa.Table.from_batches(table.combine_chunks().to_batches(max_chunksize=3000))]
    written = []
    for i, layout in enumerate(layouts):
        pq.write_table(_even_chunks(layout), tmp_path / f"{i}.parquet")
        written.append((tmp_path / f"{i}.parquet").read_bytes())
    assert written[0] == written[1] == written[2]


def test_stats_hold_the_sql_params_and_inputs(tmp_path, scored_shards):
    _curate(tmp_path, scored_shards[::-1], selection="random", seed=7)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert "read_parquet($files)" in stats["sql"] and "row_number() OVER" in stats["sql"]
    assert stats["params"] == {"reward_threshold": 1.0, "max_length": MAX_LENGTH, "max_traces_per_problem": 4,
                               "selection": "random", "seed": 7, "val_fraction": 0.25}
    assert stats["inputs"] == sorted(scored_shards)


def test_kept_rows_are_the_traces_curation_keeps_in_the_rows_own_order(tmp_path, scored_shards):
    rows = [row for path in scored_shards for row in pq.read_table(path).to_pylist()]
    random.Random(0).shuffle(rows)
    settings = {"reward_threshold": 1.0, "max_length": MAX_LENGTH, "max_traces_per_problem": 1, "val_fraction": 0.0}
    kept = kept_rows(rows, CurateSettings(**settings))
    _, train, val = _curate(tmp_path, scored_shards, **settings)
    curated = {(row["problem_id"], row["sample_index"]) for row in train}
    assert not val and len(kept) == len(train) == 40
    assert kept == [row for row in rows if (row["problem_id"], row["sample_index"]) in curated]


def test_a_missing_file_is_named_and_nothing_is_written(tmp_path, scored_shards):
    missing = str(tmp_path / "scored9.parquet")
    with pytest.raises(FileNotFoundError, match="scored9.parquet"):
        _curate(tmp_path, scored_shards + [missing])
    assert not list(tmp_path.glob("train*")) and not list(tmp_path.glob("stats*"))


def test_a_file_that_is_not_parquet_is_named(tmp_path, scored_shards):
    bad = tmp_path / "scored9.parquet"
    bad.write_text('{"problem_id": "x"}\n')
    with pytest.raises(ValueError, match="scored9.parquet: not a readable parquet file"):
        _curate(tmp_path, scored_shards + [str(bad)])
    assert not list(tmp_path.glob("train*"))


def test_a_file_lacking_a_column_is_named_with_the_column(tmp_path, scored_shards):
    bad = tmp_path / "teacher.parquet"
    pq.write_table(pq.read_table(scored_shards[0]).drop_columns(["reward", "verifier_status"]), bad)
    with pytest.raises(ValueError, match=r"teacher.parquet: missing column\(s\) reward, verifier_status"):
        _curate(tmp_path, [scored_shards[1], str(bad)])
    assert not list(tmp_path.glob("train*"))


def test_no_inputs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no scored shards"):
        _curate(tmp_path, [])


def test_a_shard_given_twice_is_an_error_not_twice_the_traces(tmp_path, scored_shards):
    with pytest.raises(ValueError, match="repeated traces.*scored0.parquet, .*scored0.parquet"):
        _curate(tmp_path, scored_shards + scored_shards[:1])


def test_shards_scored_before_the_turn_columns_existed_are_curated_with_them_null(tmp_path):
    """A finished run's scored shards lack reasoning and think_prefilled (mathsft.io OPTIONAL_COLUMNS): curate
    reads them as they are, writes the sets as before (no such column) where no trace holds them, else the
    columns with nulls for the traces that lack them."""
    old_columns = [name for name in SCORED_SCHEMA.names if name not in ("reasoning", "think_prefilled")]
    rows = [_row(_pid(i), 0) for i in range(4)]
    old = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([{k: row[k] for k in old_columns} for row in rows],
                                        schema=pa.schema([SCORED_SCHEMA.field(k) for k in old_columns])), old)
    new = _shards(tmp_path, [_row(_pid(9), 0) | {"reasoning": "thought", "think_prefilled": True}], n=1, name="new")
    for files in ([str(old)], [str(old), *new]):
        stats, train, val = _curate(tmp_path, files, tag=str(len(files)))
        assert stats["funnel"]["kept"] == {1: 4, 2: 5}[len(files)]
        by_problem = {row["problem_id"]: row for row in train + val}
        if len(files) == 1:  # no sample held them: the sets are written as before the columns existed
            assert pq.read_schema(tmp_path / "train1.parquet").names == old_columns
        else:
            assert all(by_problem[_pid(i)]["reasoning"] is None and by_problem[_pid(i)]["think_prefilled"] is None
                       for i in range(4))
            assert (by_problem[_pid(9)]["reasoning"], by_problem[_pid(9)]["think_prefilled"]) == ("thought", True)


def test_stats_show_what_the_teacher_cap_cost_per_source_and_which_problems_it_starved(tmp_path):
    starved, fed = _pid(1), _pid(2)
    rows = ([_row(starved, k, finish="length", tokens=MAX_LENGTH, source="aime") for k in range(2)]
            + [_row(fed, 0, finish="length", tokens=MAX_LENGTH, source="aime"), _row(fed, 1, tokens=10, source="aime")]
            + [_row(_pid(3), k, tokens=50 + k, source="math") for k in range(2)])
    stats, _, _ = _curate(tmp_path, _shards(tmp_path, rows))
    lengths = stats["teacher_lengths"]
    assert lengths["max_tokens"] == [100] and lengths["bin_edges"][0] == 0 and lengths["bin_edges"][-1] == 100
    aime, math = lengths["by_source"]["aime"], lengths["by_source"]["math"]
    assert (aime["samples"], aime["cut"], aime["problems"], aime["problems_all_cut"]) == (4, 3, 2, 1)
    assert aime["problems_all_cut_ids"] == [starved]
    assert aime["counts"][-1] == 3 and aime["counts"][3] == 1 and sum(aime["counts"]) == 4  # 10 tokens: bin 3 of 30
    assert (math["cut"], math["problems_all_cut"], math["counts"][15]) == (0, 0, 2)  # 50 and 51 tokens
