import copy
import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.workflow import cli_process
from mathsft.generate import derive_request_seed
from mathsft.io import EVAL_SCHEMA, write_parquet
from mathsft.metrics import (EVAL_JSON_SCHEMA, LEVELS_HEADING, benchmark_metrics, check_document, eval_document,
                              majority_at_k, mean_and_stderr, pass_at_k, print_summary, schema_errors, summary_table)

SUMMARIZE = str(Path(__file__).resolve().parents[1] / "scripts" / "summarize_eval.py")
RUN_SFT_MODEL = str(Path(__file__).resolve().parents[1] / "scripts" / "run_sft_model.py")


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(4, 3, 2) == 1.0
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # C(3,3)/C(5,3) = 1/10
    assert pass_at_k(16, 1, 16) == 1.0 and pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 4, 4) == pytest.approx(1 - (12 * 11 * 10 * 9) / (16 * 15 * 14 * 13))  # 1 - C(12,4)/C(16,4)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_stderr_is_sample_standard_deviation_over_sqrt_count():
    mean, stderr = mean_and_stderr([0.0, 0.5, 1.0, 0.5])
    assert mean == 0.5
    assert stderr == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 0) / 3 / 4))
    assert mean_and_stderr([0.7]) == (0.7, 0.0)
    assert mean_and_stderr([0.0, 1.0]) == (0.5, pytest.approx(0.5))  # sd sqrt(1/2), / sqrt(2)


A, B, C, NONE = ("42", True), ("41", False), ("40", False), (None, False)


def test_majority_vote_takes_the_most_voted_answer_of_each_group():
    assert majority_at_k([A, A, B, A], 4) == 1.0
    assert majority_at_k([B, B, A, C], 4) == 0.0
    assert majority_at_k([A], 1) == 1.0 and majority_at_k([B], 1) == 0.0


def test_majority_vote_ties_score_the_expected_accuracy_of_a_random_pick_among_the_tied():
    assert majority_at_k([A, B], 2) == 0.5
    assert majority_at_k([A, B, C, C, A, B], 6) == pytest.approx(1 / 3)  # three answers tied at two votes
    assert majority_at_k([A, A, B, B, C], 5) == 0.5  # C has fewer votes: not in the tie


def test_samples_without_an_answer_never_vote():
    assert majority_at_k([NONE, NONE, NONE, A], 4) == 1.0
    assert majority_at_k([NONE, NONE, A, B], 4) == 0.5
    assert majority_at_k([NONE, NONE], 2) == 0.0  # no votes: the group scores 0


def test_majority_vote_averages_disjoint_groups_in_sample_order_and_drops_the_remainder():
    # groups (A, A), (B, B), (A, B); the fifth sample is left out
    assert majority_at_k([A, A, B, B, A, B, B], 2) == pytest.approx((1 + 0 + 0.5) / 3)
    with pytest.raises(ValueError, match="maj@3"):
        majority_at_k([A, B], 3)


def _rows(rewards_by_problem, finish="stop", answers=None, statuses=None):
    rows = []
    for pid, rewards in rewards_by_problem.items():
        for i, r in enumerate(rewards):
            answer = answers[pid][i] if answers else ("7" if r else f"wrong{i}")
            status = statuses[pid][i] if statuses else ("correct" if r else "wrong")
            rows.append({
                "problem_id": pid, "sample_index": i, "reward": r, "finish_reason": finish, "completion_tokens": 10,
                "verifier_status": status, "extracted_answer": answer, "benchmark": "b", "model": "m",
                "served_model_name": None,
                "temperature": 0.6, "top_p": 0.95, "max_tokens": 10, "prompt_template": "boxed_cot_v1", "api": "chat",
                "seed": derive_request_seed(0, pid, i),
            })
    return rows


