"""mathsft.turns: a reasoning model's turn reads the same whether the server split the thought off or not, the
reward sees the answer alone, and training gets one canonical turn."""

from __future__ import annotations

import pytest

from mathsft.turns import Turn, answer_of, prompt_prefills_think, sft_text, split_turn

THOUGHT = "Okay, 2 + 2. Is it \\boxed{5}? No.\n"
ANSWER = "\n\nThe answer is \\boxed{4}."


def parsed(model_output: str) -> tuple[str, str | None]:
    """(content, reasoning) as vLLM 0.32's deepseek_r1 parser returns them for a chat reply (reasoning/
    basic_parsers.py, extract_reasoning): text before <think> dropped; without </think> all of it is the thought
    and content is null; an empty content is null too. Null content reaches the record as "" (mathsft.generate)."""
    before, opened, rest = model_output.partition("<think>")
    text = rest if opened else before
    if "</think>" not in text:
        return "", text
    reasoning, _, content = text.partition("</think>")
    return content, reasoning


# What a model writes after its prompt: with the prompt's <think> prefilled (R1's chat templates), or written.
OUTPUTS = {
    "prefilled, finished": (f"{THOUGHT}</think>{ANSWER}", True),
    "written, finished": (f"<think>{THOUGHT}</think>{ANSWER}", False),
    "finished, empty answer": (f"{THOUGHT}</think>", True),
    "prefilled, cut inside the thought": (THOUGHT, True),
    "written, cut inside the thought": (f"<think>{THOUGHT}", False),
}


@pytest.mark.parametrize("name", OUTPUTS)
def test_a_turn_splits_the_same_with_the_reasoning_parser_on_or_off(name):
    output, prefilled = OUTPUTS[name]
    content, reasoning = parsed(output)
    off, on = split_turn(output, None, prefilled), split_turn(content, reasoning, prefilled)
    assert off == on
    assert sft_text({"response": output, "think_prefilled": prefilled}) == sft_text(
        {"response": content, "reasoning": reasoning, "think_prefilled": prefilled})


def test_the_reward_scores_the_answer_never_a_boxed_expression_inside_the_thought():
    assert answer_of({"response": f"{THOUGHT}</think>{ANSWER}"}) == ANSWER
    assert answer_of({"response": ANSWER, "reasoning": THOUGHT}) == ANSWER
    # A thought that never ended has no answer, even with a boxed expression in it.
    assert answer_of({"response": "", "reasoning": THOUGHT}) == ""
    assert answer_of({"response": THOUGHT, "think_prefilled": True}) == ""
    # A model that does not think: its whole reply, as before (rows stored before the columns existed too).
    assert answer_of({"response": ANSWER}) == ANSWER
    assert split_turn(ANSWER, None, False) == Turn(None, ANSWER)


def test_the_sft_target_is_one_canonical_turn_and_a_plain_reply_is_kept_as_it_came():
    assert sft_text({"response": ANSWER, "reasoning": THOUGHT}) == (
        "<think>\nOkay, 2 + 2. Is it \\boxed{5}? No.\n</think>\n\nThe answer is \\boxed{4}.")
    assert sft_text({"response": f"{THOUGHT}</think>{ANSWER}", "think_prefilled": True}) == sft_text(
        {"response": ANSWER, "reasoning": THOUGHT})
    assert sft_text({"response": ANSWER + "\n", "reasoning": None, "think_prefilled": None}) == ANSWER + "\n"


def test_a_prompt_ending_inside_an_opened_thought_is_told_from_one_that_does_not():
    assert prompt_prefills_think("<|im_start|>assistant\n<think>\n")
    assert not prompt_prefills_think("<|im_start|>assistant\n")
    assert not prompt_prefills_think("<think>\n</think>\n\n")
