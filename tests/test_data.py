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
