"""Paired comparisons of two models (mathsft.compare) against hand-computed cases, and scripts/run_sft_model.py
--compare on small scored eval files."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.workflow import cli_process
from mathsft.compare import (BASELINES, EXACT_MAX_NONZERO_PROBLEMS, PERMUTATION_RESAMPLES, bootstrap_ci95,
                             compare_models, comparison_pairs, delta_stderr, document_comparisons, paired_comparison,
                             problem_pass1, sign_flip_p_value)
from mathsft.generate import derive_request_seed
from mathsft.io import EVAL_SCHEMA, write_parquet

RUN_SFT_MODEL = str(Path(__file__).resolve().parents[1] / "scripts" / "run_sft_model.py")


def _rows(rewards_by_problem: dict[str, list[float]], benchmark: str = "b") -> list[dict]:
    """Per-sample rows with what a comparison reads: benchmark, problem_id, reward."""
    return [{"benchmark": benchmark, "problem_id": pid, "sample_index": i, "reward": reward}
            for pid, rewards in rewards_by_problem.items() for i, reward in enumerate(rewards)]


def _brute_force_p_value(differences: list[float]) -> float:
    """Share of all 2**problems sign vectors whose |mean| is at least the observed one, one at a time."""
    observed = abs(sum(differences)) / len(differences)
    hits = 0
    for signs in itertools.product((1, -1), repeat=len(differences)):
        if abs(sum(s * d for s, d in zip(signs, differences))) / len(differences) >= observed - 1e-12:
            hits += 1
    return hits / 2 ** len(differences)


def test_identical_models_differ_by_zero_with_p_value_one():
    rows = _rows({"a": [1, 0, 1], "b": [0, 0, 0], "c": [1, 1, 1], "d": [1, 0, 0]})
    [comparison] = compare_models("sft", rows, "student", rows, seed=0)
    assert comparison == {"model": "sft", "baseline": "student", "benchmark": "b", "problems": 4,
                          "model_pass@1": pytest.approx(0.5), "baseline_pass@1": pytest.approx(0.5),
                          "pass@1_delta": 0.0, "pass@1_delta_stderr": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0,
                          "p_value_exact": True}


def test_three_problems_won_and_one_tied_give_the_hand_computed_statistics():
    # Per-problem differences [1, 1, 1, 0]: mean 3/4; deviations 1/4, 1/4, 1/4, -3/4 give a sample variance
    # (3/16 + 9/16) / 3 = 1/4, sd 1/2, stderr 1/2 / sqrt(4) = 1/4. Of the 16 sign vectors, |mean| >= 3/4 only
    # where the three wins share a sign (2 ways) whatever the tie's sign (2 ways): p = 4/16.
    model = _rows({"a": [1], "b": [1], "c": [1], "d": [1]})
    baseline = _rows({"a": [0], "b": [0], "c": [0], "d": [1]})
    [comparison] = compare_models("sft", model, "student", baseline, seed=0)
    assert comparison["pass@1_delta"] == pytest.approx(0.75)
    assert comparison["pass@1_delta_stderr"] == pytest.approx(0.25)
    assert comparison["p_value"] == pytest.approx(4 / 16) and comparison["p_value_exact"]
    assert comparison["p_value"] == pytest.approx(_brute_force_p_value([1, 1, 1, 0]))
    # Every resample of {1, 1, 1, 0} has a mean in [0, 1]; the interval holds the delta.
    low, high = comparison["ci95"]
    assert 0 <= low <= 0.75 <= high <= 1


def test_problems_with_different_sample_counts_compare_their_own_pass_at_1():
    # a: 2/3 vs 1/2 -> +1/6; b: 1/4 vs 1/1 -> -3/4
    model = _rows({"a": [1, 0, 1], "b": [1, 0, 0, 0]})
    baseline = _rows({"a": [1, 0], "b": [1]})
    assert problem_pass1(model) == {"b": {"a": pytest.approx(2 / 3), "b": 0.25}}
    [comparison] = compare_models("sft", model, "student", baseline, seed=0)
    differences = [1 / 6, -3 / 4]
    assert comparison["pass@1_delta"] == pytest.approx(sum(differences) / 2)
    assert comparison["pass@1_delta_stderr"] == pytest.approx(np.std(differences, ddof=1) / math.sqrt(2))
    assert comparison["model_pass@1"] == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert comparison["baseline_pass@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert comparison["p_value"] == pytest.approx(_brute_force_p_value(differences))  # 1.0: 2 of 4 per sign pair


def test_the_bootstrap_interval_holds_the_delta_and_is_the_same_on_every_call():
    differences = np.array([0.5, 0.25, 0.0, 1.0, -0.25, 0.75, 0.5, 0.0, 0.25, 1.0, -0.5, 0.5])
    interval = bootstrap_ci95(differences, seed=3)
    assert interval[0] < differences.mean() < interval[1]
    assert differences.min() <= interval[0] and interval[1] <= differences.max()
    assert bootstrap_ci95(differences.copy(), seed=3) == interval
    assert bootstrap_ci95(differences, seed=4) != interval  # the seed is what fixes it
    # About mean ± 1.96 stderr for a sample this size; a percentile bootstrap is a bit narrower.
    half_width = (interval[1] - interval[0]) / 2
    assert 1.5 * delta_stderr(differences) < half_width < 2.2 * delta_stderr(differences)


@pytest.mark.parametrize("differences", [
    [0.5, -0.25, 0.75, 0.0, 1.0, 0.25, -0.5, 0.5, 0.25, 0.0],
    [1 / 3, -2 / 3, 1 / 3, 1 / 3, 0.0, 1.0],  # sums equal in exact arithmetic, not always in floats
    [0.0, 0.0, 0.0],
    [-1.0],
])
def test_the_exact_p_value_matches_a_brute_force_loop_over_all_sign_vectors(differences):
    p_value, exact = sign_flip_p_value(np.array(differences), seed=0)
    assert exact
    assert p_value == pytest.approx(_brute_force_p_value(differences))


def test_many_nonzero_differences_sample_sign_flips_with_the_plus_one_correction():
    rng = np.random.default_rng(11)
    differences = rng.choice([-0.5, -0.25, 0.25, 0.5, 0.75], size=EXACT_MAX_NONZERO_PROBLEMS + 2)
    p_value, exact = sign_flip_p_value(differences, seed=0)
    assert not exact
    assert sign_flip_p_value(differences, seed=0) == (p_value, False)
    # The exact value, by enumerating the 2**18 sign vectors at once.
    signs = 1 - 2 * ((np.arange(2 ** len(differences))[:, None] >> np.arange(len(differences))) & 1)
    exact_p = np.mean(np.abs(signs @ differences) >= abs(differences.sum()) - 1e-9)
    assert p_value == pytest.approx(exact_p, abs=0.02)
    # (hits + 1) / (resamples + 1): a whole number of resamples over resamples + 1.
    count = p_value * (PERMUTATION_RESAMPLES + 1)
    assert count >= 1 and count == pytest.approx(round(count))
    # A difference the sign flips never reach still gets p = 1 / (resamples + 1), never 0.
    far = np.full(40, 1.0)
    assert sign_flip_p_value(far, seed=0) == (pytest.approx(1 / (PERMUTATION_RESAMPLES + 1)), False)


def test_models_on_different_problem_sets_compare_on_the_problems_they_share():
    model = _rows({"a": [1], "b": [1], "c": [0], "only-model": [1]})
    baseline = _rows({"a": [0], "b": [1], "c": [0], "only-baseline": [0]})
    [comparison] = compare_models("sft", model, "student", baseline, seed=0)
    assert comparison["problems"] == 3
    assert comparison["pass@1_delta"] == pytest.approx(1 / 3)


def test_a_benchmark_without_a_problem_in_common_is_refused_naming_the_models_and_benchmark():
    with pytest.raises(ValueError, match="model sft with student on benchmark math500"):
        compare_models("sft", _rows({"a": [1]}, "math500"), "student", _rows({"z": [1]}, "math500"), seed=0)


def test_a_benchmark_only_one_model_was_evaluated_on_is_left_out():
    model = _rows({"a": [1]}, "gsm8k") + _rows({"a": [1]}, "aime")
    comparisons = compare_models("sft", model, "student", _rows({"a": [0]}, "gsm8k"), seed=0)
    assert [c["benchmark"] for c in comparisons] == ["gsm8k"]


def test_every_model_is_compared_with_each_evaluated_baseline_and_the_teacher_with_the_student():
    assert BASELINES == ("student", "teacher")
    assert comparison_pairs(["student", "sft", "teacher"]) == [("sft", "student"), ("sft", "teacher"),
                                                               ("teacher", "student")]
    assert comparison_pairs(["sft", "student"]) == [("sft", "student")]
    assert comparison_pairs(["sft", "teacher", "sft2"]) == [("sft", "teacher"), ("sft2", "teacher")]
    assert comparison_pairs(["student"]) == [] and comparison_pairs(["sft"]) == []


def test_document_comparisons_cover_each_pair_and_benchmark_and_do_not_depend_on_their_order():
    rows = {"student": _rows({"a": [0, 0], "b": [1, 0]}) + _rows({"a": [0, 1]}, "c"),
            "sft": _rows({"a": [1, 1], "b": [1, 0]}) + _rows({"a": [1, 1]}, "c"),
            "teacher": _rows({"a": [1, 1], "b": [1, 1]}) + _rows({"a": [1, 1]}, "c")}
    comparisons = document_comparisons(rows, seed=5)
    assert [(c["model"], c["baseline"], c["benchmark"]) for c in comparisons] == [
        ("sft", "student", "b"), ("sft", "student", "c"), ("sft", "teacher", "b"), ("sft", "teacher", "c"),
        ("teacher", "student", "b"), ("teacher", "student", "c")]
    # Each comparison starts from the seed: alone, it comes out the same.
    alone = compare_models("teacher", rows["teacher"], "student", rows["student"], seed=5)
    assert alone == comparisons[4:]


def test_a_single_problem_has_zero_stderr_and_a_point_interval():
    comparison = paired_comparison({"a": 1.0}, {"a": 0.5}, seed=0)
    assert comparison["pass@1_delta"] == 0.5 and comparison["pass@1_delta_stderr"] == 0.0
    assert comparison["ci95"] == [0.5, 0.5] and comparison["p_value"] == 1.0


def _eval_file(path: Path, label: str, rewards_by_problem: dict[str, list[float]], bench: str = "b") -> str:
    """A scored eval parquet file (mathsft.io.EVAL_SCHEMA) of one model."""
    rows = []
    for pid, rewards in rewards_by_problem.items():
        for i, reward in enumerate(rewards):
            status = "correct" if reward >= 1 else "wrong"
            rows.append({
                "evaluated_model": label, "benchmark": bench, "problem_id": pid, "source": bench, "problem": "p",
                "answer": "$7$", "sample_index": i, "messages": "[]", "response": "r", "finish_reason": "stop",
                "prompt_tokens": 5, "completion_tokens": 10, "model": label, "served_model_name": None,
                "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 10,
                "seed": derive_request_seed(0, pid, i), "latency_s": 0.1, "extracted_answer": "7" if reward else "8",
                "reward": float(reward), "verifier_status": status})
    write_parquet(rows, path, EVAL_SCHEMA)
    return str(path)


def test_run_sft_model_compares_two_eval_files_without_a_server(tmp_path):
    sft = _eval_file(tmp_path / "sft.parquet", "sft", {"a": [1, 1], "b": [1, 0], "c": [1, 1], "d": [0, 0]})
    student = _eval_file(tmp_path / "student.parquet", "student", {"a": [0, 0], "b": [0, 0], "c": [1, 0], "d": [0, 0]})
    result = cli_process([sys.executable, RUN_SFT_MODEL, "--compare", sft, student, "--seed", "7",
                          "--comparisons_json", str(tmp_path / "comparisons.json")])
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "comparisons.json").read_text())
    assert written["comparison_methods"]["seed"] == 7
    [comparison] = written["comparisons"]
    # Differences [1, 1/2, 1/2, 0]: mean 1/2; sign vectors with |sum| >= 2: the three non-zero ones alike (2 of 8).
    assert (comparison["model"], comparison["baseline"], comparison["problems"]) == ("sft", "student", 4)
    assert comparison["pass@1_delta"] == pytest.approx(0.5) and comparison["p_value"] == pytest.approx(0.25)
    assert comparison == compare_models("sft", _rows({"a": [1, 1], "b": [1, 0], "c": [1, 1], "d": [0, 0]}), "student",
                                        _rows({"a": [0, 0], "b": [0, 0], "c": [1, 0], "d": [0, 0]}), seed=7)[0]
    assert "paired comparisons" in result.stdout and "+50.0" in result.stdout and "0.25" in result.stdout


def test_run_sft_model_compare_refuses_files_without_a_shared_problem(tmp_path):
    sft = _eval_file(tmp_path / "sft.parquet", "sft", {"a": [1]})
    student = _eval_file(tmp_path / "student.parquet", "student", {"z": [0]})
    result = cli_process([sys.executable, RUN_SFT_MODEL, "--compare", sft, student])
    assert result.returncode != 0 and "model sft with student on benchmark b" in result.stderr


def test_run_sft_model_still_needs_a_model_to_evaluate_without_compare():
    result = cli_process([sys.executable, RUN_SFT_MODEL, "--benchmarks", "x.parquet"])
    assert result.returncode == 2 and "--model" in result.stderr


def test_a_model_against_the_student_recovers_a_hand_computed_fraction_of_the_teachers_gain():
    # Benchmark b: student 0.25, sft 0.75, teacher 1.0: sft recovers 0.5 of the teacher's 0.75. Benchmark c:
    # student 0.5, sft and teacher 1.0: all of it. Benchmark d: the teacher is no better: nothing to recover.
    rows = {"student": _rows({"a": [0, 0], "b": [1, 0]}) + _rows({"a": [0, 1]}, "c") + _rows({"a": [1]}, "d"),
            "sft": _rows({"a": [1, 1], "b": [1, 0]}) + _rows({"a": [1, 1]}, "c") + _rows({"a": [1]}, "d"),
            "teacher": _rows({"a": [1, 1], "b": [1, 1]}) + _rows({"a": [1, 1]}, "c") + _rows({"a": [0]}, "d")}
    fractions = {c["benchmark"]: c["fraction_of_teacher_gain"] for c in document_comparisons(rows, seed=0)
                 if (c["model"], c["baseline"]) == ("sft", "student")}
    assert fractions == {"b": pytest.approx(2 / 3), "c": pytest.approx(1.0), "d": None}
    assert all("fraction_of_teacher_gain" not in c for c in document_comparisons(rows, seed=0)
               if c["baseline"] == "teacher" or c["model"] == "teacher")
    without_teacher = document_comparisons({"student": rows["student"], "sft": rows["sft"]}, seed=0)
    assert all("fraction_of_teacher_gain" not in c for c in without_teacher)
