"""The trainer for real (DeepSpeed on CPU, the embedded student): packed and padded batches take the same
step, elementwise recompute changes no bit, a run killed with SIGKILL resumes from its last checkpoint to the
same weights (past a torn metrics line), a diverging run stops and exports nothing, the exported folder loads
and generates, LoRA is merged at export, ZeRO-3 shards are gathered, bad settings stop before compute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.sftdata import write_sft_set

# Every test here starts a real training run.
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def train_command(student_dir, work: Path, out: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train_sft.py"), "--model", str(student_dir),
            "--train_files", str(work / "train.parquet"), "--val_files", str(work / "val.parquet"),
            "--output_dir", str(work / out / "model"), "--metrics", str(work / out / "metrics.jsonl"),
            "--summary", str(work / out / "summary.json"), "--max_length", "256", "--threads", "2",
            "--deepspeed", str(REPO / "config" / "deepspeed" / "zero2.json"), *extra]


def run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def metrics(work: Path, out: str) -> list[dict]:
    return [json.loads(line) for line in (work / out / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("train")
    write_sft_set(work / "train.parquet", 8)
    write_sft_set(work / "val.parquet", 2)
    return work


def test_packed_and_padded_batches_take_the_same_first_step_and_packing_wastes_nothing(student_dir, work):
    for out, flag in (("packed", "--packing"), ("padded", "--no-packing")):
        run(train_command(student_dir, work, out, flag, "--global_batch_size", "8", "--micro_batch_size_per_device", "4"))
    packed, padded = metrics(work, "packed")[0], metrics(work, "padded")[0]
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-4)
    assert packed["grad_norm"] == pytest.approx(padded["grad_norm"], rel=1e-3)
    assert packed["padding_waste"] == 0.0 and packed["micro_batches"] == 1
    assert padded["padding_waste"] > 0.01 and padded["micro_batches"] == 2


def test_elementwise_recompute_on_and_off_train_to_the_same_bits(student_dir, work):
    for out, flag in (("recomputed", "--recompute_elementwise"), ("kept", "--no-recompute_elementwise")):
        run(train_command(student_dir, work, out, flag, "--global_batch_size", "4", "--micro_batch_size_per_device", "4"))
    recomputed, kept = metrics(work, "recomputed"), metrics(work, "kept")
    assert [m.get("loss") for m in recomputed] == [m.get("loss") for m in kept]
    assert [m.get("grad_norm") for m in recomputed] == [m.get("grad_norm") for m in kept]
    assert (work / "recomputed" / "model" / "model.safetensors").read_bytes() == \
        (work / "kept" / "model" / "model.safetensors").read_bytes()


def test_a_run_killed_with_sigkill_resumes_from_its_last_checkpoint_to_the_same_weights(student_dir, work):
    # Killed in the middle of writing a metrics line too: the torn line is skipped, not a reason to fail. The
    # uninterrupted run keeps no checkpoints (checkpoint_every is no part of what a run computes: train_settings).
    common = ("--global_batch_size", "2", "--micro_batch_size_per_device", "2")
    run(train_command(student_dir, work, "whole", *common))
    command = train_command(student_dir, work, "resumed", *common, "--checkpoint_every", "2",
                            "--checkpoint_dir", str(work / "ckpt"))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = work / "ckpt" / "latest"
    deadline = time.monotonic() + 600
    while not (latest.is_file() and latest.read_text().strip() == "step00000002"):
        assert process.poll() is None, "the run ended before its second checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (work / "resumed" / "model").exists()
    with open(work / "ckpt" / "metrics.jsonl", "ab") as torn:  # as if killed mid-line, in a UTF-8 character
        torn.write(b'{"step": 3, "epoch": 0, "note": "\xe2\x82')
    resumed = run(command)
    assert "1 unreadable line(s) skipped" in resumed.stderr
    summary = json.loads((work / "resumed" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    assert [m["step"] for m in metrics(work, "resumed") if "loss" in m] == [1, 2, 3, 4]
    whole, resumed = weights(work / "whole" / "model"), weights(work / "resumed" / "model")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert (whole[name] - resumed[name]).abs().max() < 1e-5, name
    assert not (work / "ckpt").exists()  # a finished run removes its checkpoints


def test_a_diverging_run_stops_at_the_step_that_went_non_finite_checkpoints_and_exports_nothing(student_dir, work):
    # At 1e20 the first Adam step throws the weights to about 1e20 and the second step's gradient norm is NaN.
    # (At 1e4 or 1e6 the model collapses to a uniform prediction with a zero gradient instead: finite values.)
    command = train_command(student_dir, work, "diverged", "--global_batch_size", "2", "--micro_batch_size_per_device",
                            "2", "--learning_rate", "1e20", "--checkpoint_dir", str(work / "ckpt_diverged"),
                            "--checkpoint_every", "1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stderr[-4000:]
    assert "error: training diverged at optimizer step 2 of 4 (epoch 0)" in result.stderr
    assert "Lower train.learning_rate (now 1e+20)" in result.stderr and "step 2/4" not in result.stderr
    assert not (work / "diverged").exists(), "no model, metrics or summary (nor a temporary one) for a diverged run"
    # The last checkpoint is the step before: the diverged one is never saved.
    assert (work / "ckpt_diverged" / "latest").read_text().strip() == "step00000001"


def test_the_exported_model_loads_generates_and_stops_on_the_end_of_turn(work):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = work / "whole" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 11?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_lora_adapters_are_merged_into_a_plain_exported_model(student_dir, work):
    run(train_command(student_dir, work, "lora", "--global_batch_size", "8", "--micro_batch_size_per_device", "4",
                      "--lora_rank", "4", "--learning_rate", "1e-3"))
    merged, base = weights(work / "lora" / "model"), weights(student_dir)
    assert not [name for name in merged if "lora" in name]
    assert merged.keys() <= base.keys() | {"lm_head.weight"}
    name = "model.layers.0.self_attn.q_proj.weight"
    assert merged[name].shape == base[name].shape and (merged[name] - base[name]).abs().max() > 0


def test_zero3_shards_are_gathered_into_a_full_exported_model(student_dir, work):
    command = train_command(student_dir, work, "zero3", "--global_batch_size", "8", "--micro_batch_size_per_device", "4")
    command[command.index(str(REPO / "config" / "deepspeed" / "zero2.json"))] = str(REPO / "config" / "deepspeed" / "zero3.json")
    run(command)
    exported, base = weights(work / "zero3" / "model"), weights(student_dir)
    name = "model.layers.0.mlp.up_proj.weight"
    assert exported[name].shape == base[name].shape and exported[name].numel() > 0


def test_a_max_length_over_the_context_window_stops_before_any_compute(student_dir, work):
    command = train_command(student_dir, work, "bad", "--global_batch_size", "8")
    command[command.index("--max_length") + 1] = "100000"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "train.max_length (100000) exceeds the model's context window" in result.stderr
    assert not (work / "bad").exists()


def test_liger_kernels_without_a_gpu_stop_before_the_model_loads(student_dir, work):
    result = subprocess.run(train_command(student_dir, work, "liger", "--liger_kernel"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "train.liger_kernel needs a CUDA GPU" in result.stderr
    assert "Loading weights" not in result.stderr and not (work / "liger").exists()


def test_report_to_tensorboard_writes_event_files_that_read_back_as_the_metrics(student_dir, work):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracking = work / "tracked" / "tensorboard"
    run(train_command(student_dir, work, "tracked", "--global_batch_size", "4", "--micro_batch_size_per_device", "2",
                      "--report_to", "tensorboard", "--tracking_dir", str(tracking)))
    events = EventAccumulator(str(tracking))
    events.Reload()
    logged = metrics(work, "tracked")
    steps = [m for m in logged if "loss" in m]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (m["step"], pytest.approx(m["loss"], rel=1e-6)) for m in steps]
    assert [e.step for e in events.Scalars("train/learning_rate")] == [m["step"] for m in steps]
    assert [e.value for e in events.Scalars("val/loss")] == [pytest.approx(m["val_loss"], rel=1e-6)
                                                               for m in logged if "val_loss" in m]
