"""The training loss: summed next-token cross-entropy over the label (assistant) tokens only, with logits made
only at label positions (kept, chunked and recomputed, or never made with Liger's fused kernel), over a packed
or a padded micro-batch."""

from __future__ import annotations

import logging

from mathsft import packing
from mathsft.chat import IGNORE_INDEX
from mathsft.train_settings import ConfigError

log = logging.getLogger(__name__)

LOSS_CHUNK_TOKENS = 4096
# Up to this many logits (label tokens x vocabulary; 1 GiB in float32) the loss keeps them for the backward
# pass; beyond it, chunks of LOSS_CHUNK_TOKENS are recomputed there instead.
LOGITS_IN_MEMORY = 2**28


def _decoder_and_head(model):
    """The transformer body and the output projection of a causal LM (through a DeepSpeed engine or a LoRA
    wrapper): the loss computes logits itself, only where there are labels."""
    module = getattr(model, "module", model)
    if hasattr(module, "get_base_model"):
        module = module.get_base_model()
    return module.get_decoder(), module.get_output_embeddings()


def _chunk_loss(head, hidden, targets):
    """Summed cross-entropy of the logits of `hidden` (in float32) against `targets`."""
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def summed_label_loss(model, input_ids, labels, fused_loss=None, **kwargs):
    """Sum of next-token cross-entropy over the label tokens. Logits are made only at label positions; when
    they would exceed LOGITS_IN_MEMORY, LOSS_CHUNK_TOKENS at a time, recomputed in the backward pass (a
    150k-token vocabulary's float32 logits for a packed row would be the largest tensor of the step).
    `fused_loss(hidden, weight, targets)`, where given, computes the summed loss without logits (Liger)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=input_ids, **kwargs).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[keep], targets[keep]
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    if fused_loss is not None:
        return fused_loss(hidden, head.weight, targets)
    if targets.numel() * head.out_features <= LOGITS_IN_MEMORY:
        return _chunk_loss(head, hidden, targets)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.numel(), LOSS_CHUNK_TOKENS):
        chunk = slice(start, start + LOSS_CHUNK_TOKENS)
        total = total + checkpoint(_chunk_loss, head, hidden[chunk], targets[chunk], use_reentrant=False)
    return total


def liger_loss():
    """Liger's fused linear cross-entropy as a summed loss (float32 accumulation), for summed_label_loss."""
    import torch
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    def fused(hidden, weight, targets):
        return liger_fused_linear_cross_entropy(hidden, weight, targets, reduction="sum", accum_dtype=torch.float32)

    return fused


def check_liger() -> None:
    """train.liger_kernel needs a CUDA GPU and the liger-kernel package; checked before the model loads."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("train.liger_kernel needs a CUDA GPU: Liger's kernels are Triton GPU kernels")
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"train.liger_kernel is set but Liger is not installed ({exc}): "
                          "pip install liger-kernel==0.8.5 (MATHSFT_GPU=1 bash setup.sh does)") from exc


def apply_liger(model):
    """Liger's fused RMSNorm, SwiGLU and RoPE kernels patched into `model`; returns the fused loss."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"train.liger_kernel: Liger has no kernels for model type {model.config.model_type!r}")
    # The loss is ours (label positions only); Liger's own loss patch would replace the model's forward.
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    log.info("Liger kernels applied to %s", model.config.model_type)
    return liger_loss()


def _collate_padded(batch, pad_id):
    """Padded micro-batch: input_ids, labels, attention mask (right padding)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, trace_labels) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(trace_labels)] = torch.tensor(trace_labels)
        attention[i, : len(ids)] = 1
    return input_ids, labels, attention


def label_token_count(examples) -> int:
    """How many tokens of `examples` ((input_ids, labels) pairs) the loss is taken over: the labels, past each
    trace's first token, that are not IGNORE_INDEX."""
    return sum(sum(label != IGNORE_INDEX for label in labels[1:]) for _, labels in examples)


def micro_batch_loss(model, batch, packed: bool, pad_id: int, device, fused_loss=None):
    """Summed next-token loss over the label tokens of one micro-batch, and the positions computed (real
    tokens + padding) for the padding-waste figure."""
    if packed:
        input_ids, labels, positions, bounds = packing.collate_packed(batch)
        kwargs = {"position_ids": positions.to(device), **packing.packed_kwargs(bounds, device)}
    else:
        input_ids, labels, attention = _collate_padded(batch, pad_id)
        kwargs = {"attention_mask": attention.to(device)}
    loss = summed_label_loss(model, input_ids.to(device), labels.to(device), fused_loss, **kwargs)
    return loss, input_ids.numel()
