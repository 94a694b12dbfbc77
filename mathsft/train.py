"""Supervised fine-tuning with DeepSpeed ZeRO: loss on assistant tokens only (token mean over the global
batch), cosine schedule with warmup, a Hugging Face folder exported with the template's end of turn as EOS."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mathsft.chat import IGNORE_INDEX, end_of_turn_token, tokenize_example
from mathsft.io import SCORED_SCHEMA, read_parquet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
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
    max_length: int = 1024
    gradient_checkpointing: bool = False
    seed: int = 0


class ConfigError(ValueError):
    """A training setting that cannot work; raised before any compute."""


def check_config(cfg: TrainConfig, world_size: int, context_length: int | None, rope_scaling) -> int:
    """Validate settings against each other and the model; returns gradient accumulation steps."""
    for path, key in ((cfg.train_path, "train file"), (cfg.deepspeed_config, "deepspeed config")):
        if not Path(path).is_file():
            raise ConfigError(f"{key} {path} does not exist")
    per_step = cfg.micro_batch_size_per_device * world_size
    if cfg.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size ({cfg.global_batch_size}) is not divisible by "
            f"train.micro_batch_size_per_device ({cfg.micro_batch_size_per_device}) x {world_size} process(es)"
        )
    if context_length and cfg.max_length > context_length and not rope_scaling:
        raise ConfigError(
            f"train.max_length ({cfg.max_length}) exceeds the model's context window ({context_length}) and no "
            f"rope scaling is configured; lower train.max_length"
        )
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


def _summed_token_loss(model, input_ids, labels, attention):
    """Sum of next-token cross-entropy over label tokens, and their count."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((targets != IGNORE_INDEX).sum())


def _init_distributed():
    """One process without a launcher gets the environment torch.distributed expects."""
    import deepspeed

    from mathsft.serve import free_port

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import torch

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def deepspeed_config(path: str, cfg: TrainConfig, gradient_accumulation_steps: int, use_bf16: bool) -> dict:
    """The JSON at `path` with the batch, optimiser and precision values filled in from `cfg`."""
    ds = json.loads(Path(path).read_text())
    ds.update(
        train_batch_size=cfg.global_batch_size,
        train_micro_batch_size_per_gpu=cfg.micro_batch_size_per_device,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_clipping=cfg.max_grad_norm,
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


def train(cfg: TrainConfig, metrics_path: str) -> dict:
    """Fine-tune cfg.model on cfg.train_path and export a Hugging Face folder to cfg.output_dir."""
    import deepspeed
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_config = AutoConfig.from_pretrained(cfg.model)
    rank, world_size = _init_distributed()
    gas = check_config(cfg, world_size, getattr(model_config, "max_position_embeddings", None),
                       getattr(model_config, "rope_scaling", None))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    eot = end_of_turn_token(tokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    examples, too_long = load_examples(cfg.train_path, tokenizer, eot_id, cfg.max_length)
    val_examples, val_too_long = (
        load_examples(cfg.val_path, tokenizer, eot_id, cfg.max_length) if Path(cfg.val_path).is_file() else ([], 0)
    )
    if not examples:
        raise ConfigError(f"{cfg.train_path}: no training traces left ({too_long} longer than train.max_length); "
                          "generate more or lower curate.reward_threshold")
    log.info("%d train traces (%d over max_length %d dropped), %d val traces; end of turn %s",
             len(examples), too_long, cfg.max_length, len(val_examples), eot)

    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    steps_per_epoch = math.ceil(len(examples) / cfg.global_batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = max(1, round(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0
    schedule = cosine_with_warmup(total_steps, warmup_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg.deepspeed_config, cfg, gas, use_bf16),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
    )
    device = engine.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot_id
    micro = cfg.micro_batch_size_per_device

    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    metrics = open(metrics_path, "w")
    step, started = 0, time.monotonic()
    for epoch in range(cfg.epochs):
        order = list(range(len(examples)))
        random.Random(cfg.seed + epoch).shuffle(order)
        engine.train()
        for start in range(0, len(order), cfg.global_batch_size):
            global_batch = [examples[i] for i in order[start : start + cfg.global_batch_size]]
            # This rank's share, split into micro batches; the loss is the token mean over the global batch.
            mine = global_batch[rank::world_size]
            micro_batches = [mine[i : i + micro] for i in range(0, len(mine), micro)]
            local_tokens = sum(sum(l != IGNORE_INDEX for l in labs[1:]) for _, labs in mine)
            global_tokens = torch.tensor(float(local_tokens), device=device)
            if world_size > 1:
                torch.distributed.all_reduce(global_tokens)
            step_loss, step_tokens, step_started = 0.0, 0, time.monotonic()
            # DeepSpeed divides each backward by its accumulation count; pad out to it with empty passes.
            for k in range(gas):
                batch = micro_batches[k] if k < len(micro_batches) else None
                if batch is None:
                    loss = sum(p.sum() * 0.0 for p in engine.module.parameters() if p.requires_grad)
                    n = 0
                else:
                    input_ids, labels, attention = (t.to(device) for t in _collate(batch, pad_id))
                    loss, n = _summed_token_loss(engine, input_ids, labels, attention)
                    step_tokens += int(attention.sum())
                engine.backward(loss * gas / global_tokens)
                step_loss += float(loss.detach())
                engine.step()
            step += 1
            record = {
                "step": step, "epoch": epoch, "loss": step_loss / float(global_tokens),
                "lr": engine.get_lr()[0], "grad_norm": _float_or_none(engine.get_global_grad_norm()),
                "tokens_per_s": step_tokens / max(time.monotonic() - step_started, 1e-9),
                "elapsed_s": time.monotonic() - started,
            }
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            log.info("step %d/%d loss %.4f lr %.2e", step, total_steps, record["loss"], record["lr"])
        if val_examples:
            val_loss = evaluate_loss(engine, val_examples, micro, pad_id, device)
            metrics.write(json.dumps({"step": step, "epoch": epoch, "val_loss": val_loss}) + "\n")
            metrics.flush()
            log.info("epoch %d val loss %.4f", epoch, val_loss)
    metrics.close()

    if rank == 0:
        export(engine.module, tokenizer, eot, eot_id, cfg.output_dir)
    summary = {"train_traces": len(examples), "dropped_too_long": too_long, "val_traces": len(val_examples),
               "val_dropped_too_long": val_too_long, "steps": step, "elapsed_s": round(time.monotonic() - started, 1),
               "end_of_turn": eot, "config": asdict(cfg)}
    return summary


def _float_or_none(value):
    return None if value is None else float(value)


def evaluate_loss(engine, examples, micro, pad_id, device) -> float:
    """Token-mean loss over `examples` (no gradient)."""
    import torch

    engine.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro):
            input_ids, labels, attention = (t.to(device) for t in _collate(examples[start : start + micro], pad_id))
            loss, n = _summed_token_loss(engine, input_ids, labels, attention)
            total, count = total + float(loss), count + n
    engine.train()
    return total / max(count, 1)


def export(model, tokenizer, eot: str, eot_id: int, output_dir: str) -> None:
    """Write a Hugging Face folder whose EOS is the template's end of turn, atomically (temp, rename)."""
    out = Path(output_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.config.eos_token_id = eot_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eot_id
    tokenizer.eos_token = eot
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("exported %s", out)
