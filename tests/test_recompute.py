"""Elementwise recompute (train.recompute_elementwise): matmul and attention outputs are kept, the ops between
them run again in the backward pass, and the gradients are the same to the bit."""

from __future__ import annotations

import collections

import pytest


def test_matmuls_and_attention_are_kept_and_the_ops_between_them_recomputed():
    from mathsft.recompute import keeps_output

    for kept in ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_efficient_attention", "torch_attn::_varlen_attn"):
        assert keeps_output(kept), kept
    for recomputed in ("aten::silu", "aten::mul", "aten::rsqrt", "aten::pow", "aten::mean", "aten::cat",
                       "aten::neg", "aten::add", "aten::_to_copy"):
        assert not keeps_output(recomputed), recomputed


def _one_step(recompute: bool):
    """Loss, gradients and the aten ops run (with their counts) of one forward and backward pass of a small
    random Llama over a packed row of three traces."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from mathsft import loss, packing
    from mathsft.chat import IGNORE_INDEX
    from mathsft.recompute import elementwise_recompute

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = packing.register_attention()
    if recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=elementwise_recompute())
    model.train()
    traces = [(list(range(3, 3 + n)), [IGNORE_INDEX] * 2 + list(range(5, 3 + n))) for n in (7, 11, 5)]
    ids, labels, positions, bounds = packing.collate_packed(traces)
    ops = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops[func.name()] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        total = loss.summed_label_loss(model, ids, labels, loss.linear_cross_entropy, position_ids=positions,
                                       **packing.packed_kwargs(bounds, "cpu"))
        total.backward()
    return float(total.detach()), {name: p.grad.clone() for name, p in model.named_parameters()}, ops


def test_the_gradients_are_the_same_to_the_bit_and_no_matmul_runs_twice():
    import torch

    plain_loss, plain_grads, plain_ops = _one_step(recompute=False)
    loss, grads, ops = _one_step(recompute=True)
    assert loss == plain_loss
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, plain_grads[name]), name
    # The elementwise ops of each layer ran again in the backward pass; no matrix product or attention did.
    assert ops["aten::silu"] == 2 * plain_ops["aten::silu"] == 2 * 2
    assert ops["aten::rsqrt"] > plain_ops["aten::rsqrt"]
    for name in ("aten::mm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu"):
        assert ops[name] == plain_ops[name], name
    assert plain_ops["aten::_scaled_dot_product_flash_attention_for_cpu"] == 2 * 3  # per layer, per trace
