#!/usr/bin/env python
"""The trainer's GPU-only code paths against their plain counterparts, on the same packed batch: loss and
gradients of every parameter.

1. varlen: PyTorch's varlen flash attention (mathsft.packing, CUDA) against the per-trace attention loop.
2. liger: Liger's fused RMSNorm/SwiGLU/RoPE kernels and fused linear cross-entropy against the plain model
   with mathsft.loss.linear_cross_entropy.
3. linear_cross_entropy: mathsft.loss.linear_cross_entropy against cross-entropy over logits the head makes.

The model has Qwen2.5-Math-1.5B's shape with --layers decoder layers and random weights, in bfloat16 on a GPU.
On a CPU (float32) only check 3 runs; 1 and 2 are reported as skipped. Each check prints one JSON line: both
losses, their relative difference, the largest relative L2 difference of a parameter's gradient and which
parameter, and whether both are within --loss_rtol and --grad_rtol (bfloat16 tolerances by default). The exit
status is 1 when a check fails.

    python bench/gpu_checks.py [--layers 4] [--lengths 3000 1800 700 2500]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train_step import QWEN25_MATH_15B  # noqa: E402


def packed_batch(lengths: list[int], vocab: int, prompt_tokens: int, seed: int):
    """(input_ids, labels) traces of random tokens: the first prompt_tokens of each unlabelled."""
    import torch

    from mathsft.chat import IGNORE_INDEX

    generator = torch.Generator().manual_seed(seed)
    traces = []
    for length in lengths:
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        traces.append((ids, [IGNORE_INDEX] * prompt_tokens + ids[prompt_tokens:]))
    return traces


def loss_and_gradients(model, traces, fused_loss, device) -> tuple[float, dict]:
    """The summed label loss of `traces` as one packed row, and every parameter's gradient of its token mean."""
    from mathsft import packing
    from mathsft.loss import label_token_count, summed_label_loss

    model.zero_grad(set_to_none=True)
    ids, labels, positions, bounds = packing.collate_packed(traces)
    total = summed_label_loss(model, ids.to(device), labels.to(device), fused_loss, position_ids=positions.to(device),
                              **packing.packed_kwargs(bounds, device))
    (total / label_token_count(traces)).backward()
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(total.detach()), grads


def compare(name: str, first: tuple[float, dict], second: tuple[float, dict], args) -> dict:
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    missing = sorted(set(grads_a) ^ set(grads_b))
    differences = {key: float((grads_a[key] - grads_b[key]).norm() / grads_b[key].norm().clamp_min(1e-30))
                   for key in grads_a.keys() & grads_b.keys()}
    worst = max(differences, key=differences.get)
    loss_rel = abs(loss_a - loss_b) / abs(loss_b)
    result = {"check": name, "loss": [loss_a, loss_b], "loss_rel_diff": loss_rel,
              "grad_rel_l2_max": differences[worst], "worst_parameter": worst, "parameters": len(differences),
              "missing_gradients": missing,
              "pass": loss_rel <= args.loss_rtol and differences[worst] <= args.grad_rtol and not missing}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[3000, 1800, 700, 2500])
    parser.add_argument("--prompt_tokens", type=int, default=100)
    parser.add_argument("--loss_rtol", type=float, default=1e-2)
    parser.add_argument("--grad_rtol", type=float, default=5e-2)
    args = parser.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mathsft import loss, packing

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if not cuda:  # float32 on a CPU: the plain paths agree far more closely
        args.loss_rtol, args.grad_rtol = min(args.loss_rtol, 1e-5), min(args.grad_rtol, 1e-4)
    torch.manual_seed(0)
    config = Qwen2Config(**dict(QWEN25_MATH_15B, num_hidden_layers=args.layers))
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    model.config._attn_implementation = packing.register_attention()
    model.train()
    traces = packed_batch(args.lengths, config.vocab_size, args.prompt_tokens, seed=0)
    results = []

    plain = loss_and_gradients(model, traces, loss.linear_cross_entropy, device)
    results.append(compare("linear_cross_entropy", plain, loss_and_gradients(model, traces, None, device), args))
    if not cuda:
        for name in ("varlen", "liger"):
            print(json.dumps({"check": name, "skipped": "no CUDA device"}), flush=True)
    else:
        used_varlen = not packing._varlen_failed
        packing._varlen_failed = True  # the per-trace loop, as on a CPU
        loop = loss_and_gradients(model, traces, loss.linear_cross_entropy, device)
        packing._varlen_failed = False
        if used_varlen:
            results.append(compare("varlen", plain, loop, args))
        else:
            print(json.dumps({"check": "varlen", "pass": False, "error": "varlen attention failed to run"}))
            results.append({"pass": False})
        try:
            from mathsft.loss import apply_liger

            patched = copy.deepcopy(model)
            fused = apply_liger(patched)
            results.append(compare("liger", loss_and_gradients(patched, traces, fused, device), plain, args))
        except ImportError as exc:
            print(json.dumps({"check": "liger", "pass": False, "error": f"liger-kernel missing: {exc}"}))
            results.append({"pass": False})
    sys.exit(0 if all(result["pass"] for result in results) else 1)


if __name__ == "__main__":
    main()