def test_pass_at_1_is_the_mean_over_samples_then_problems():
    metrics = benchmark_metrics(_rows({"a": [1, 1, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 1, 1]}), pass_k=[1, 2])
    assert metrics["pass@1"] == pytest.approx(0.5)
    assert metrics["pass@1_stderr"] == pytest.approx(math.sqrt(0.25 / 3))
    assert metrics["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + 0 + 1) / 3)
    assert (metrics["problems"], metrics["samples_per_problem"]) == (3, 4)


def test_maj_at_k_of_a_benchmark_is_the_mean_over_problems_in_sample_index_order():
    answers = {"a": [" 7", "x", "7 ", "y"], "b": ["x", "x", "7", None]}
    statuses = {"a": ["correct", "wrong", "correct", "wrong"], "b": ["wrong", "wrong", "correct", "no_answer"]}
    rows = _rows({"a": [1, 0, 1, 0], "b": [0, 0, 1, 0]}, answers=answers, statuses=statuses)
    metrics = benchmark_metrics(list(reversed(rows)), pass_k=[1, 2, 4, 8])
    # a: groups (7, x) tie -> 0.5 and (7, y) tie -> 0.5; one group of 4: 7 twice -> 1.  b: (x, x) -> 0,
    # (7, no answer) -> 1; all four: x twice -> 0.
    assert metrics["maj@2"] == pytest.approx((0.5 + 0.5) / 2)
    assert metrics["maj@4"] == pytest.approx((1 + 0) / 2)
    assert "maj@8" not in metrics and "pass@8" not in metrics and "maj@1" not in metrics
    assert metrics["no_answer_rate"] == pytest.approx(1 / 8)
    assert metrics["verifier_status"] == {"correct": 3, "wrong": 4, "no_answer": 1, "timeout": 0, "parse_error": 0}


def test_truncation_rate_counts_finish_reason_length():
    rows = _rows({"a": [1, 0]}) + _rows({"b": [0, 0]}, finish="length")
    assert benchmark_metrics(rows, pass_k=[1])["truncation_rate"] == 0.5


def test_unequal_sample_counts_are_refused():
    with pytest.raises(ValueError, match="sample counts"):
        benchmark_metrics(_rows({"a": [1, 0], "b": [1]}), pass_k=[1])


def test_a_status_the_reward_stage_does_not_write_is_refused():
    with pytest.raises(ValueError, match="'error'.*Rescore"):
        benchmark_metrics(_rows({"a": [0]}, statuses={"a": ["error"]}), pass_k=[1])


def test_eval_document_and_table_cover_every_model_and_benchmark():
    doc = eval_document({"student": _rows({"a": [1, 0]}), "sft": _rows({"a": [1, 1]})}, {"sft": "results/models/sft"},
                        [1], "abc", {"torch": "x"})
    assert doc["models"]["sft"]["benchmarks"]["b"]["pass@1"] == 1.0
    assert doc["models"]["sft"]["model"] == "results/models/sft"
    table = summary_table(doc)
    assert "100.0 ± 0.0" in table and "50.0 ± 0.0" in table


def test_samples_of_another_seed_or_mixed_sampling_settings_are_refused():
    rows = _rows({"a": [1, 0]})
    document = eval_document({"m": rows}, {}, [1], None, {"python": "3"}, base_seed=0)
    assert document["models"]["m"]["sampling"]["seed"] == 0
    with pytest.raises(ValueError, match="base seed 1"):
        eval_document({"m": rows}, {}, [1], None, {"python": "3"}, base_seed=1)
    rows[1]["temperature"] = 1.0
    with pytest.raises(ValueError, match="different sampling settings"):
        eval_document({"m": rows}, {}, [1], None, {"python": "3"})


def _document():
    rows = _rows({"a": [1, 0, 0, 1], "b": [0, 0, 0, 1]})
    return eval_document({"student": rows, "sft": rows}, {"sft": "results/models/sft"}, [1, 2, 4], "0123456789abcdef",
                         {"python": "3.11.2", "torch": "2.13.0"}, base_seed=0)


def test_a_produced_eval_json_follows_its_schema():
    document = json.loads(json.dumps(_document()))  # as written and read back
    assert schema_errors(document) == []
    check_document(document)
    assert json.loads(EVAL_JSON_SCHEMA.read_text())["properties"]["schema_version"] == {"const": document["schema_version"]}


@pytest.mark.parametrize("breakage, where", [
    (lambda d: d.update(schema_version=1), "schema_version"),
    (lambda d: d.pop("config_hash"), "'config_hash' is a required property"),
    (lambda d: d.update(config_hash="not-a-hash"), "config_hash"),
    (lambda d: d["models"]["sft"]["benchmarks"]["b"].update({"pass@1": 1.5}), "models/sft/benchmarks/b/pass@1"),
    (lambda d: d["models"]["sft"]["benchmarks"]["b"].pop("pass@1_stderr"), "pass@1_stderr"),
    (lambda d: d["models"]["sft"]["benchmarks"]["b"].update({"maj@x": 0.5}), "maj@x"),
    (lambda d: d["models"]["sft"]["benchmarks"]["b"]["verifier_status"].update(error=1), "verifier_status"),
    (lambda d: d["models"]["student"]["sampling"].pop("seed"), "'seed' is a required property"),
    (lambda d: d["models"].clear(), "models"),
    (lambda d: d.pop("comparisons"), "'comparisons' is a required property"),
    (lambda d: d["comparisons"][0].update(ci95=[0.0]), "comparisons/0/ci95"),
    (lambda d: d["comparisons"][0].update(p_value=0.0), "comparisons/0/p_value"),
    (lambda d: d["comparisons"][0].update(baseline="sft"), "comparisons/0/baseline"),
    (lambda d: d["comparisons"][0].update({"pass@1_delta": -1.5}), "comparisons/0/pass@1_delta"),
    (lambda d: d["comparison_methods"].pop("seed"), "'seed' is a required property"),
])
def test_a_broken_eval_json_does_not_follow_the_schema(breakage, where):
    document = copy.deepcopy(_document())
    breakage(document)
    errors = schema_errors(document)
    assert errors and any(where in error for error in errors), errors
    with pytest.raises(ValueError, match="breaks"):
        check_document(document)


def test_summarize_eval_writes_a_valid_eval_json_and_prints_both_tables(tmp_path):
    inputs = []
    for label in ("student", "sft"):
        rows = [r | {"evaluated_model": label, "source": "b", "problem": "p", "answer": "$7$", "messages": "[]",
                     "response": "r", "prompt_tokens": 5, "latency_s": 0.1}
                for r in _rows({"a": [1, 0, 0, 1], "b": [0, 0, 0, 1]})]
        write_parquet(rows, tmp_path / f"{label}.parquet", EVAL_SCHEMA)
        inputs.append(str(tmp_path / f"{label}.parquet"))
    result = cli_process([sys.executable, SUMMARIZE, "--inputs", *inputs, "--output",
                          str(tmp_path / "eval.json"), "--pass_k", "1", "2", "4", "--seed", "0",
                          "--config_hash", "0123456789abcdef"])
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "eval.json").read_text())
    assert schema_errors(document) == []
    assert set(document["models"]) == {"student", "sft"}
    assert [(c["model"], c["baseline"], c["benchmark"]) for c in document["comparisons"]] == [("sft", "student", "b")]
    assert document["comparison_methods"]["seed"] == 0
    assert "pass@1 (%) ± stderr" in result.stdout and "maj@4" in result.stdout
    assert "paired comparisons" in result.stdout and "[+0.0, +0.0]" in result.stdout
    wrong_seed = cli_process([sys.executable, SUMMARIZE, "--inputs", *inputs, "--output",
                              str(tmp_path / "other.json"), "--seed", "5"])
    assert wrong_seed.returncode != 0 and "base seed 5" in wrong_seed.stderr
    assert not (tmp_path / "other.json").exists()


