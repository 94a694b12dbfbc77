"""Sequence packing for training: traces binned into micro-batches of at most a token budget, laid end to
end in one row with positions restarting per trace, and an attention that never looks across a trace
boundary (per-trace causal attention; flash-attention's varlen kernel where it is installed)."""

from __future__ import annotations

import functools

from mathsft.chat import IGNORE_INDEX

ATTENTION = "mathsft_packed"


def pack(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins whose sums stay within `budget` (first fit, longest first:
    within 11/9 of the fewest bins). Deterministic: ties keep index order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[index] > budget:
            raise ValueError(f"a trace of {lengths[index]} tokens does not fit a micro-batch of {budget} tokens")
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(budget - lengths[index])
    return bins


def collate_packed(batch: list[tuple[list[int], list[int]]]):
    """One row of the traces in `batch` end to end: input_ids, labels, position_ids (restarting at 0 for
    each trace) and the cumulative trace lengths the attention splits on. The first token of each trace
    has no label, so no trace is trained to predict the start of the next."""
    import torch

    input_ids, labels, positions, bounds = [], [], [], [0]
    for ids, labs in batch:
        input_ids += ids
        labels += [IGNORE_INDEX] + labs[1:]
        positions += range(len(ids))
        bounds.append(bounds[-1] + len(ids))
    as_row = lambda values: torch.tensor(values, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return as_row(input_ids), as_row(labels), as_row(positions), torch.tensor(bounds, dtype=torch.int32)


def packed_kwargs(cumulative_lengths, device) -> dict:
    """Keyword arguments a model's forward passes down to its attention for one packed row, whose traces end
    at `cumulative_lengths` (from 0)."""
    on_device = cumulative_lengths.to(device)
    longest = int((cumulative_lengths[1:] - cumulative_lengths[:-1]).max())
    return {"cu_seq_lens_q": on_device, "cu_seq_lens_k": on_device, "max_length_q": longest, "max_length_k": longest}


_varlen_failed = False


@functools.cache
def _varlen_kernel():
    """PyTorch's varlen_attn and the keyword arguments this torch version's signature takes (read once, not
    in every layer's call)."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _varlen_attention(module, query, key, value, cumulative_lengths, max_length, scaling):
    """PyTorch's varlen flash attention over a packed row (CUDA): (1, H, L, D) in, (1, L, H, D) out."""
    varlen_attn, options = _varlen_kernel()
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (L, heads, D)
    kwargs = {"scale": scaling}
    kwargs.update({"window_size": (-1, 0)} if "window_size" in options else {"is_causal": True})
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in options:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    return varlen_attn(q, k, v, cumulative_lengths, cumulative_lengths, max_length, max_length, **kwargs).unsqueeze(0)


def per_trace_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """Causal attention within each packed trace: cost is the sum of squared trace lengths, never the
    square of the row (a dense block-diagonal mask over an 8k-token row is what ran out of memory). On a
    GPU, one varlen flash-attention call; on a CPU (or if that kernel is missing), a loop over the traces."""
    global _varlen_failed
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:  # not packed (e.g. generation): ordinary causal attention
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    kwargs.pop("cu_seq_lens_k", None), kwargs.pop("max_length_k", None)
    if query.is_cuda and not _varlen_failed:
        try:
            return _varlen_attention(module, query, key, value, cu_seq_lens_q, max_length_q,
                                     kwargs.get("scaling", module.scaling)), None
        except (ImportError, RuntimeError, TypeError) as exc:
            _varlen_failed = True
            import logging

            logging.getLogger(__name__).warning("varlen attention unavailable (%s): attending trace by trace", exc)
    bounds = cu_seq_lens_q.tolist()
    outputs = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True,
                               **kwargs)[0]
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=1), None


def register_attention() -> str:
    """Register the per-trace attention with transformers; returns the attn_implementation name to use."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, per_trace_attention)
    return ATTENTION


def packed_attention_implementation() -> str:
    """flash_attention_2 (varlen over cu_seq_lens) when a GPU and flash-attn are present, else ours (which
    uses PyTorch's own varlen flash attention on a GPU)."""
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return register_attention()
