"""Chat formatting for training: the chat template applied once, labels on assistant tokens only, and the
template's end-of-turn token (which must be the EOS of the fine-tuned model)."""

from __future__ import annotations

IGNORE_INDEX = -100
_MARKER = "\u2063mathsft-marker\u2063"


def end_of_turn_token(tokenizer) -> str:
    """The token the chat template writes right after an assistant message (<|im_end|> for ChatML).
    A base model's EOS (<|endoftext|> for Qwen) is often not it, and a model trained without it never stops."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1"}, {"role": "assistant", "content": _MARKER}], tokenize=False
    )
    suffix = text[text.index(_MARKER) + len(_MARKER):]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    if not ids or ids[0] not in tokenizer.all_special_ids:
        raise ValueError(f"chat template ends an assistant turn with {suffix!r}, not a special token; set an EOS by hand")
    return tokenizer.convert_ids_to_tokens(ids[0])


def tokenize_example(tokenizer, messages: list[dict], response: str, end_of_turn_id: int) -> tuple[list[int], list[int]]:
    """input_ids and labels for one conversation; labels are IGNORE_INDEX on every prompt token, and the
    sequence ends at the end-of-turn token, which is learned (anything the template puts after it is not)."""
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError("chat template renders the prompt differently once the answer is added; cannot mask it")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("prompt tokens change when the answer is appended; the loss mask would be off")
    try:
        end = full_ids.index(end_of_turn_id, len(prompt_ids)) + 1
    except ValueError:
        raise ValueError("the rendered conversation has no end-of-turn token after the answer") from None
    input_ids = full_ids[:end]
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids):]
    return input_ids, labels
