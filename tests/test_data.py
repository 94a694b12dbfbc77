import re

from mathsft import data


def test_problem_id_ignores_whitespace_and_unicode_form():
    assert data.problem_id("What is  1 +\n1?") == data.problem_id("What is 1 + 1?")
    assert data.problem_id("What is 1 + 1?") != data.problem_id("What is 1 + 2?")
    assert len(data.problem_id("x")) == 16


def test_bare_answers_are_wrapped_for_math_verify_and_delimited_ones_kept():
    assert data.wrap_answer(" 42 ") == "$42$"
    assert data.wrap_answer("\\frac{1}{2}") == "$\\frac{1}{2}$"
    assert data.wrap_answer("$x^2$") == "$x^2$"
    assert data.wrap_answer("\\boxed{3}") == "\\boxed{3}"


def test_exact_decontamination_matches_same_text_only():
    deco = data.Decontaminator(ngram=None)
    deco.add("bench", "Calculate 5 - 3 - 6.")
    assert deco.match("calculate  5 - 3 - 6.") == "bench"
    assert deco.match("Calculate 5 - 3 - 7.") is None


def test_ngram_decontamination_flags_a_shared_8_gram():
    deco = data.Decontaminator(ngram=8)
    deco.add("aime24", "Find the number of ordered pairs of positive integers such that their sum is 100.")
    assert deco.match("Prove it. Find the number of ordered pairs of positive integers such that x < y.") == "aime24"
    assert deco.match("Find the number of ordered triples of reals.") is None


def test_take_problems_counts_every_dropped_row():
    rows = [
        {"source": "s", "problem": "a", "answer": "1"},
        {"source": "s", "problem": "a", "answer": "1"},  # duplicate
        {"source": "s", "problem": "b", "answer": ""},  # no answer
        {"source": "s", "problem": "c", "answer": "3"},  # contaminated
        {"source": "s", "problem": "d", "answer": "4"},
    ]
    deco = data.Decontaminator(ngram=None)
    deco.add("bench", "c")
    counts = data.Counts()
    kept = data.take_problems(iter(rows), 2, counts, set(), deco)
    assert [r["problem"] for r in kept] == ["a", "d"]
    assert kept[0]["answer"] == "$1$"
    assert (counts.duplicate, counts.no_answer, counts.contaminated) == (1, 1, {"bench": 1})


def test_raising_num_samples_only_appends_problems():
    args = dict(tasks=["chain_sum", "basic_arithmetic"], benchmarks=["chain_sum"], eval_problems=5, seed=1,
                eval_seed=2, ngram=None)
    small, bench_small, _ = data.prepare_reasoning_gym(num_samples=6, **args)
    large, bench_large, report = data.prepare_reasoning_gym(num_samples=11, **args)
    assert large[:6] == small
    assert bench_small == bench_large
    eval_ids = {r["problem_id"] for r in bench_large["chain_sum"]}
    assert not eval_ids & {r["problem_id"] for r in large}
    assert report["train"]["kept"] == 11


def test_equal_train_and_eval_seeds_are_refused():
    import pytest

    with pytest.raises(ValueError, match="eval_seed"):
        data.prepare_reasoning_gym(["chain_sum"], ["chain_sum"], 2, 2, seed=3, eval_seed=3, ngram=None)


def test_shards_cover_rows_in_fixed_size_ranges():
    assert data.shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert data.shard_bounds(8, 4) == [(0, 4), (4, 8)]
    assert data.shard_count(10, 4) == 3 and data.shard_count(8, 4) == 2 and data.shard_range(2, 10, 4) == (8, 10)
    assert [data.shard_name(k) for k in range(data.shard_count(10, 4))] == ["00000", "00001", "00002"]
    assert re.fullmatch(data.SHARD_NAME_PATTERN, data.shard_name(99999))


# What the sample store finds a chain_sum problem's samples by (mathsft.generate.problem_key: its id, and its text
# and gold answer as read from a BENCHMARK_SCHEMA file). Metadata must not move it, nor must a change to how keys
# are made: that would orphan every stored sample.
KEY_BEFORE_METADATA = "ae00999e34ae5653:a2ea54663763bcb4"


def _stored_benchmark_rows(tmp_path, name, rows):
    """Rows as the data stage writes a benchmark and evaluation reads it back."""
    from mathsft.io import BENCHMARK_SCHEMA, read_parquet, write_parquet

    path = tmp_path / f"{name}.parquet"
    write_parquet(list(data.clean_problems(rows, data.Counts(), set())), path, BENCHMARK_SCHEMA)
    return read_parquet(path, BENCHMARK_SCHEMA).to_pylist()


def _sample_keys(problems):
    """What the sample store finds these problems' samples by."""
    from mathsft.generate import problem_key

    return [problem_key(problem) for problem in problems]


def test_benchmark_metadata_leaves_the_sample_store_of_a_problem_without_it_where_it_was(tmp_path):
    rows = _stored_benchmark_rows(tmp_path, "chain_sum", [{"source": "chain_sum", "problem": "Calculate 5 - 3 - 6.",
                                                           "answer": "-4"}])
    assert (rows[0]["level"], rows[0]["subject"]) == (None, None)
    problems, metadata = data.benchmark_problems([("chain_sum", rows)])
    assert problems == [{"problem_id": "ae00999e34ae5653", "source": "chain_sum", "problem": "Calculate 5 - 3 - 6.",
                         "answer": "$-4$", "benchmark": "chain_sum"}]
    assert metadata == {("chain_sum", "ae00999e34ae5653"): {"level": None, "subject": None}}
    assert _sample_keys(problems) == [KEY_BEFORE_METADATA]


def test_a_problems_level_and_subject_never_decide_its_samples(tmp_path):
    problem = {"source": "math500", "problem": "Compute $\\dbinom{5}{2}$.", "answer": "10"}
    described = _stored_benchmark_rows(tmp_path, "math500", [problem | {"level": 1, "subject": "Counting"}])
    bare = _stored_benchmark_rows(tmp_path, "bare", [problem])
    problems, metadata = data.benchmark_problems([("math500", described)])
    assert problems == data.benchmark_problems([("math500", bare)])[0]
    assert _sample_keys(problems) == _sample_keys(data.benchmark_problems([("math500", bare)])[0])
    assert metadata == {("math500", described[0]["problem_id"]): {"level": "1", "subject": "Counting"}}
