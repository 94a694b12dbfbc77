"""Dry runs of the workflow: what a fresh directory plans, and config errors caught before any job."""

from workflow import REPO, edited_config, planned_outputs, snakemake

TINY = REPO / "tests" / "configs" / "tiny.yaml"


def test_a_fresh_directory_plans_every_stage_with_one_job_per_shard_and_model(tmp_path):
    planned = planned_outputs(tmp_path, TINY)
    assert planned["prepare_model"] == {"results/base_models/qwen2.5-coder-0.5b-instruct",
                                        "results/base_models/smollm2-135m-instruct"}
    assert planned["teacher"] == {"results/teacher/00000.parquet", "results/teacher/00001.parquet"}
    assert planned["reward"] == {"results/scored/00000.parquet", "results/scored/00001.parquet"}
    assert planned["evaluate"] == {"results/eval/generations/student.parquet", "results/eval/generations/sft.parquet"}
    assert planned["train"] == {"results/models/sft", "results/train/sft/metrics.jsonl", "results/train/sft/summary.json"}
    assert planned["eval_summary"] == {"results/eval.json"}
    assert set(planned) == {"prepare_model", "prepare_data", "teacher", "reward", "curate", "train", "evaluate",
                            "score_eval", "eval_summary"}


def test_the_embedded_default_plans_two_teacher_shards(tmp_path):
    planned = planned_outputs(tmp_path, REPO / "config" / "config.yaml")
    assert planned["teacher"] == {"results/teacher/00000.parquet", "results/teacher/00001.parquet"}


def test_a_bad_config_value_fails_before_any_job_naming_the_key(tmp_path):
    bad = edited_config(TINY, tmp_path / "bad.yaml", **{"teacher.temperature": "hot"})
    result = snakemake(tmp_path, bad, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "temperature" in output and "'hot' is not of type 'number'" in output
    assert not (tmp_path / "results").exists()


def test_an_unknown_config_key_is_refused(tmp_path):
    bad = edited_config(TINY, tmp_path / "bad.yaml", **{"curate.reward_treshold": 0.5})
    result = snakemake(tmp_path, bad, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0 and "reward_treshold" in result.stdout + result.stderr


def test_the_deepscaler_run_plans_hub_fetches_and_one_teacher_job_per_shard(tmp_path):
    result = snakemake(tmp_path, REPO / "config" / "deepscaler.yaml", "-n", "results/eval.json", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = planned_outputs(tmp_path, REPO / "config" / "deepscaler.yaml")
    assert planned["fetch_dataset"] == {f"results/data/raw/{name}.parquet" for name in
                                        ("deepscaler", "aime24", "amc23", "math500", "minerva", "olympiadbench")}
    assert planned["teacher"] == {f"results/teacher/{k:05d}.parquet" for k in range(32)}
    assert "prepare_model" not in planned  # hub models, not embedded ones
    assert planned["evaluate"] == {"results/eval/generations/student.parquet", "results/eval/generations/sft.parquet"}
