import time

from mathsft.reward import CORRECT, NO_ANSWER, TIMEOUT, WRONG, score_all, score_response


def test_boxed_answer_equal_to_gold_is_correct():
    score = score_response("so the total is \\boxed{288}.", "$288$")
    assert (score.reward, score.verifier_status, score.extracted_answer) == (1.0, CORRECT, "288")


def test_equivalent_forms_are_correct_and_different_values_wrong():
    assert score_response("\\boxed{\\frac{1}{2}}", "$0.5$").verifier_status == CORRECT
    assert score_response("\\boxed{-3}", "$3$").verifier_status == WRONG


def test_response_without_an_answer_is_counted_as_no_answer():
    score = score_response("I am not sure.", "$3$")
    assert (score.reward, score.verifier_status, score.extracted_answer) == (0.0, NO_ANSWER, None)


def test_a_hung_check_is_killed_at_the_timeout_and_the_rest_keep_their_order():
    tower = "\\boxed{9^{9^{9^{9^{9^{9}}}}}}"  # sympy works on this for far longer than the bound
    items = [("\\boxed{1}", "$1$"), (tower, "$3$"), ("\\boxed{2}", "$3$"), ("\\boxed{4}", "$4$")]
    started = time.monotonic()
    scores = score_all(items, workers=2, timeout_s=2.0)
    elapsed = time.monotonic() - started
    assert [s.verifier_status for s in scores] == [CORRECT, TIMEOUT, WRONG, CORRECT]
    assert elapsed < 20, f"scoring took {elapsed:.1f} s; the 2 s bound did not hold"
