"""The reward stage's verifier: what each status means, and how the worker pool bounds and orders checks.
Real math-verify throughout; the hangs are answers that really keep sympy busy (over 10 s each here)."""

import logging
import multiprocessing as mp
import os
import signal
import threading
import time

from mathsft.reward import (
    CORRECT, NO_ANSWER, PARSE_ERROR, STATUSES, TIMEOUT, WRONG, Score, score_all, score_response, status_counts)

# sympy evaluates 9^(9^(9^...)) while math-verify parses or compares it: far longer than any bound here.
TOWER = "The answer is \\boxed{9^{9^{9^{9^{9^{9}}}}}}."


def boxed(answer: str) -> str:
    return f"Some reasoning with $x^2 = 4$ first. So the final answer is $\\boxed{{{answer}}}$."


def test_the_status_is_one_of_five_names_and_the_counts_list_them_all():
    assert STATUSES == ("correct", "wrong", "no_answer", "timeout", "parse_error")
    counts = status_counts([Score("1", 1.0, CORRECT), Score(None, 0.0, TIMEOUT), Score("2", 1.0, CORRECT)])
    assert counts == {"correct": 2, "wrong": 0, "no_answer": 0, "timeout": 1, "parse_error": 0}


def test_boxed_answer_equal_to_gold_is_correct():
    score = score_response("so the total is \\boxed{288}.", "$288$")
    assert (score.reward, score.verifier_status, score.extracted_answer) == (1.0, CORRECT, "288")


def test_equivalent_forms_are_correct_and_different_values_wrong():
    assert score_response("\\boxed{\\frac{1}{2}}", "$0.5$").verifier_status == CORRECT
    assert score_response(boxed("\\sqrt{12}"), "$2\\sqrt{3}$").verifier_status == CORRECT
    assert score_response(boxed("[-3,5)"), "$[-3, 5)$").verifier_status == CORRECT
    score = score_response("\\boxed{-3}", "$3$")
    assert (score.reward, score.verifier_status, score.extracted_answer) == (0.0, WRONG, "-3")


def test_response_without_an_answer_is_counted_as_no_answer():
    score = score_response("I am not sure.", "$3$")
    assert (score.reward, score.verifier_status, score.extracted_answer) == (0.0, NO_ANSWER, None)


def test_a_gold_answer_math_verify_cannot_read_is_a_parse_error_never_rewarded():
    for gold in ["no answer", "$\\boxed{}$"]:
        score = score_response(boxed("3"), gold)
        assert (score.reward, score.verifier_status, score.detail) == (0.0, PARSE_ERROR, "gold unreadable")


def test_an_exception_inside_math_verify_is_a_parse_error_with_its_type_as_detail():
    score = score_response(boxed("3"), None)  # math-verify's regexes raise TypeError on a missing gold
    assert (score.reward, score.verifier_status, score.detail) == (0.0, PARSE_ERROR, "math-verify raised TypeError")


def test_the_pool_scores_every_status_in_input_order_and_logs_parse_errors_with_their_row(caplog):
    items = [(boxed("4"), "$4$"), ("I give up.", "$4$"), (TOWER, "$3$"), (boxed("5"), "$4$"), (boxed("4"), "no answer")]
    with caplog.at_level(logging.WARNING, logger="mathsft.reward"):
        scores = score_all(items, workers=2, timeout_s=1.5)
    assert [s.verifier_status for s in scores] == [CORRECT, NO_ANSWER, TIMEOUT, WRONG, PARSE_ERROR]
    assert [s.reward for s in scores] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [s.extracted_answer for s in scores] == ["4", None, None, "5", None]
    assert "row 4: parse_error (gold unreadable)" in caplog.text
    assert "row 2: timeout" in caplog.text


def test_a_hung_check_is_killed_at_the_timeout_and_the_rest_of_its_batch_is_still_scored():
    # One worker holds the whole batch, the hang in the middle: the items behind it go to the fresh worker.
    items = [(boxed("1"), "$1$"), (TOWER, "$3$"), (boxed("2"), "$3$"), (boxed("4"), "$4$")]
    started = time.monotonic()
    scores = score_all(items, workers=1, timeout_s=1.5, batch_size=4)
    elapsed = time.monotonic() - started
    assert [s.verifier_status for s in scores] == [CORRECT, TIMEOUT, WRONG, CORRECT]
    assert 1.5 <= elapsed < 10, f"scoring took {elapsed:.1f} s; the 1.5 s bound did not hold"


def test_results_keep_input_order_across_batches_and_timeouts():
    answers = [str(n) for n in range(40)]
    items = [(boxed(a), f"${a if n % 3 else int(a) + 1}$") for n, a in enumerate(answers)]
    items[7] = items[26] = (TOWER, "$3$")
    scores = score_all(items, workers=2, timeout_s=1.5, batch_size=4)
    expected = [TIMEOUT if n in (7, 26) else (CORRECT if n % 3 else WRONG) for n in range(40)]
    assert [s.verifier_status for s in scores] == expected
    assert [s.extracted_answer for n, s in enumerate(scores) if n not in (7, 26)] == \
        [a for n, a in enumerate(answers) if n not in (7, 26)]


def test_the_pool_runs_as_many_checks_at_once_as_it_has_workers():
    # Four checks that each hold a worker for the whole 1.5 s bound: two workers need two rounds (3 s) and
    # cannot do it faster; one worker would need four rounds (6 s).
    items = [(TOWER, "$3$")] * 4
    started = time.monotonic()
    scores = score_all(items, workers=2, timeout_s=1.5, batch_size=1)
    elapsed = time.monotonic() - started
    assert [s.verifier_status for s in scores] == [TIMEOUT] * 4
    assert 3.0 <= elapsed < 6.0, f"took {elapsed:.1f} s: not two checks at a time"


def test_a_worker_that_dies_is_a_parse_error_for_its_item_and_the_rest_are_scored(caplog):
    # The system kills the worker mid-check (as the out-of-memory killer would); the hang keeps it on that item.
    items = [(TOWER, "$3$"), (boxed("2"), "$2$"), (boxed("7"), "$2$")]

    def kill_the_worker():
        deadline = time.monotonic() + 20
        while not mp.active_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # started, given its batch, and stuck in the tower by now
        for child in mp.active_children():
            os.kill(child.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="mathsft.reward"):
        scores = score_all(items, workers=1, timeout_s=30, batch_size=3)
    killer.join()
    assert [s.verifier_status for s in scores] == [PARSE_ERROR, CORRECT, WRONG]
    assert "row 0: parse_error (worker died, exit code -9)" in caplog.text
