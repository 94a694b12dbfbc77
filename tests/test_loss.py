"""The fused linear cross-entropy: the loss and both gradients of cross-entropy over full logits, a chunk at a
time (the model-level check, on the student, is in test_packing.py)."""

from __future__ import annotations

import pytest


def _both_ways(dtype, monkeypatch, weight_trained=True):
    """(loss, gradient of hidden, gradient of weight) from linear_cross_entropy in chunks of 8 rows, and from
    F.cross_entropy over the whole logits, for the same scaled loss."""
    import torch
    import torch.nn.functional as F

    from mathsft import loss

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(50, 16, generator=generator).to(dtype).requires_grad_(weight_trained)
    targets = torch.randint(0, 50, (37,), generator=generator)
    monkeypatch.setattr(loss, "LOGITS_PER_CHUNK", 50 * 8)  # 5 chunks, the last of 5 rows
    results = []
    for summed in (lambda: loss.linear_cross_entropy(hidden, weight, targets),
                   lambda: F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")):
        hidden.grad = weight.grad = None
        value = summed()
        (value * 0.3).backward()
        results.append((value.detach(), hidden.grad, weight.grad))
    return results


def test_the_loss_and_both_gradients_equal_cross_entropy_over_full_logits_in_float32(monkeypatch):
    import torch

    (fused, fused_hidden, fused_weight), (full, full_hidden, full_weight) = _both_ways(torch.float32, monkeypatch)
    assert fused.dtype == torch.float32
    assert torch.allclose(fused, full, rtol=1e-6)
    assert torch.allclose(fused_hidden, full_hidden, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fused_weight, full_weight, rtol=1e-5, atol=1e-6)


def test_in_bfloat16_the_loss_is_float32_and_the_gradients_agree_to_bfloat16_rounding(monkeypatch):
    import torch

    (fused, fused_hidden, fused_weight), (full, full_hidden, full_weight) = _both_ways(torch.bfloat16, monkeypatch)
    assert fused.dtype == torch.float32 and fused_hidden.dtype == fused_weight.dtype == torch.bfloat16
    assert torch.allclose(fused, full, rtol=1e-6)
    for fused_grad, full_grad in ((fused_hidden, full_hidden), (fused_weight, full_weight)):
        assert (fused_grad.float() - full_grad.float()).norm() / full_grad.float().norm() < 1e-2


def test_a_frozen_head_gets_no_gradient_and_the_hidden_gradient_is_unchanged(monkeypatch):
    import torch

    (_, fused_hidden, fused_weight), (_, full_hidden, _) = _both_ways(torch.float32, monkeypatch, weight_trained=False)
    assert fused_weight is None  # LoRA: the head is not trained
    assert torch.allclose(fused_hidden, full_hidden, rtol=1e-5, atol=1e-6)


def test_without_gradients_as_in_evaluation_it_returns_the_same_loss(monkeypatch):
    import torch

    from mathsft import loss

    hidden, weight = torch.randn(9, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2])
    monkeypatch.setattr(loss, "LOGITS_PER_CHUNK", 6 * 4)
    with torch.no_grad():
        evaluated = loss.linear_cross_entropy(hidden, weight, targets)
    trained = loss.linear_cross_entropy(hidden, weight, targets)
    assert float(evaluated) == pytest.approx(float(trained.detach()), rel=1e-7)
