"""A model's turn as thought and answer: R1-style reasoning models think in <think>...</think> before answering.
A server with a reasoning parser (vLLM's --reasoning-parser deepseek_r1) returns the thought in its own field and
the answer in `content`; without one, both come in `content`, and a chat template that ends its generation prompt
with <think> (R1's do) leaves the opening tag out of the reply. Both read the same here: the reward scores the
answer alone, never a boxed expression inside the thought, and training learns one canonical turn."""

from __future__ import annotations

from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True)
class Turn:
    thought: str | None  # None: the model did not think (or its thought could not be told from its answer)
    answer: str  # "": a thought that never ended (cut at max_tokens, or the model stopped inside it)


def split_turn(response: str, reasoning: str | None = None, think_prefilled: bool | None = None) -> Turn:
    """The thought and answer of one reply: `response` is the reply's content ("" where the server sent null),
    `reasoning` the server's reasoning field where it split the turn, `think_prefilled` whether the prompt ended
    with <think>. Without a reasoning field, the text is read as vLLM's parser reads it (anything before <think>
    dropped, the thought up to the first </think>), so a turn splits the same with the parser on or off."""
    if reasoning is not None:
        return Turn(reasoning, response)
    before, opened, text = response.partition(THINK_START)
    if not opened:
        text = before
    thought, closed, answer = text.partition(THINK_END)
    if closed:
        return Turn(thought, answer)
    if opened or think_prefilled:
        return Turn(text, "")  # the thought never ended: there is no answer
    return Turn(None, response)


def answer_of(row: dict) -> str:
    """The text the reward scores: the answer after the thought (a stored row's response, reasoning and
    think_prefilled; rows written before those columns existed have neither)."""
    return split_turn(row["response"], row.get("reasoning"), row.get("think_prefilled")).answer


def sft_text(row: dict) -> str:
    """The assistant turn a student is trained on: for a thinking teacher, `<think>\\n{thought}\\n</think>\\n\\n{answer}`
    whatever the server did with it (the student's own chat template prefills nothing: it learns to open its
    thought itself); for any other, the response as the teacher gave it."""
    turn = split_turn(row["response"], row.get("reasoning"), row.get("think_prefilled"))
    if turn.thought is None:
        return row["response"]
    return f"{THINK_START}\n{turn.thought.strip()}\n{THINK_END}\n\n{turn.answer.lstrip()}"


def prompt_prefills_think(prompt: str) -> bool:
    """Whether a rendered generation prompt leaves the model inside an opened thought (R1-style templates)."""
    return prompt.rstrip().endswith(THINK_START)
