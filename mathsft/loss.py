"""The training loss: summed next-token cross-entropy over the label (assistant) tokens only, with logits made
only at label positions and never all at once (a chunk at a time, its gradients made as it goes; or never made,
with Liger's fused kernel on a GPU), over a packed or a padded micro-batch."""

from __future__ import annotations

import functools
import logging

from mathsft import packing
from mathsft.chat import IGNORE_INDEX
from mathsft.train_settings import ConfigError

log = logging.getLogger(__name__)

LOSS_CHUNK_TOKENS = 4096
# Up to this many logits (label tokens x vocabulary; 1 GiB in float32) the loss keeps them for the backward
# pass; beyond it, chunks of LOSS_CHUNK_TOKENS are recomputed there instead. (ZeRO-3 only: its head weight is
# partitioned, gathered by the head's own forward; elsewhere linear_cross_entropy holds one chunk at a time.)
LOGITS_IN_MEMORY = 2**28
# Logits per chunk of linear_cross_entropy: 128 MiB in float32, 682 label tokens of a 49k vocabulary and 220
# of Qwen's 152k. On this 2-core CPU, the loss and its gradients for 3,500 label tokens of SmolLM2-135M took
# 4.47 s in chunks of 2^22 logits, 4.03 s of 2^24, 3.79 s of 2^25, 3.73 s of 2^26, 3.89 s as one tensor.
LOGITS_PER_CHUNK = 2**25


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


@functools.cache
def _linear_cross_entropy_function():
    """The autograd function of linear_cross_entropy (made on first use: torch is imported only then)."""
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Each chunk's logits give its share of the loss and, at once, of both gradients (softmax minus the
        one-hot target); the backward pass only scales them."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, rows, grad_enabled):
            # needs_input_grad is set under torch.no_grad() too: evaluation would make gradients for nothing.
            want_hidden, want_weight = (grad_enabled and wanted for wanted in ctx.needs_input_grad[:2])
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if want_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
            for start in range(0, targets.numel(), rows):
                part, goal = hidden[start : start + rows], targets[start : start + rows]
                logits = (part @ weight.T).float()
                norm = torch.logsumexp(logits, dim=-1)
                total += (norm - logits.gather(1, goal[:, None]).squeeze(1)).sum()
                if want_hidden or want_weight:
                    probs = logits.sub_(norm[:, None]).exp_()  # the softmax, in place of the logits
                    probs[torch.arange(goal.numel(), device=goal.device), goal] -= 1.0
                    grad = probs.to(hidden.dtype)
                    if want_hidden:
                        grad_hidden[start : start + rows] = grad @ weight
                    if want_weight and grad.dtype == torch.float32:
                        grad_weight.addmm_(grad.T, part)
                    elif want_weight:  # bfloat16 products (as autograd's), summed over the chunks in float32
                        grad_weight += grad.T @ part
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_hidden, grad_weight = ctx.saved_tensors
            if grad_hidden is not None:  # scaled in float32, as autograd scales the logits' gradient
                grad_hidden = (grad_hidden.float() * grad_total).to(grad_hidden.dtype)
            if grad_weight is not None:
                grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
            return grad_hidden, grad_weight, None, None, None

    return LinearCrossEntropy


def linear_cross_entropy(hidden, weight, targets):
    """Summed cross-entropy of the logits `hidden @ weight.T` against `targets`, in float32, LOGITS_PER_CHUNK
    logits at a time, no chunk kept and none computed twice: what is kept for the backward pass is the
    gradient of `hidden` and a float32 gradient of `weight`. The default fused loss of summed_label_loss
    (Liger's kernel does the same on a GPU)."""
    import torch

    rows = max(1, LOGITS_PER_CHUNK // weight.shape[0])
    return _linear_cross_entropy_function().apply(hidden, weight, targets, rows, torch.is_grad_enabled())


def summed_label_loss(model, input_ids, labels, fused_loss=None, **kwargs):
    """Sum of next-token cross-entropy over the label tokens, with logits made only at label positions.
    `fused_loss(hidden, weight, targets)` computes it from the head's weight: linear_cross_entropy, or Liger's
    kernel. Without it (ZeRO-3, whose head weight only its forward gathers), the head makes the logits: kept
    for the backward pass up to LOGITS_IN_MEMORY, beyond it LOSS_CHUNK_TOKENS at a time and recomputed there
    (a 150k-token vocabulary's float32 logits for a packed row would be the largest tensor of the step)."""
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
