import io
import json
import logging
import math
import re

import pytest

from helpers.workflow import load_script
from mathsft.checkpoints import Checkpoints
from mathsft.rank_logs import EVERY_RANK, log_as_rank
from mathsft.train import TrainingDiverged, check_finite, cosine_with_warmup
from mathsft.train_settings import ConfigError, TrainConfig, check_config, deepspeed_config, run_fingerprint


def _cfg(tmp_path, **overrides):
    train = tmp_path / "train.parquet"
    train.write_bytes(b"")
    deepspeed_json = tmp_path / "deepspeed.json"
    deepspeed_json.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    values = dict(model="m", train_path=str(train), val_path=str(tmp_path / "val.parquet"), output_dir="o",
                  deepspeed_config=str(deepspeed_json), global_batch_size=8, micro_batch_size_per_device=2,
                  max_length=1024)
    return TrainConfig(**(values | overrides))


def test_gradient_accumulation_is_global_over_micro_times_processes(tmp_path):
    assert check_config(_cfg(tmp_path), world_size=2, context_length=4096, rope_scaling=None) == 2


def test_batch_size_not_divisible_is_refused_naming_both_keys(tmp_path):
    with pytest.raises(ConfigError, match="global_batch_size.*micro_batch_size_per_device"):
        check_config(_cfg(tmp_path, global_batch_size=6, micro_batch_size_per_device=4), 1, 4096, None)


def test_max_length_over_the_context_window_is_refused_unless_rope_scaling(tmp_path):
    # The seed trains Qwen2.5-Math-1.5B (context 4096) at 6144.
    with pytest.raises(ConfigError, match="context window"):
        check_config(_cfg(tmp_path, max_length=6144), 1, 4096, None)
    # transformers 5 describes an unscaled model's rope as rope_type "default": still refused.
    with pytest.raises(ConfigError, match="context window"):
        check_config(_cfg(tmp_path, max_length=6144), 1, 4096, {"rope_type": "default", "rope_theta": 10000.0})
    check_config(_cfg(tmp_path, max_length=6144), 1, 4096, {"type": "yarn", "factor": 2.0})


def test_missing_train_file_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="nope.parquet"):
        check_config(_cfg(tmp_path, train_path=str(tmp_path / "nope.parquet")), 1, 4096, None)


def test_schedule_warms_up_linearly_then_decays_to_zero():
    factor = cosine_with_warmup(total_steps=10, warmup_steps=2)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert factor(2) == 1.0 and factor(10) == pytest.approx(0.0)
    assert factor(6) == pytest.approx(0.5)


def test_deepspeed_config_gets_batch_and_optimiser_values(tmp_path):
    cfg = _cfg(tmp_path, learning_rate=3e-5)
    settings = deepspeed_config(cfg.deepspeed_config, cfg, gradient_accumulation_steps=4, use_bf16=False)
    batch = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    assert tuple(settings[key] for key in batch) == (8, 2, 4)
    assert settings["optimizer"]["params"]["lr"] == 3e-5 and settings["bf16"] == {"enabled": False}


def test_one_float32_process_runs_zero_1_and_2_as_stage_0_and_keeps_every_other_setup(tmp_path):
    cfg = _cfg(tmp_path)
    assert deepspeed_config(cfg.deepspeed_config, cfg, 4, use_bf16=False, world_size=1)["zero_optimization"] == {"stage": 0}
    # Several processes partition; bf16 keeps ZeRO's float32 gradient accumulation; offload and ZeRO-3 stay.
    assert deepspeed_config(cfg.deepspeed_config, cfg, 4, use_bf16=False, world_size=2)["zero_optimization"]["stage"] == 2
    assert deepspeed_config(cfg.deepspeed_config, cfg, 4, use_bf16=True, world_size=1)["zero_optimization"]["stage"] == 2
    for zero in ({"stage": 3}, {"stage": 2, "offload_optimizer": {"device": "cpu"}}):
        deepspeed_json = tmp_path / "other.json"
        deepspeed_json.write_text(json.dumps({"zero_optimization": zero}))
        assert deepspeed_config(str(deepspeed_json), cfg, 4, use_bf16=False, world_size=1)["zero_optimization"] == zero


def test_a_checkpoint_is_resumed_only_with_the_same_process_count(tmp_path):
    cfg = _cfg(tmp_path)
    assert run_fingerprint(cfg, 1) == run_fingerprint(cfg, 1) != run_fingerprint(cfg, 2)


