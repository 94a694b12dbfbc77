import pytest

from mathsft.prompts import build_messages


def test_boxed_template_puts_the_problem_first_and_asks_for_a_boxed_answer():
    messages = build_messages("What is 2+2?", "boxed_cot_v1")
    assert messages == [{"role": "user", "content": messages[0]["content"]}]
    assert messages[0]["content"].startswith("What is 2+2?")
    assert "\\boxed{}" in messages[0]["content"]


def test_unknown_template_names_the_known_ones():
    with pytest.raises(KeyError, match="boxed_cot_v1"):
        build_messages("x", "nope")
