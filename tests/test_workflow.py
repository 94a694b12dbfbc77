"""Dry runs of the workflow: what a fresh directory plans, config errors caught before any job, and every value
quoted on its way to a job's shell."""

import json
import os
import re
import shutil
import subprocess

import pytest
from helpers.workflow import (JOB_HEADER, REPO, checkout, edited_config, outputs_of_plan, planned_outputs, snakemake,
                              snakemake_command)

TINY = REPO / "tests" / "configs" / "tiny.yaml"


def test_a_fresh_directory_plans_every_stage_with_one_job_per_shard_and_model(tmp_path):
    planned = planned_outputs(tmp_path, TINY)
    assert planned["prepare_model"] == {"results/base_models/qwen2.5-coder-0.5b-instruct",
                                        "results/base_models/smollm2-135m-instruct"}
    assert planned["teacher"] == {"results/teacher/00000.parquet", "results/teacher/00001.parquet"}
    assert planned["reward"] == {"results/scored/00000.parquet", "results/scored/00001.parquet"}
    assert planned["evaluate"] == {"results/eval/generations/student/all.parquet", "results/eval/generations/sft/all.parquet",
                                   "results/eval/generations/teacher/all.parquet"}
    assert planned["train"] == {"results/models/sft", "results/train/sft/metrics.jsonl", "results/train/sft/summary.json"}
    assert planned["eval_summary"] == {"results/eval.json"}
    assert set(planned) == {"prepare_model", "prepare_data", "teacher", "reward", "curate", "train", "evaluate",
                            "score_eval", "eval_summary"}


