"""Supervised fine-tuning with DeepSpeed ZeRO: loss on assistant tokens only (token mean over the global
batch), packed or padded micro-batches, cosine schedule with warmup, checkpoints a killed run resumes from,
optional LoRA, and a Hugging Face folder exported with the template's end of turn as EOS."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mathsft.chat import IGNORE_INDEX, end_of_turn_token, tokenize_example
from mathsft.io import SCORED_SCHEMA, read_parquet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults are config.schema.yaml's (train.*; tests/test_settings.py checks them); the field
    order is that of the summary's config."""

    model: str
    train_path: str
    val_path: str
    output_dir: str
    deepspeed_config: str
    epochs: int = 1
    learning_rate: float = 1e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    global_batch_size: int = 8
    micro_batch_size_per_device: int = 2
    max_length: int = field(default=1024, metadata={"help": "longest trace trained on; longer ones are dropped, "
                                                            "never truncated"})
    gradient_checkpointing: bool = False
    seed: int = 0
    packing: bool = field(default=True, metadata={
        "help": "pack whole traces into micro-batches of up to max_length x micro_batch_size_per_device tokens"})
    # Outside the exported folder: Snakemake deletes declared outputs before a rerun.
    checkpoint_dir: str = field(default="", metadata={"help": "where resumable DeepSpeed states go; '': none kept"})
    checkpoint_every: int = field(default=0, metadata={
        "help": "optimizer steps between checkpoints; 0: at the end of each epoch"})
    lora_rank: int = field(default=0, metadata={
        "help": "0: full fine-tuning; >0: LoRA adapters on every linear layer, merged at export"})
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # ZeRO-3 keeps the chunked loss: its head weight is partitioned.
    liger_kernel: bool = field(default=False, metadata={
        "help": "GPUs only: Liger's Triton kernels (RMSNorm, SwiGLU and RoPE fused, and a fused linear "
                "cross-entropy that never holds a chunk of logits)"})
    revision: str = field(default="", metadata={
        "help": "the hub commit of --model (a hub id) that is loaded; '': the hub's main branch, or a local folder "
                "as it is"})
    # What metrics.jsonl records, as TensorBoard event files, through torch.utils.tensorboard.
    report_to: str = field(default="none", metadata={
        "help": "experiment tracking, as TRL's report_to: none, or tensorboard (event files in --tracking_dir); "
                "never changes the result"})
    tracking_dir: str = ""

REPORT_TO = ("none", "tensorboard")
# metrics.jsonl keys -> TensorBoard tags (train/... per optimizer step, val/loss per epoch).
TRACKED_SCALARS = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
                   "tokens_per_s": "train/tokens_per_s", "padding_waste": "train/padding_waste",
                   "val_loss": "val/loss"}


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


class ConfigError(ValueError):
    """A training setting that cannot work; raised before any compute."""


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


def check_config(cfg: TrainConfig, world_size: int, context_length: int | None, rope_scaling) -> int:
    """Validate settings against each other and the model; returns gradient accumulation steps."""
    for path, key in ((cfg.train_path, "train file"), (cfg.deepspeed_config, "deepspeed config")):
        if not Path(path).is_file():
            raise ConfigError(f"{key} {path} does not exist")
    if cfg.report_to not in REPORT_TO:
        raise ConfigError(f"train.report_to must be one of {', '.join(REPORT_TO)}, got {cfg.report_to!r}")
    if cfg.report_to != "none" and not cfg.tracking_dir:
        raise ConfigError(f"train.report_to {cfg.report_to} needs a folder for its files (--tracking_dir)")
    per_step = cfg.micro_batch_size_per_device * world_size
    if cfg.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size ({cfg.global_batch_size}) is not divisible by "
            f"train.micro_batch_size_per_device ({cfg.micro_batch_size_per_device}) x {world_size} process(es)"
        )
    # transformers 5 reports {"rope_type": "default", ...} for a model without scaling: that is not scaling.
    scaled = bool(rope_scaling) and (rope_scaling.get("rope_type") or rope_scaling.get("type") or "default") != "default"
    if context_length and cfg.max_length > context_length and not scaled:
        raise ConfigError(
            f"train.max_length ({cfg.max_length}) exceeds the model's context window ({context_length}) and no "
            f"rope scaling is configured; lower train.max_length"
        )
    if cfg.lora_rank < 0 or cfg.checkpoint_every < 0:
        raise ConfigError("train.lora_rank and train.checkpoint_every must be >= 0")
    if cfg.lora_rank and json.loads(Path(cfg.deepspeed_config).read_text()).get("zero_optimization", {}).get("stage") == 3:
        raise ConfigError("LoRA with ZeRO-3 is not supported here: use config/deepspeed/zero2.json (adapters are small)")
    return cfg.global_batch_size // per_step


