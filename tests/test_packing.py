"""Packing: bins within budget, one row per micro-batch with positions restarting per trace, and a loss
equal to the traces' losses computed one by one (the attention never crosses a trace boundary)."""

from __future__ import annotations

import pytest

from mathsft import packing
from mathsft.chat import IGNORE_INDEX


def test_bins_stay_within_the_budget_and_hold_every_trace_once():
    lengths = [700, 300, 512, 100, 900, 40, 260, 1000]
    bins = packing.pack(lengths, budget=1024)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert len(bins) == 4  # 3,812 tokens: no fewer than 4 bins of 1,024 can hold them
    with pytest.raises(ValueError, match="1025 tokens does not fit"):
        packing.pack([1025], budget=1024)


def test_a_packed_row_restarts_positions_and_never_labels_the_next_traces_first_token():
    ids, labels, positions, bounds = packing.collate_packed([([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4, 5], [IGNORE_INDEX, 5])])
    assert ids.tolist() == [[1, 2, 3, 4, 5]]
    assert positions.tolist() == [[0, 1, 2, 0, 1]]
    assert labels.tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]
    assert bounds.tolist() == [0, 3, 5]


@pytest.mark.e2e  # forward and backward passes of the student model: a training step's compute
def test_the_loss_of_a_packed_row_equals_the_traces_losses_one_by_one(student_dir, student_tokenizer):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from mathsft.chat import end_of_turn_token, tokenize_example

    end_of_turn_id = student_tokenizer.convert_tokens_to_ids(end_of_turn_token(student_tokenizer))
    examples = [tokenize_example(student_tokenizer, [{"role": "user", "content": q}], a, end_of_turn_id) for q, a in
                [("What is 2+2?", "2+2 = \\boxed{4}"), ("Add 13 and 29.", "13 + 29 = 42, so \\boxed{42}."),
                 ("Compute 7 times 6, showing your steps.", "7 x 6 = 42. The answer is \\boxed{42}.")]]
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32,
                                                 attn_implementation=packing.register_attention()).eval()

    def summed_loss(logits, labels):
        return F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum")

    with torch.no_grad():
        one_by_one = sum(summed_loss(model(input_ids=torch.tensor([ids])).logits, torch.tensor([labs]))
                         for ids, labs in examples)
        ids, labels, positions, bounds = packing.collate_packed(examples)
        packed = summed_loss(model(input_ids=ids, position_ids=positions, **packing.packed_kwargs(bounds, "cpu")).logits,
                             labels)
        # The same row attended densely (one causal sequence) is a different loss: the check can fail.
        dense = summed_loss(model(input_ids=ids).logits, labels)
    assert model.config._attn_implementation == packing.ATTENTION
    assert torch.allclose(packed, one_by_one, rtol=1e-4), (float(packed), float(one_by_one))
    assert not torch.allclose(dense, one_by_one, rtol=1e-3)


@pytest.mark.e2e  # forward and backward passes of the student model: a training step's compute
@pytest.mark.parametrize("path", ["linear-cross-entropy", "head-chunked-and-recomputed", "head-kept-for-backward"])
def test_the_label_only_loss_equals_cross_entropy_over_full_logits(student_dir, student_tokenizer, monkeypatch, path):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from mathsft import loss
    from mathsft.chat import end_of_turn_token, tokenize_example

    end_of_turn_id = student_tokenizer.convert_tokens_to_ids(end_of_turn_token(student_tokenizer))
    ids, labels = tokenize_example(student_tokenizer, [{"role": "user", "content": "Add 13 and 29."}],
                                   "13 + 29 = 42, so the answer is \\boxed{42}.", end_of_turn_id)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    fused_loss = None
    if path == "linear-cross-entropy":
        monkeypatch.setattr(loss, "LOGITS_PER_CHUNK", 5 * model.config.vocab_size)  # several chunks of 5 tokens
        fused_loss = loss.linear_cross_entropy
    else:
        monkeypatch.setattr(loss, "LOSS_CHUNK_TOKENS", 5)
        if path == "head-chunked-and-recomputed":
            monkeypatch.setattr(loss, "LOGITS_IN_MEMORY", 0)
    watched = {"an MLP weight": model.model.layers[0].mlp.up_proj.weight,
               "the head (tied to the embedding)": model.get_output_embeddings().weight}
    chunked = loss.summed_label_loss(model, ids, labels, fused_loss)
    (chunked * 0.25).backward()  # a scaled loss, as the trainer's token mean
    chunked_grads = {name: weight.grad.clone() for name, weight in watched.items()}
    model.zero_grad()
    logits = model(input_ids=ids).logits[0, :-1]
    full = F.cross_entropy(logits, labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum")
    (full * 0.25).backward()
    assert torch.allclose(chunked, full, rtol=1e-5)
    for name, weight in watched.items():  # float32 summation order only
        assert (chunked_grads[name] - weight.grad).norm() / weight.grad.norm() < 1e-4, name