def test_per_benchmark_evaluation_plans_a_job_per_model_and_benchmark_scored_per_model(tmp_path):
    config = edited_config(TINY, tmp_path / "c.yaml", **{"eval.jobs": "per_benchmark"})
    result = snakemake(tmp_path / "run", config, "-n", "-p", "results/eval.json", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = outputs_of_plan(result.stdout)
    assert planned["evaluate"] == {f"results/eval/generations/{model}/{bench}.parquet" for model in
                                   ("student", "sft", "teacher") for bench in ("chain_sum", "basic_arithmetic")}
    assert planned["score_eval"] == {f"results/eval/{model}.{suffix}" for model in ("student", "sft", "teacher")
                                     for suffix in ("parquet", "sha256")}
    # Each part samples its own benchmark, through the stage's store; the scoring reads a model's parts in order.
    assert re.search(r"--benchmarks results/data/bench/chain_sum.parquet --output "
                     r"results/eval/generations/student/chain_sum.parquet --sample_store results/eval/generations/"
                     r"\.samples ", result.stdout), result.stdout[-3000:]
    assert ("--input results/eval/generations/teacher/chain_sum.parquet "
            "results/eval/generations/teacher/basic_arithmetic.parquet --output results/eval/teacher.parquet"
            in result.stdout), result.stdout[-3000:]


def test_a_benchmark_named_all_is_refused_since_it_names_every_benchmarks_part(tmp_path):
    bad = edited_config(TINY, tmp_path / "bad.yaml", **{"data.benchmarks": ["chain_sum", "all"]})
    result = snakemake(tmp_path, bad, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0 and "benchmarks" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_every_rule_writes_a_benchmark_file_for_the_cost_ledger():
    """The ledger (rules/cost.smk) reads each job's benchmark file; `all` runs nothing."""
    missing, checked = [], set()
    for path in sorted((REPO / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", path.read_text(), flags=re.M)
        for block in blocks[1:]:
            name = re.match(r"(?:rule|checkpoint) (\w+):", block).group(1)
            checked.add(name)
            if name != "all" and not re.search(r"^    benchmark:\n        \"benchmarks/", block, flags=re.M):
                missing.append(f"{path.name}: {name}")
    assert missing == [] and {"prepare_model", "teacher", "curate", "score_eval", "cost", "report", "all"} <= checked


def test_each_handler_is_declared_once_since_snakemake_keeps_only_the_last():
    """A second onstart would silently replace the first (the SLURM pending-job watch, the ledger's start)."""
    sources = [path.read_text() for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]]
    for handler in ("onstart", "onsuccess", "onerror"):
        assert sum(len(re.findall(rf"^{handler}:", text, flags=re.M)) for text in sources) <= 1, handler
    assert re.search(r"^onstart:\n    record_invocation_start\(\)\n    watch_slurm_jobs\(\)", sources[0], re.M)


def test_the_embedded_default_plans_one_teacher_shard_and_two_benchmarks(tmp_path):
    planned = planned_outputs(tmp_path, REPO / "config" / "config.yaml")
    assert planned["teacher"] == {"results/teacher/00000.parquet"}
    assert planned["prepare_data"] >= {"results/data/bench/chain_sum.parquet", "results/data/bench/basic_arithmetic.parquet"}


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
    planned = planned_outputs(tmp_path, REPO / "config" / "deepscaler.yaml")
    assert planned["fetch_dataset"] == {f"results/data/raw/{name}.parquet" for name in
                                        ("deepscaler", "aime24", "amc23", "math500", "minerva", "olympiadbench")}
    assert planned["teacher"] == {f"results/teacher/{k:05d}.parquet" for k in range(32)}
    assert "prepare_model" not in planned  # hub models, not embedded ones
    # eval.jobs: per_benchmark: one job per model and benchmark.
    assert planned["evaluate"] == {f"results/eval/generations/{model}/{bench}.parquet" for model in ("student", "sft")
                                   for bench in ("aime24", "amc23", "math500", "minerva", "olympiadbench")}


def test_the_deepscaler_run_plans_the_same_jobs_on_a_login_node_without_network_or_models(tmp_path):
    """A login node before anything is fetched: no network at all (a network namespace of its own, as root) and
    an empty Hugging Face cache. Planning reads no hub, and plans what it plans with both."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        if os.environ.get("CI") == "true":
            pytest.fail("a network namespace needs root and unshare; CI must run this test")
        pytest.skip("a network namespace needs root and unshare")
    config = REPO / "config" / "deepscaler.yaml"
    command, env = snakemake_command(tmp_path / "offline", config, "-n", "results/eval.json")
    env = {name: value for name, value in env.items() if not name.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(tmp_path / "empty hf home")
    offline = subprocess.run(["unshare", "-n", *command], cwd=checkout(), env=env, capture_output=True, text=True,
                             timeout=300)
    assert offline.returncode == 0, offline.stdout[-3000:] + offline.stderr[-3000:]
    assert outputs_of_plan(offline.stdout) == planned_outputs(tmp_path / "online", config)
    assert not (tmp_path / "empty hf home").exists()  # nothing was looked up, not even a cache folder made


@pytest.mark.parametrize("key, value, message", [
    ("train.run_name", "..", "run_name"),
    ("train.run_name", ".", "run_name"),
    ("train.run_name", "a/b", "run_name"),
    ("train.run_name", ".hidden", "run_name"),
    ("train.run_name", "", "run_name"),
    ("train.run_name", "student", "run_name"),
    ("train.run_name", "teacher", "run_name"),
    ("teacher.model", "embedded:..", "teacher.*model"),
    ("train.model", "embedded:../../etc", "train.*model"),
    ("data.benchmarks", ["chain_sum", ".."], "benchmarks"),
    ("eval.pass_k", [1, 4], r"eval.pass_k: \[4\] above eval.samples_per_problem \(2\)"),
    ("curate.reward_threshold", 7, "reward_threshold"),
    ("curate.reward_threshold", -0.5, "reward_threshold"),
    ("eval.models", ["student", "mystery"], "eval.models: mystery"),
    ("server.env", {"HF_TOKEN": "x"}, "HF_TOKEN looks like a secret"),
    ("server.args", ["--api-key", "x"], "--api-key holds a key"),
    ("server.args", ["--dtype", "float32", "--hf_token", "hf_x"], "server.args/server.env: --hf_token is not among"),
    ("server.args", ["--reasoning-parser", "deepseek_r1"], "server.args: --reasoning-parser reaches every managed "
                                                          "server, and eval.models has student, sft: a model that"),
    ("train.revision", "abc123", "train.revision: 'embedded:smollm2-135m-instruct' is not a Hugging Face id"),
    ("teacher.revision", "", "revision"),
    ("teacher.model", "/no/such/teacher", "teacher.model: the folder '/no/such/teacher' does not exist; give a folder"),
    ("train.model", ".", r"train.model: the folder '\.' has no config.json; give a folder that holds a Hugging Face"),
])
def test_names_and_values_that_would_break_a_run_are_refused_before_any_job_naming_the_key(tmp_path, key, value,
                                                                                            message):
    bad = edited_config(TINY, tmp_path / "bad.yaml", **{key: value})
    result = snakemake(tmp_path, bad, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), (result.stdout + result.stderr)[-2000:]
    assert not (tmp_path / "results").exists()


def test_an_embedded_teacher_with_an_endpoint_is_refused(tmp_path):
    bad = edited_config(TINY, tmp_path / "bad.yaml", **{"teacher.endpoint": "http://127.0.0.1:9/v1"})
    result = snakemake(tmp_path, bad, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0
    assert "with teacher.endpoint set, give the name that server serves" in result.stdout + result.stderr


# Shell metacharacters, quotes and a space: what a config value must survive on its way to a job's command line.
HOSTILE = "x y; touch CANARY1 $(touch CANARY2) `touch CANARY3` 'q\" z"
HOSTILE_URL = "http://127.0.0.1:9/v1;touch${IFS}CANARY4$(touch${IFS}CANARY5)"


def shell_commands(workdir, configfile, target):
    """Rule name -> the shell commands a dry run of `target` prints."""
    result = snakemake(workdir, configfile, "-n", "-p", target, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands, rule = {}, None
    for line in result.stdout.splitlines():
        match = JOB_HEADER.match(line.strip())
        if match:
            rule = match.group(1)
        elif line.startswith("Shell command: ") and rule:
            commands.setdefault(rule, []).append(line.removeprefix("Shell command: "))
    return commands


def argv_through_bash(command, cwd):
    """The arguments a job's command line gives its script, as bash parses it: `python` is swapped for a program
    that prints its argv, and the log redirection is dropped."""
    assert command.startswith("python ")
    command = command.split(" > ", 1)[0]
    printer = "python -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    out = subprocess.run(["bash", "-c", printer + command.removeprefix("python")], cwd=cwd, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_every_string_value_reaches_the_jobs_as_literal_text(tmp_path):
    (tmp_path / HOSTILE).write_text("{}")  # the deepspeed config, at a path with every hostile character
    config = edited_config(TINY, tmp_path / "hostile.yaml", **{
        "data.tasks": ["chain_sum", HOSTILE],
        "teacher.model": HOSTILE, "teacher.api": "completions", "teacher.tokenizer": HOSTILE,
        "teacher.revision": HOSTILE + "t", "train.model": HOSTILE, "train.deepspeed": HOSTILE,
        "train.revision": HOSTILE + "s",
        "server.args": ["--dtype", HOSTILE], "server.env": {"VLLM_CPU_KVCACHE_SPACE": HOSTILE},
        "eval.models": ["student", "sft", "remote"],
        "eval.endpoints": {"remote": {"endpoint": HOSTILE_URL, "model": HOSTILE, "api_key_env": "REMOTE_KEY"}},
    })
    commands = shell_commands(tmp_path, config, "results/eval.json")
    seen = {}
    for rule in ("prepare_data", "teacher", "train", "evaluate"):
        for command in commands[rule]:
            seen.setdefault(rule, []).append(argv_through_bash(command, tmp_path))
    assert HOSTILE in seen["prepare_data"][0]
    teacher = seen["teacher"][0]
    assert teacher[teacher.index("--model") + 1] == HOSTILE and teacher[teacher.index("--tokenizer") + 1] == HOSTILE
    assert f"--server_arg={HOSTILE}" in teacher and f"--server_env=VLLM_CPU_KVCACHE_SPACE={HOSTILE}" in teacher
    assert teacher[teacher.index("--revision") + 1] == HOSTILE + "t"
    train = seen["train"][0]
    assert train[train.index("--model") + 1] == HOSTILE and train[train.index("--deepspeed") + 1].endswith(HOSTILE)
    assert train[train.index("--revision") + 1] == HOSTILE + "s"
    # The student's evaluation loads the pinned student; the SFT model and the user's server's have no pin.
    revisions = {argv[argv.index("--label") + 1]: argv[argv.index("--revision") + 1] if "--revision" in argv else None
                 for argv in seen["evaluate"]}
    assert revisions == {"student": HOSTILE + "s", "sft": None, "remote": None}
    remote = next(argv for argv in seen["evaluate"] if "remote" in argv)
    assert remote[remote.index("--model") + 1] == HOSTILE and f"--endpoint={HOSTILE_URL}" in remote
    assert "--api_key_env=REMOTE_KEY" in remote
    assert not list(tmp_path.glob("CANARY*"))


def test_hub_dataset_fields_reach_the_fetch_job_as_literal_text(tmp_path):
    spec = {"hub": HOSTILE, "split": HOSTILE, "subset": HOSTILE, "revision": HOSTILE}
    config = edited_config(TINY, tmp_path / "hostile.yaml", **{
        "data.source": "hub", "data.train_sets": ["mine"], "data.benchmarks": ["mine_eval"],
        "data.datasets": {"mine": spec, "mine_eval": spec}, "eval.benchmarks": None})
    commands = shell_commands(tmp_path, config, "results/data/problems.parquet")
    for command in commands["fetch_dataset"]:
        argv = argv_through_bash(command, tmp_path)
        assert all(argv[argv.index(f"--{key}") + 1] == HOSTILE for key in spec)
    prepare = argv_through_bash(commands["prepare_data"][0], tmp_path)
    assert json.loads(prepare[prepare.index("--datasets") + 1])["mine"]["revision"] == HOSTILE
    assert not list(tmp_path.glob("CANARY*"))
