"""The loss mask, token by token, on the student's real tokenizer (ChatML)."""

from mathsft.chat import IGNORE_INDEX, end_of_turn_token, tokenize_example
from mathsft.prompts import build_messages


def test_end_of_turn_is_im_end_for_chatml(student_tokenizer):
    assert end_of_turn_token(student_tokenizer) == "<|im_end|>"


def test_loss_covers_exactly_the_answer_and_its_end_of_turn(student_tokenizer):
    tokenizer = student_tokenizer
    end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    messages = build_messages("What is 2 + 3?", "boxed_cot_v1")
    input_ids, labels = tokenize_example(tokenizer, messages, "2 + 3 = 5, so \\boxed{5}.", end_of_turn_id)
    prompt_ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)
    assert input_ids[:n_prompt] == prompt_ids
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # nothing of the prompt, including "assistant\n"
    assert labels[n_prompt] == input_ids[n_prompt] != IGNORE_INDEX  # the first answer token is learned
    assert tokenizer.decode(input_ids[n_prompt:n_prompt + 1]).startswith("2")
    assert input_ids[-1] == end_of_turn_id and labels[-1] == end_of_turn_id  # the model learns to stop
    assert labels[n_prompt:] == input_ids[n_prompt:]
    assert tokenizer.decode(input_ids[n_prompt:]) == "2 + 3 = 5, so \\boxed{5}.<|im_end|>"