def test_a_resume_skips_and_counts_torn_or_undecodable_metrics_lines_and_keeps_the_rest_up_to_its_step(tmp_path, caplog):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    good = [json.dumps({"step": step, "epoch": 0, "loss": 1.0 / step}).encode() for step in (1, 2, 3)]
    # Bytes that are not UTF-8 (a cut character), a line that is not a metrics entry, and a torn last line.
    damaged = [good[0], b'{"step": 2, "note": "caf\xc3"}', good[1], b"[1, 2]", good[2], b'{"step": 4, "lo']
    (folder / "metrics.jsonl").write_bytes(b"\n".join(damaged))
    with caplog.at_level(logging.WARNING, logger="mathsft.checkpoints"):
        Checkpoints(str(folder), "fingerprint", rank=0).prepare(resumed_step=2)
    assert (folder / "metrics.jsonl").read_bytes() == good[0] + b"\n" + good[1] + b"\n"
    assert "3 unreadable line(s) skipped" in caplog.text and str(folder / "metrics.jsonl") in caplog.text


def test_a_finite_step_passes_the_divergence_check():
    check_finite(3, 10, 0, loss=2.5, grad_norm=1.2, micro_losses=[10.0, 20.0], rank=0, learning_rate=1e-5,
                 train_path="train.parquet")
    check_finite(3, 10, 0, loss=2.5, grad_norm=None, micro_losses=[10.0], rank=0, learning_rate=1e-5,
                 train_path="train.parquet")


def test_a_non_finite_loss_names_the_step_and_micro_batch_and_says_what_to_do():
    with pytest.raises(TrainingDiverged) as error:
        check_finite(7, 40, 1, loss=math.nan, grad_norm=math.inf, micro_losses=[3.0, math.inf, math.nan], rank=1,
                     learning_rate=3e-4, train_path="results/sft/train.parquet")
    message = str(error.value)
    assert "optimizer step 7 of 40 (epoch 1), first in micro-batch 2 of 3 on rank 1" in message
    assert "Nothing was exported" in message and "Lower train.learning_rate (now 0.0003)" in message
    assert "results/sft/train.parquet" in message


def test_a_non_finite_gradient_norm_stops_training_even_when_deepspeed_reports_it_as_minus_one():
    # ZeRO-1/2 return -1 for an infinite or NaN norm; stage 0 (our own norm) returns the value itself.
    for grad_norm in (math.nan, math.inf, -1.0):
        with pytest.raises(TrainingDiverged, match="optimizer step 2 of 4 \\(epoch 0\\): loss 2.0, gradient norm"):
            check_finite(2, 4, 0, loss=2.0, grad_norm=grad_norm, micro_losses=[4.0], rank=0, learning_rate=1e-5,
                         train_path="t")