def test_the_end_of_run_summary_prints_pass_at_1_then_every_metric_then_the_comparisons(capsys):
    document = _document()
    print_summary(document)
    out = capsys.readouterr().out
    assert out.startswith("pass@1 (%) ± stderr") and summary_table(document) in out
    assert "maj@2" in out and "no answer" in out
    comparisons = out[out.index("paired comparisons"):].splitlines()
    assert comparisons[1].split() == ["model", "baseline", "benchmark", "problems", "pass@1", "baseline", "pass@1",
                                      "delta", "±", "se", "95%", "CI", "p", "of", "teacher's", "gain"]
    assert comparisons[2].split() == ["sft", "student", "b", "2", "37.5", "37.5", "+0.0", "±", "0.0", "[+0.0,",
                                      "+0.0]", "1"]


def _teacher_student_sft_document():
    """student solves a of (a, b, c, d), the SFT model a and b and the teacher a, b and c, one sample each."""
    rewards = {"student": [1, 0, 0, 0], "sft": [1, 1, 0, 0], "teacher": [1, 1, 1, 0]}
    rows = {label: _rows(dict(zip("abcd", ([r] for r in values)))) for label, values in rewards.items()}
    return eval_document(rows, {}, [1], None, {"python": "3"}, base_seed=0)


