"""Supervised fine-tuning with DeepSpeed ZeRO, the loop: for each epoch plan its steps, run each optimizer step
(token mean over the global batch, packed or padded micro-batches, cosine schedule with warmup), record it, check
it is finite, checkpoint, evaluate; then export a Hugging Face folder. Settings: train_settings; the loss: loss;
the data: train_data; checkpoints and the export: checkpoints."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mathsft.chat import end_of_turn_token
from mathsft.checkpoints import Checkpoints, export
from mathsft.hub_models import NotFetched, model_to_load
from mathsft.loss import apply_liger, check_liger, label_token_count, linear_cross_entropy, micro_batch_loss
from mathsft.recompute import elementwise_recompute
from mathsft.train_data import epoch_plan, load_examples
from mathsft.train_settings import (ConfigError, TrainConfig, check_config, deepspeed_config, parquet_files,
                                    run_fingerprint)

log = logging.getLogger(__name__)

# metrics.jsonl keys -> TensorBoard tags (train/... per optimizer step, val/loss per epoch).
TRACKED_SCALARS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
                   "tokens_per_s": "train/tokens_per_s", "padding_waste": "train/padding_waste",
                   "val_loss": "val/loss"}


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: the run stops and nothing is exported."""


def check_finite(step: int, total_steps: int, epoch: int, loss: float, grad_norm: float | None,
                 micro_losses: list[float], rank: int, learning_rate: float, train_path: str) -> None:
    """Raise TrainingDiverged, naming the optimizer step (and this rank's first micro-batch with a non-finite
    loss), when the step's loss or gradient norm is not finite; the same values on every rank, so all stop."""
    # DeepSpeed's ZeRO optimizers report an infinite or NaN gradient norm as -1.
    norm_finite = grad_norm is None or (math.isfinite(grad_norm) and grad_norm >= 0)
    if math.isfinite(loss) and norm_finite:
        return
    where = f"optimizer step {step} of {total_steps} (epoch {epoch})"
    bad = [k for k, value in enumerate(micro_losses, 1) if not math.isfinite(value)]
    if bad:
        where += f", first in micro-batch {bad[0]} of {len(micro_losses)} on rank {rank}"
    norm = f"{grad_norm} (DeepSpeed's mark for inf or NaN)" if grad_norm is not None and grad_norm < 0 else grad_norm
    raise TrainingDiverged(
        f"training diverged at {where}: loss {loss}, gradient norm {norm}. Nothing was exported. Lower "
        f"train.learning_rate (now {learning_rate:g}) or raise train.warmup_ratio, and check the training data "
        f"({train_path}) for broken traces (with a changed setting the run starts over: its checkpoints are for "
        "the old one)"
    )


def tensorboard_writer(cfg: TrainConfig, resumed: int):
    """A TensorBoard writer into cfg.tracking_dir when cfg.report_to asks for one, else None. A fresh run empties
    the folder; a resumed one adds a new event file whose steps continue the old ones, as metrics.jsonl does."""
    if cfg.report_to == "none":
        return None
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(cfg.tracking_dir)
    if not resumed and folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder))


class MetricsLog:
    """Where a run's records go, one per optimizer step and per epoch: lines of metrics.jsonl and, when
    train.report_to asks, TensorBoard scalars. Rank 0 writes; elsewhere it holds nothing."""

    def __init__(self, path: Path, cfg: TrainConfig, resumed: int, rank: int):
        self.file = open(path, "a" if resumed else "w") if rank == 0 else None
        self.tracker = tensorboard_writer(cfg, resumed) if rank == 0 else None

    def record(self, entry: dict) -> None:
        if self.file:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
        if self.tracker:
            for key, tag in TRACKED_SCALARS.items():
                if entry.get(key) is not None:
                    self.tracker.add_scalar(tag, entry[key], entry["step"])
            self.tracker.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tracker:
            self.tracker.close()


