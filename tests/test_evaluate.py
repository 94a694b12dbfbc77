import math

import pytest

from mathsft.evaluate import benchmark_metrics, eval_document, mean_and_stderr, pass_at_k, summary_table


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # C(3,3)/C(5,3) = 1/10
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_stderr_is_sample_standard_deviation_over_sqrt_count():
    mean, stderr = mean_and_stderr([0.0, 0.5, 1.0, 0.5])
    assert mean == 0.5
    assert stderr == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 0) / 3 / 4))
    assert mean_and_stderr([0.7]) == (0.7, 0.0)


def _rows(rewards_by_problem, finish="stop"):
    return [
        {"problem_id": pid, "reward": r, "finish_reason": finish, "completion_tokens": 10, "verifier_status": "wrong",
         "benchmark": "b", "model": "m", "temperature": 0.6, "top_p": 0.95, "max_tokens": 10,
         "prompt_template": "boxed_cot_v1"}
        for pid, rewards in rewards_by_problem.items() for r in rewards
    ]


def test_pass_at_1_is_the_mean_over_samples_then_problems():
    metrics = benchmark_metrics(_rows({"a": [1, 1, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 1, 1]}), pass_k=[1, 2])
    assert metrics["pass@1"] == pytest.approx(0.5)
    assert metrics["pass@1_stderr"] == pytest.approx(math.sqrt(0.25 / 3))
    assert metrics["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + 0 + 1) / 3)
    assert (metrics["problems"], metrics["samples_per_problem"]) == (3, 4)


def test_unequal_sample_counts_are_refused():
    with pytest.raises(ValueError, match="sample counts"):
        benchmark_metrics(_rows({"a": [1, 0], "b": [1]}), pass_k=[1])


def test_eval_document_and_table_cover_every_model_and_benchmark():
    doc = eval_document({"student": _rows({"a": [1, 0]}), "sft": _rows({"a": [1, 1]})}, {"sft": "results/models/sft"},
                        [1], "abc", {"torch": "x"})
    assert doc["models"]["sft"]["benchmarks"]["b"]["pass@1"] == 1.0
    assert doc["models"]["sft"]["model"] == "results/models/sft"
    table = summary_table(doc)
    assert "100.0 ± 0.0" in table and "50.0 ± 0.0" in table