def test_eval_json_compares_each_model_with_student_and_teacher_and_the_teacher_with_the_student():
    document = _teacher_student_sft_document()
    assert schema_errors(json.loads(json.dumps(document))) == []
    deltas = {(c["model"], c["baseline"]): c["pass@1_delta"] for c in document["comparisons"]}
    assert deltas == {("sft", "student"): 0.25, ("sft", "teacher"): -0.25, ("teacher", "student"): 0.5}
    # The SFT model gains 0.25 of the teacher's 0.5 over the student.
    assert [c.get("fraction_of_teacher_gain") for c in document["comparisons"]
            if (c["model"], c["baseline"]) == ("sft", "student")] == [0.5]
    # teacher - student: differences [0, 1, 1, 0]; |sum| >= 2 for 2 of the 4 sign vectors of the two non-zero ones.
    teacher = document["comparisons"][2]
    assert teacher["p_value"] == 0.5 and teacher["p_value_exact"]
    assert teacher["pass@1_delta_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)  # sd of [0, 1, 1, 0] is sqrt(1/3)


def test_a_model_evaluated_on_other_problems_than_the_student_is_refused_by_name():
    student = _rows({"a": [1, 0]})
    sft = _rows({"z": [1, 0]})
    with pytest.raises(ValueError, match="model sft with student on benchmark b"):
        eval_document({"student": student, "sft": sft}, {}, [1], None, {"python": "3"})


def _described(rows, described):
    """Rows with each problem's (level, subject) from `described`, keyed by problem id."""
    return [row | dict(zip(("level", "subject"), described[row["problem_id"]])) for row in rows]


def test_eval_json_gives_pass_at_1_per_level_and_subject_where_the_problems_carry_them(capsys):
    rows = _described(_rows({"a": [1, 1, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 1, 1], "d": [1, 0, 0, 0]}),
                      {"a": ("1", "Algebra"), "b": ("1", "Geometry"), "c": ("2", "Algebra"), "d": ("10", "Geometry")})
    document = json.loads(json.dumps(eval_document({"student": rows}, {}, [1], None, {"python": "3"}, base_seed=0)))
    metrics = document["models"]["student"]["benchmarks"]["b"]
    # Level 1: problems a (2 of 4 correct) and b (0 of 4): pass@1 (0.5 + 0) / 2, stderr sd(0.5, 0) / sqrt(2).
    assert list(metrics["by_level"]) == ["1", "2", "10"]  # natural order, not "1", "10", "2"
    assert metrics["by_level"]["1"] == {"problems": 2, "pass@1": 0.25,
                                        "pass@1_stderr": pytest.approx(math.sqrt(0.125) / math.sqrt(2))}
    assert metrics["by_level"]["2"] == {"problems": 1, "pass@1": 1.0, "pass@1_stderr": 0.0}
    assert metrics["by_level"]["10"] == {"problems": 1, "pass@1": 0.25, "pass@1_stderr": 0.0}
    assert metrics["by_subject"]["Algebra"]["pass@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["by_subject"]["Geometry"]["pass@1"] == pytest.approx((0.0 + 0.25) / 2)
    assert schema_errors(document) == []
    print_summary(document)
    out = capsys.readouterr().out
    levels = out[out.index(LEVELS_HEADING):].splitlines()
    assert levels[1].split() == ["model", "benchmark", "1", "2", "10"]
    assert levels[2].split() == ["student", "b", "25.0", "100.0", "25.0"]
    broken = copy.deepcopy(document)
    broken["models"]["student"]["benchmarks"]["b"]["by_level"]["1"]["pass@1"] = 1.5
    assert any("by_level/1/pass@1" in error for error in schema_errors(broken))


def test_problems_without_a_level_give_no_pass_at_1_per_level(capsys):
    document = _document()
    for model in document["models"].values():
        assert all("by_level" not in m and "by_subject" not in m for m in model["benchmarks"].values())
    print_summary(document)
    assert LEVELS_HEADING not in capsys.readouterr().out
    # Problems without a level beside some with one are left out of by_level, not counted under a made-up level.
    rows = _described(_rows({"a": [1, 0], "b": [1, 1]}), {"a": ("3", None), "b": (None, None)})
    metrics = eval_document({"m": rows}, {}, [1], None, {"python": "3"})["models"]["m"]["benchmarks"]["b"]
    assert metrics["by_level"] == {"3": {"problems": 1, "pass@1": 0.5, "pass@1_stderr": 0.0}}
    assert "by_subject" not in metrics


def test_an_evaluation_resumed_from_samples_stored_before_metadata_existed_gives_them_their_problems_level(tmp_path):
    from mathsft.data import Counts, clean_problems
    from helpers.sample_store import write_legacy_journal

    from mathsft.generate import Sampling, journal_fingerprint
    from mathsft.io import BENCHMARK_SCHEMA, PROBLEM_SCHEMA

    raw = [{"source": "math500", "problem": "Compute $\\dbinom{5}{2}$.", "answer": "10", "level": 1,
            "subject": "Counting"},
           {"source": "math500", "problem": "Find $\\sqrt{16}$.", "answer": "4", "level": 2, "subject": "Algebra"}]
    bench = tmp_path / "math500.parquet"
    write_parquet(list(clean_problems(raw, Counts(), set())), bench, BENCHMARK_SCHEMA)
    output = tmp_path / "generations" / "student.parquet"
    # The rows and records the evaluation sampled and journaled before benchmarks carried metadata.
    old_rows = [{name: row[name] for name in PROBLEM_SCHEMA.names} | {"benchmark": "math500"}
                for row in clean_problems(raw, Counts(), set())]
    # A store of that time: its rows' digest in the fingerprint, one journal per output (helpers.sample_store).
    fingerprint = journal_fingerprint("org/model", "boxed_cot_v1", Sampling(1, 0.6, 0.95, 16, 0))
    write_legacy_journal(output, fingerprint, old_rows, [
        {"row_index": index, "sample_index": 0, "messages": "[]", "response": "\\boxed{1}", "finish_reason": "stop",
         "prompt_tokens": 5, "completion_tokens": 3, "model": "org/model", "served_model_name": None,
         "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 16,
         "seed": derive_request_seed(0, row["problem_id"], 0), "latency_s": 0.1} for index, row in enumerate(old_rows)])
    result = cli_process([sys.executable, RUN_SFT_MODEL, "--no-score",
                          "--model", "org/model", "--label", "student", "--benchmarks", str(bench), "--output",
                          str(output), "--samples_per_problem", "1", "--temperature", "0.6", "--top_p", "0.95",
                          "--max_tokens", "16", "--seed", "0",
                          "--health_timeout_s", "1"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no server needed" in result.stderr
    rows = pq.read_table(output).to_pylist()
    assert [(row["level"], row["subject"], row["response"]) for row in rows] == [("1", "Counting", "\\boxed{1}"),
                                                                               ("2", "Algebra", "\\boxed{1}")]