def _init_distributed():
    """One process without a launcher gets the environment torch.distributed expects."""
    import deepspeed

    from mathsft.native_ops import refuse_unlinkable_builds, skip_unused_ops
    from mathsft.ports import free_port
    from mathsft.rank_logs import log_as_rank

    skip_unused_ops()  # before the backend is set up: that is where DeepSpeed builds its shared-memory op
    refuse_unlinkable_builds()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import torch

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world_size > 1:  # which process runs where: the first thing to know when a multi-node run goes wrong
        log.info("rank %d of %d on %s (local rank %s)", rank, world_size, socket.gethostname(), os.environ["LOCAL_RANK"])
    log_as_rank(rank)
    return rank, world_size


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def learning_rate_schedule(cfg: TrainConfig, total_steps: int):
    """The LR multiplier of a run of `total_steps`: cosine_with_warmup, warming up over cfg.warmup_ratio of the
    steps (at least one when the ratio is above 0)."""
    warmup_steps = max(1, round(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0
    return cosine_with_warmup(total_steps, warmup_steps)


def load_model(cfg: TrainConfig, use_bf16: bool, source: str, revision: str | None):
    """The start model (cfg.model, read from `source` at `revision`: mathsft.hub_models.model_to_load) as
    trained: packed attention (or sdpa), Liger's kernels, activation recompute (whole layers, or the
    elementwise ops only) and LoRA adapters as `cfg` asks; returns it with its fused loss (Liger's, else
    mathsft.loss.linear_cross_entropy)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mathsft.packing import packed_attention_implementation

    attention = packed_attention_implementation() if cfg.packing else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if use_bf16 else torch.float32,
                                                 attn_implementation=attention, revision=revision)
    fused_loss = apply_liger(model) if cfg.liger_kernel else linear_cross_entropy
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    elif cfg.recompute_elementwise and not cfg.liger_kernel:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=elementwise_recompute())
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    return model, fused_loss


@dataclass(frozen=True)
class StepResult:
    """One optimizer step's figures: the loss (token mean over the global batch) and token counts are summed
    over every rank; micro_losses are this rank's own summed losses, one per pass."""

    loss: float
    grad_norm: float | None
    micro_losses: list[float]
    real_tokens: float
    computed_tokens: float  # real tokens + padding
    seconds: float


def train_step(engine, examples, micro_batches: list[list[int]], cfg: TrainConfig, pad_id: int, device, fused_loss,
               world_size: int) -> StepResult:
    """One optimizer step over this rank's `micro_batches` (indices into `examples`): a forward and backward
    pass for each, the loss scaled to the token mean over the global batch, then the update."""
    import torch

    batch_examples = [examples[i] for group in micro_batches for i in group]
    # Token mean over the global batch: count label tokens on every rank; every rank runs as many
    # passes as the busiest (ZeRO reduces gradients in each backward, so the counts must match).
    counts = torch.tensor([label_token_count(batch_examples), sum(len(ids) for ids, _ in batch_examples)], dtype=torch.float64, device=device)
    passes = torch.tensor([len(micro_batches)], device=device)
    if world_size > 1:
        torch.distributed.all_reduce(counts)
        torch.distributed.all_reduce(passes, op=torch.distributed.ReduceOp.MAX)
    label_tokens, real_tokens = float(counts[0]), float(counts[1])
    micro_losses, step_computed, step_started = [], 0, time.monotonic()
    for k in range(int(passes[0])):
        if k < len(micro_batches):
            loss, computed = micro_batch_loss(engine, [examples[i] for i in micro_batches[k]], cfg.packing,
                                              pad_id, device, fused_loss)
            step_computed += computed
        else:  # an empty pass that touches every parameter, so this rank joins the reductions
            loss = sum(p.sum() * 0.0 for p in engine.module.parameters() if p.requires_grad)
        # DeepSpeed averages gradients over ranks: scale by world size so they sum to the token mean.
        engine.backward(loss * world_size / label_tokens, scale_wrt_gas=False)
        micro_losses.append(loss.detach().to(torch.float64))  # read once per step, not per micro-batch
    micro_losses = torch.stack(micro_losses).tolist()
    step_loss = sum(micro_losses)
    # DeepSpeed's stage 0 clips float32 gradients without keeping their norm: take it before the step.
    own_norm = _gradient_norm(engine.module) if engine.zero_optimization_stage() == 0 else None
    engine.step()
    grad_norm = own_norm if own_norm is not None else _float_or_none(engine.get_global_grad_norm())
    computed_all = torch.tensor([float(step_computed), step_loss], dtype=torch.float64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(computed_all)
    return StepResult(loss=float(computed_all[1]) / label_tokens, grad_norm=grad_norm, micro_losses=micro_losses,
                      real_tokens=real_tokens, computed_tokens=float(computed_all[0]),
                      seconds=max(time.monotonic() - step_started, 1e-9))


def train(cfg: TrainConfig, metrics_path: str) -> dict:
    """Fine-tune cfg.model on cfg.train_path and export a Hugging Face folder to cfg.output_dir."""
    import deepspeed
    import torch
    from transformers import AutoConfig, AutoTokenizer

    # Inside the workflow a hub model is read from the run's model store, offline; cfg.model stays its identity.
    try:
        source, revision = model_to_load(cfg.model, cfg.revision or None, "--model")
    except NotFetched as exc:
        raise ConfigError(str(exc)) from None
    model_config = AutoConfig.from_pretrained(source, revision=revision)
    rank, world_size = _init_distributed()
    gradient_accumulation_steps = check_config(cfg, world_size, getattr(model_config, "max_position_embeddings", None),
                                               getattr(model_config, "rope_scaling", None))
    if cfg.liger_kernel:
        check_liger()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    end_of_turn = end_of_turn_token(tokenizer)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    train_files = parquet_files(cfg.train_path)
    examples, too_long = load_examples(train_files, tokenizer, end_of_turn_id, cfg.max_length)
    val_examples, val_too_long = load_examples([path for path in parquet_files(cfg.val_path) if Path(path).is_file()],
                                               tokenizer, end_of_turn_id, cfg.max_length)
    if not examples:
        raise ConfigError(f"{', '.join(train_files)}: no training traces left ({too_long} longer than "
                          "train.max_length); generate more or lower curate.reward_threshold")
    log.info("%d train traces (%d over max_length %d dropped), %d val traces; end of turn %s; %s",
             len(examples), too_long, cfg.max_length, len(val_examples), end_of_turn,
             "packed" if cfg.packing else "padded")

    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model, fused_loss = load_model(cfg, use_bf16, source, revision)
    steps_per_epoch = math.ceil(len(examples) / cfg.global_batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    schedule = learning_rate_schedule(cfg, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg.deepspeed_config, cfg, gradient_accumulation_steps, use_bf16, world_size),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
    )
    device = engine.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_id

    checkpoints = Checkpoints(cfg.checkpoint_dir, run_fingerprint(cfg, world_size), rank)
    if engine.zero_optimization_stage() == 3:
        log.info("ZeRO-3: the head weight is partitioned, so the loss computes logits through the head (no fused "
                 "cross-entropy)")
        fused_loss = None
    resumed = checkpoints.resume(engine)
    checkpoints.prepare(resumed)
    every = cfg.checkpoint_every or steps_per_epoch
    work_metrics = checkpoints.metrics_path(metrics_path)
    work_metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(work_metrics, cfg, resumed, rank)

    lengths = [len(ids) for ids, _ in examples]
    step, started = 0, time.monotonic()
    for epoch in range(cfg.epochs):
        engine.train()
        epoch_computed = epoch_real = 0
        for micro_batches in epoch_plan(lengths, cfg, epoch, rank, world_size):
            step += 1
            if step <= resumed:
                continue
            result = train_step(engine, examples, micro_batches, cfg, pad_id, device, fused_loss, world_size)
            # Before anything is recorded or checkpointed: a diverged step is never saved, and stops every rank.
            check_finite(step, total_steps, epoch, result.loss, result.grad_norm, result.micro_losses, rank,
                         cfg.learning_rate, ", ".join(train_files))
            epoch_computed += result.computed_tokens
            epoch_real += result.real_tokens
            metrics.record({
                "step": step, "epoch": epoch, "loss": result.loss, "lr": engine.get_lr()[0],
                "grad_norm": result.grad_norm,
                "tokens": int(result.real_tokens), "computed_tokens": int(result.computed_tokens),
                "tokens_per_s": result.real_tokens / result.seconds,
                "padding_waste": 1.0 - result.real_tokens / result.computed_tokens,
                "micro_batches": len(micro_batches), "elapsed_s": time.monotonic() - started,
            })
            log.info("step %d/%d loss %.4f lr %.2e", step, total_steps, result.loss, engine.get_lr()[0])
            if checkpoints.folder and (step % every == 0) and step < total_steps:
                checkpoints.save(engine, step)
        if epoch_computed:
            metrics.record({"step": step, "epoch": epoch, "epoch_padding_waste": 1.0 - epoch_real / epoch_computed})
        if val_examples and step > resumed:
            val_loss = evaluate_loss(engine, val_examples, cfg.micro_batch_size_per_device, pad_id, device)
            metrics.record({"step": step, "epoch": epoch, "val_loss": val_loss})
            log.info("epoch %d val loss %.4f", epoch, val_loss)
    metrics.close()

    export(engine, tokenizer, end_of_turn, end_of_turn_id, cfg.output_dir, rank)
    if rank == 0:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(work_metrics, metrics_path) if not checkpoints.folder else shutil.copyfile(work_metrics, metrics_path)
    checkpoints.finish()
    summary = {"train_traces": len(examples), "dropped_too_long": too_long, "val_traces": len(val_examples),
               "val_dropped_too_long": val_too_long, "steps": step, "resumed_from_step": resumed,
               "elapsed_s": round(time.monotonic() - started, 1), "end_of_turn": end_of_turn, "config": asdict(cfg)}
    return summary


def _gradient_norm(module) -> float:
    """Global L2 norm of the gradients of `module` (one process: they are the whole gradient)."""
    import torch

    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _float_or_none(value):
    return None if value is None else float(value)


def evaluate_loss(engine, examples, micro_batch_size, pad_id, device) -> float:
    """Token-mean loss over `examples` (no gradient), in padded micro-batches."""
    import torch

    engine.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch_size):
            batch = examples[start : start + micro_batch_size]
            loss, _ = micro_batch_loss(engine, batch, False, pad_id, device)
            total += float(loss)
            count += label_token_count(batch)
    engine.train()
    return total / max(count, 1)
