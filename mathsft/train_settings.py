"""A training run's settings: TrainConfig (the one definition of train.*'s fields, defaults and help), the checks
that stop a run before any compute, the DeepSpeed JSON filled in from them, and the fingerprint a checkpoint must
match to be resumed."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults are config.schema.yaml's (train.*; tests/test_settings.py checks them); the field
    order is that of the summary's config."""

    model: str
    # One parquet file as its path, or several as a tuple, read in that order as one set (parquet_files):
    # a run of one file records and fingerprints the plain path, as runs always have.
    train_path: str | tuple[str, ...]
    val_path: str | tuple[str, ...]
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
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each decoder layer's whole forward pass in the backward pass: least activation memory, "
                "about 15% slower on a CPU"})
    recompute_elementwise: bool = field(default=True, metadata={
        "help": "keep only the outputs of matrix products and attention for the backward pass and recompute the "
                "elementwise ops between them (mathsft.recompute): the same gradients, about a fifth less peak memory "
                "for a few percent more time on a CPU; off with gradient_checkpointing (which recomputes all) or "
                "liger_kernel (whose fused kernels keep little)"})
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


def parquet_files(paths: str | tuple[str, ...]) -> tuple[str, ...]:
    """The files of a TrainConfig's train_path or val_path, in the order they are read."""
    return (paths,) if isinstance(paths, str) else tuple(paths)


def one_or_several(files: list[str]) -> str | tuple[str, ...]:
    """The train_path or val_path value for `files`: one file as its plain path (what a run of one file has
    always recorded, and its checkpoints' fingerprint hashed), several as a tuple."""
    return files[0] if len(files) == 1 else tuple(files)


class ConfigError(ValueError):
    """A training setting that cannot work; raised before any compute."""


def check_config(cfg: TrainConfig, world_size: int, context_length: int | None, rope_scaling) -> int:
    """Validate settings against each other and the model; returns gradient accumulation steps."""
    for path, key in (*((path, "train file") for path in parquet_files(cfg.train_path)),
                      (cfg.deepspeed_config, "deepspeed config")):
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


def deepspeed_config(path: str, cfg: TrainConfig, gradient_accumulation_steps: int, use_bf16: bool,
                     world_size: int = 1) -> dict:
    """The JSON at `path` with the batch, optimiser and precision values filled in from `cfg`. Gradient
    accumulation is ours (managed_gradient_accumulation off): packed steps have varying micro-batch counts.
    In one float32 process ZeRO-1/2 has nothing to partition, so without offload it runs as stage 0: the
    same update without ZeRO's gradient hooks and flat buffers (about a sixth of a CPU step; see bench/).
    Not in bf16: DeepSpeed's stage 0 would then accumulate gradients in bf16, where ZeRO keeps float32."""
    deepspeed_settings = json.loads(Path(path).read_text())
    zero = deepspeed_settings.get("zero_optimization", {})
    if world_size == 1 and not use_bf16 and zero.get("stage") in (1, 2) and not zero.get("offload_optimizer"):
        log.info("one process: ZeRO stage %s runs as stage 0 (nothing to partition)", zero["stage"])
        deepspeed_settings["zero_optimization"] = {"stage": 0}
    deepspeed_settings.update(
        train_batch_size=cfg.global_batch_size,
        train_micro_batch_size_per_gpu=cfg.micro_batch_size_per_device,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_clipping=cfg.max_grad_norm,
        managed_gradient_accumulation=False,
    )
    deepspeed_settings.setdefault("optimizer", {"type": "AdamW", "params": {}})
    deepspeed_settings["optimizer"]["params"].update(lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    deepspeed_settings["bf16"] = {"enabled": use_bf16}
    return deepspeed_settings


def run_fingerprint(cfg: TrainConfig, world_size: int = 1) -> str:
    """What a checkpoint must match to be resumed from: every setting that shapes training, the start model,
    the training data's content and the process count (it splits the data and shapes the ZeRO states); not
    where outputs go, how often checkpoints are written, nor which activations are recomputed (the same
    gradients either way)."""
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in ("output_dir", "checkpoint_dir", "checkpoint_every", "report_to", "tracking_dir",
                             "recompute_elementwise")}
    settings["world_size"] = world_size
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in (*parquet_files(cfg.train_path), cfg.deepspeed_config):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]