def load_examples(path: str, tokenizer, end_of_turn_id: int, max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Tokenised (input_ids, labels) for each curated trace; traces longer than `max_length` are dropped
    (counted), never truncated: a truncated trace teaches the model to stop before its answer."""
    rows = read_parquet(path, SCORED_SCHEMA).to_pylist()
    examples, too_long = [], 0
    for row in rows:
        input_ids, labels = tokenize_example(tokenizer, json.loads(row["messages"]), row["response"], end_of_turn_id)
        if len(input_ids) > max_length:
            too_long += 1
            continue
        examples.append((input_ids, labels))
    return examples, too_long


def _collate(batch, pad_id):
    """Padded micro-batch: input_ids, labels, attention mask (right padding)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        attention[i, : len(ids)] = 1
    return input_ids, labels, attention


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


def micro_batch_loss(model, batch, packed: bool, pad_id: int, device, fused_loss=None):
    """Summed next-token loss over the label tokens of one micro-batch, and the positions computed (real
    tokens + padding) for the padding-waste figure."""
    from mathsft import packing

    if packed:
        input_ids, labels, positions, bounds = packing.collate_packed(batch)
        kwargs = {"position_ids": positions.to(device), **packing.packed_kwargs(bounds, device)}
    else:
        input_ids, labels, attention = _collate(batch, pad_id)
        kwargs = {"attention_mask": attention.to(device)}
    loss = summed_label_loss(model, input_ids.to(device), labels.to(device), fused_loss, **kwargs)
    return loss, input_ids.numel()


def epoch_plan(lengths: list[int], cfg: TrainConfig, epoch: int, rank: int, world_size: int) -> list[list[list[int]]]:
    """This rank's micro-batches (example indices) for each optimizer step of `epoch`. The order depends on
    (seed, epoch) only, so a resumed run replays exactly the steps it has not done."""
    from mathsft.packing import pack

    order = list(range(len(lengths)))
    random.Random(cfg.seed + epoch).shuffle(order)
    steps = []
    for start in range(0, len(order), cfg.global_batch_size):
        mine = order[start : start + cfg.global_batch_size][rank::world_size]
        if cfg.packing:
            budget = cfg.max_length * cfg.micro_batch_size_per_device
            steps.append([[mine[i] for i in group] for group in pack([lengths[i] for i in mine], budget)])
        else:
            micro = cfg.micro_batch_size_per_device
            steps.append([mine[i : i + micro] for i in range(0, len(mine), micro)])
    return steps


def _init_distributed():
    """One process without a launcher gets the environment torch.distributed expects."""
    import deepspeed

    from mathsft.ports import free_port

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import torch

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def deepspeed_config(path: str, cfg: TrainConfig, gradient_accumulation_steps: int, use_bf16: bool,
                     world_size: int = 1) -> dict:
    """The JSON at `path` with the batch, optimiser and precision values filled in from `cfg`. Gradient
    accumulation is ours (managed_gradient_accumulation off): packed steps have varying micro-batch counts.
    In one float32 process ZeRO-1/2 has nothing to partition, so without offload it runs as stage 0: the
    same update without ZeRO's gradient hooks and flat buffers (about a sixth of a CPU step; see bench/).
    Not in bf16: DeepSpeed's stage 0 would then accumulate gradients in bf16, where ZeRO keeps float32."""
    ds = json.loads(Path(path).read_text())
    zero = ds.get("zero_optimization", {})
    if world_size == 1 and not use_bf16 and zero.get("stage") in (1, 2) and not zero.get("offload_optimizer"):
        log.info("one process: ZeRO stage %s runs as stage 0 (nothing to partition)", zero["stage"])
        ds["zero_optimization"] = {"stage": 0}
    ds.update(
        train_batch_size=cfg.global_batch_size,
        train_micro_batch_size_per_gpu=cfg.micro_batch_size_per_device,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_clipping=cfg.max_grad_norm,
        managed_gradient_accumulation=False,
    )
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    ds["optimizer"]["params"].update(lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ds["bf16"] = {"enabled": use_bf16}
    return ds


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def run_fingerprint(cfg: TrainConfig, world_size: int = 1) -> str:
    """What a checkpoint must match to be resumed from: every setting that shapes training, the start model,
    the training data's content and the process count (it splits the data and shapes the ZeRO states); not
    where outputs go, nor how often checkpoints are written."""
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("output_dir", "checkpoint_dir", "checkpoint_every", "report_to", "tracking_dir")}
    settings["world_size"] = world_size
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in (cfg.train_path, cfg.deepspeed_config):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


class Checkpoints:
    """DeepSpeed checkpoints of one run in a scratch folder, with the metrics written so far; only the last
    one is kept. A folder written for other settings or data is discarded, never resumed from."""

    def __init__(self, folder: str, fingerprint: str, rank: int):
        self.folder = Path(folder) if folder else None
        self.fingerprint, self.rank = fingerprint, rank

    def metrics_path(self, fallback: str) -> Path:
        return self.folder / "metrics.jsonl" if self.folder else Path(fallback + ".partial")

    def resume(self, engine) -> int:
        """Load the last checkpoint into `engine`; returns the optimizer steps already done (0: fresh)."""
        if not self.folder or not (self.folder / "latest").is_file():
            return 0
        stamp = self.folder / "fingerprint"
        if not stamp.is_file() or stamp.read_text() != self.fingerprint:
            log.warning("checkpoints in %s are for other settings or data: starting over", self.folder)
            return 0
        _, client_state = engine.load_checkpoint(str(self.folder))
        log.info("resumed from %s at step %d", self.folder, client_state["step"])
        return int(client_state["step"])

    def prepare(self, resumed_step: int) -> None:
        """Fresh run: empty the folder. Resumed run: keep the metrics up to the resumed step only."""
        if not self.folder or self.rank != 0:
            return
        if resumed_step == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            (self.folder / "fingerprint").write_text(self.fingerprint)
            return
        path = self.folder / "metrics.jsonl"
        kept, unreadable = [], 0
        # A run killed while writing leaves a torn last line (cut JSON, a cut UTF-8 character): skipped and
        # counted, never a reason to give up the checkpoint. A step's line comes before its checkpoint, so a
        # torn step line is one that is trained and recorded again.
        for line in path.read_bytes().splitlines() if path.is_file() else []:
            try:
                entry = json.loads(line.decode("utf-8"))
                step = entry["step"]
                if not isinstance(step, int):
                    raise TypeError(step)
            except (UnicodeDecodeError, ValueError, TypeError, KeyError):
                unreadable += 1
                continue
            if step <= resumed_step:
                kept.append(line + b"\n")
        if unreadable:
            log.warning("%s: %d unreadable line(s) skipped (a run killed mid-write); metrics kept up to step %d",
                        path, unreadable, resumed_step)
        path.write_bytes(b"".join(kept))

    def save(self, engine, step: int) -> None:
        import torch.distributed as dist

        tag = f"step{step:08d}"
        engine.save_checkpoint(str(self.folder), tag=tag, client_state={"step": step})
        dist.barrier()
        if self.rank == 0:
            for old in self.folder.glob("step*"):
                if old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", self.folder / tag)

    def finish(self) -> None:
        if self.folder and self.rank == 0:
            shutil.rmtree(self.folder, ignore_errors=True)


def train(cfg: TrainConfig, metrics_path: str) -> dict:
    """Fine-tune cfg.model on cfg.train_path and export a Hugging Face folder to cfg.output_dir."""
    import deepspeed
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mathsft.packing import packed_attention_implementation

    revision = cfg.revision or None
    model_config = AutoConfig.from_pretrained(cfg.model, revision=revision)
    rank, world_size = _init_distributed()
    gas = check_config(cfg, world_size, getattr(model_config, "max_position_embeddings", None),
                       getattr(model_config, "rope_scaling", None))
    if cfg.liger_kernel:
        check_liger()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=revision)
    eot = end_of_turn_token(tokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    examples, too_long = load_examples(cfg.train_path, tokenizer, eot_id, cfg.max_length)
    val_examples, val_too_long = (
        load_examples(cfg.val_path, tokenizer, eot_id, cfg.max_length) if Path(cfg.val_path).is_file() else ([], 0)
    )
    if not examples:
        raise ConfigError(f"{cfg.train_path}: no training traces left ({too_long} longer than train.max_length); "
                          "generate more or lower curate.reward_threshold")
    log.info("%d train traces (%d over max_length %d dropped), %d val traces; end of turn %s; %s",
             len(examples), too_long, cfg.max_length, len(val_examples), eot, "packed" if cfg.packing else "padded")

    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    attention = packed_attention_implementation() if cfg.packing else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.bfloat16 if use_bf16 else torch.float32,
                                                 attn_implementation=attention, revision=revision)
    fused_loss = _apply_liger(model) if cfg.liger_kernel else None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    steps_per_epoch = math.ceil(len(examples) / cfg.global_batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, round(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0
    schedule = cosine_with_warmup(total_steps, warmup_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg.deepspeed_config, cfg, gas, use_bf16, world_size),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
    )
    device = engine.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_id

    checkpoints = Checkpoints(cfg.checkpoint_dir, run_fingerprint(cfg, world_size), rank)
    if fused_loss is not None and engine.zero_optimization_stage() == 3:
        log.info("ZeRO-3: the head weight is partitioned, so the loss stays chunked (no fused cross-entropy)")
        fused_loss = None
    resumed = checkpoints.resume(engine)
    checkpoints.prepare(resumed)
    every = cfg.checkpoint_every or steps_per_epoch
    work_metrics = checkpoints.metrics_path(metrics_path)
    work_metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics = open(work_metrics, "a" if resumed else "w") if rank == 0 else None
    tracker = tensorboard_writer(cfg, resumed) if rank == 0 else None

    def record(entry: dict) -> None:
        if metrics:
            metrics.write(json.dumps(entry) + "\n")
            metrics.flush()
        if tracker:
            for key, tag in TRACKED_SCALARS.items():
                if entry.get(key) is not None:
                    tracker.add_scalar(tag, entry[key], entry["step"])
            tracker.flush()

    lengths = [len(ids) for ids, _ in examples]
    step, started = 0, time.monotonic()
    for epoch in range(cfg.epochs):
        engine.train()
        epoch_computed = epoch_real = 0
        for micro_batches in epoch_plan(lengths, cfg, epoch, rank, world_size):
            step += 1
            if step <= resumed:
                continue
            batch_examples = [examples[i] for group in micro_batches for i in group]
            # Token mean over the global batch: count label tokens on every rank; every rank runs as many
            # passes as the busiest (ZeRO reduces gradients in each backward, so the counts must match).
            counts = torch.tensor([sum(sum(l != IGNORE_INDEX for l in labs[1:]) for _, labs in batch_examples),
                                   sum(len(ids) for ids, _ in batch_examples)], dtype=torch.float64, device=device)
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
            # Before anything is recorded or checkpointed: a diverged step is never saved, and stops every rank.
            check_finite(step, total_steps, epoch, float(computed_all[1]) / label_tokens, grad_norm, micro_losses,
                         rank, cfg.learning_rate, cfg.train_path)
            elapsed = max(time.monotonic() - step_started, 1e-9)
            epoch_computed += float(computed_all[0])
            epoch_real += real_tokens
            record({
                "step": step, "epoch": epoch, "loss": float(computed_all[1]) / label_tokens,
                "lr": engine.get_lr()[0], "grad_norm": grad_norm,
                "tokens": int(real_tokens), "computed_tokens": int(computed_all[0]),
                "tokens_per_s": real_tokens / elapsed, "padding_waste": 1.0 - real_tokens / float(computed_all[0]),
                "micro_batches": len(micro_batches), "elapsed_s": time.monotonic() - started,
            })
            log.info("step %d/%d loss %.4f lr %.2e", step, total_steps, float(computed_all[1]) / label_tokens,
                     engine.get_lr()[0])
            if checkpoints.folder and (step % every == 0) and step < total_steps:
                checkpoints.save(engine, step)
        if epoch_computed:
            record({"step": step, "epoch": epoch, "epoch_padding_waste": 1.0 - epoch_real / epoch_computed})
        if val_examples and step > resumed:
            val_loss = evaluate_loss(engine, val_examples, cfg.micro_batch_size_per_device, pad_id, device)
            record({"step": step, "epoch": epoch, "val_loss": val_loss})
            log.info("epoch %d val loss %.4f", epoch, val_loss)
    if metrics:
        metrics.close()
    if tracker:
        tracker.close()

    export(engine, tokenizer, eot, eot_id, cfg.output_dir, rank)
    if rank == 0:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(work_metrics, metrics_path) if not checkpoints.folder else shutil.copyfile(work_metrics, metrics_path)
    checkpoints.finish()
    summary = {"train_traces": len(examples), "dropped_too_long": too_long, "val_traces": len(val_examples),
               "val_dropped_too_long": val_too_long, "steps": step, "resumed_from_step": resumed,
               "elapsed_s": round(time.monotonic() - started, 1), "end_of_turn": eot, "config": asdict(cfg)}
    return summary


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


def _apply_liger(model):
    """Liger's fused RMSNorm, SwiGLU and RoPE kernels patched into `model`; returns the fused loss."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"train.liger_kernel: Liger has no kernels for model type {model.config.model_type!r}")
    # The loss is ours (label positions only); Liger's own loss patch would replace the model's forward.
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    log.info("Liger kernels applied to %s", model.config.model_type)
    return liger_loss()


def _gradient_norm(module) -> float:
    """Global L2 norm of the gradients of `module` (one process: they are the whole gradient)."""
    import torch

    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _float_or_none(value):
    return None if value is None else float(value)


def evaluate_loss(engine, examples, micro, pad_id, device) -> float:
    """Token-mean loss over `examples` (no gradient), in padded micro-batches."""
    import torch

    engine.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro):
            batch = examples[start : start + micro]
            loss, _ = micro_batch_loss(engine, batch, False, pad_id, device)
            total += float(loss)
            count += sum(sum(l != IGNORE_INDEX for l in labs[1:]) for _, labs in batch)
    engine.train()
    return total / max(count, 1)


def export(engine, tokenizer, eot: str, eot_id: int, output_dir: str, rank: int) -> None:
    """Write a Hugging Face folder (ZeRO-3 shards gathered, LoRA adapters merged) whose EOS is the template's
    end of turn, atomically (temporary folder, then rename). Rank 0 writes."""
    import deepspeed
    import torch.distributed as dist

    model = engine.module
    stage3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=stage3):
        if rank == 0:
            if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters into the weights
                model = model.merge_and_unload()
            out = Path(output_dir)
            tmp = out.with_name(f".{out.name}.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            model.config.eos_token_id = eot_id
            if model.generation_config is not None:
                model.generation_config.eos_token_id = eot_id
            tokenizer.eos_token = eot
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if stage3 else None
            model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
            config_path = tmp / "config.json"  # the packed attention is ours; loaders use their default
            config = json.loads(config_path.read_text())
            config.pop("_attn_implementation", None)
            config_path.write_text(json.dumps(config, indent=2) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
            log.info("exported %s", out)
    if dist.is_initialized():
        dist.barrier()