def test_train_revision_reaches_every_transformers_load(tmp_path, monkeypatch, student_dir):
    """The pin loads the config, the tokenizer and the weights at that commit (here a local stand-in answers
    for the hub id, as the hub cannot be reached)."""
    import transformers

    from mathsft.train import train
    from helpers.sftdata import write_sft_set

    loads = []

    class WeightsRequested(Exception):
        pass

    def stand_in(cls, load):
        def from_pretrained(name, *args, revision=None, **kwargs):
            loads.append((cls, name, revision))
            if cls == "AutoModelForCausalLM":
                raise WeightsRequested
            return load(str(student_dir), *args, **kwargs)
        return from_pretrained

    for cls in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained",
                            stand_in(cls, getattr(transformers, cls).from_pretrained))
    # No process group in the test's own process: it would hold a port, and its RANK and MASTER_PORT would reach
    # every training the later tests start.
    monkeypatch.setattr("mathsft.train._init_distributed", lambda: (0, 1))
    cfg = _cfg(tmp_path, model="org/student", revision="0123abc", train_path=str(write_sft_set(tmp_path / "t.parquet")),
               max_length=512)
    with pytest.raises(WeightsRequested):
        train(cfg, str(tmp_path / "metrics.jsonl"))
    assert [load for load in loads if load[1] == "org/student"] == [
        (cls, "org/student", "0123abc") for cls in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM")]


def test_an_unknown_tracker_or_one_without_a_folder_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.report_to must be one of none, tensorboard, got 'wandb'"):
        check_config(_cfg(tmp_path, report_to="wandb", tracking_dir="t"), 1, 4096, None)
    with pytest.raises(ConfigError, match="--tracking_dir"):
        check_config(_cfg(tmp_path, report_to="tensorboard"), 1, 4096, None)


def test_tracking_never_changes_which_checkpoints_a_run_resumes(tmp_path):
    tracked = _cfg(tmp_path, report_to="tensorboard", tracking_dir=str(tmp_path / "tb"))
    assert run_fingerprint(tracked) == run_fingerprint(_cfg(tmp_path))


def test_which_activations_are_recomputed_never_changes_which_checkpoints_a_run_resumes(tmp_path):
    # The same gradients to the bit (test_recompute); a setting that changes the result changes the fingerprint.
    assert run_fingerprint(_cfg(tmp_path, recompute_elementwise=False)) == run_fingerprint(_cfg(tmp_path))
    assert run_fingerprint(_cfg(tmp_path, learning_rate=3e-5)) != run_fingerprint(_cfg(tmp_path))


def test_two_train_files_are_read_in_the_order_given_as_one_training_set(tmp_path, student_tokenizer):
    from mathsft.chat import end_of_turn_token
    from mathsft.train_data import load_examples
    from helpers.sftdata import write_sft_set

    first, second = write_sft_set(tmp_path / "a.parquet", 3), write_sft_set(tmp_path / "b.parquet", 5)
    end_of_turn_id = student_tokenizer.convert_tokens_to_ids(end_of_turn_token(student_tokenizer))

    def examples(*paths, max_length=512):
        return load_examples([str(path) for path in paths], student_tokenizer, end_of_turn_id, max_length)

    assert examples(first, second)[0] == examples(first)[0] + examples(second)[0]
    assert len(examples(first, second)[0]) == 8 and examples(first, second) != examples(second, first)
    shortest = min(len(ids) for ids, _ in examples(first, second)[0])
    too_long = [examples(*paths, max_length=shortest)[1] for paths in ((first, second), (first,), (second,))]
    assert too_long[0] == too_long[1] + too_long[2] > 0  # the traces too long in either file are counted


def test_train_files_takes_several_and_one_keeps_the_config_and_fingerprint_it_had(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    (tmp_path / "more.parquet").write_bytes(b"PAR1 more")
    (tmp_path / "deepspeed.json").write_text('{"zero_optimization": {"stage": 2}}')
    script = load_script("train_sft.py")
    common = ["--model", "m", "--output_dir", "o", "--metrics", "x", "--summary", "y", "--deepspeed", "deepspeed.json",
              "--val_files", "val.parquet"]

    def settings(*train_files):
        return script.train_config(script.build_parser().parse_args(["--train_files", *train_files, *common]))

    one = settings("train.parquet")
    # A run of one file keeps the plain path in its summary's config, and the fingerprint its checkpoints were
    # written with before --train_files took several files (so that a run killed then still resumes).
    assert one.train_path == "train.parquet" and one.val_path == "val.parquet"
    assert run_fingerprint(one) == "341508ee30b28437" and run_fingerprint(one, 2) == "0ad97061a0841442"
    both = settings("train.parquet", "more.parquet")
    assert both.train_path == ("train.parquet", "more.parquet")
    assert check_config(both, 1, 4096, None) == 4
    # The second file's content is part of the fingerprint: another second file, another run.
    before = run_fingerprint(both)
    (tmp_path / "more.parquet").write_bytes(b"PAR1 other")
    assert run_fingerprint(both) not in (before, run_fingerprint(one))
    with pytest.raises(ConfigError, match="train file missing.parquet does not exist"):
        check_config(settings("train.parquet", "missing.parquet"), 1, 4096, None)


@pytest.mark.parametrize("rank", [0, 1])
def test_only_the_first_process_logs_the_steps_and_the_others_warn_naming_their_rank(monkeypatch, rank):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    level = root.level
    root.setLevel(logging.INFO)
    try:
        log_as_rank(rank)
        trainer = logging.getLogger("mathsft.train")
        trainer.info("step 1/6 loss 1.2000")
        trainer.warning("the checkpoint folder is nearly full")
        logging.getLogger("mathsft.checkpoints").info("resumed from ckpt at step 3", extra=EVERY_RANK)
    finally:
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    if rank == 0:
        assert lines == ["INFO step 1/6 loss 1.2000", "WARNING the checkpoint folder is nearly full",
                         "INFO resumed from ckpt at step 3"]
    else:
        assert [re.sub(r"^\S+ \S+ ", "", line) for line in lines] == [
            "WARNING rank 1: the checkpoint folder is nearly full", "INFO rank 1: resumed from ckpt at step 3"]
