"""profiles/slurm against a real single-node SLURM cluster (Debian's slurmctld, slurmd and munge, brought up
before this module's first cluster test and torn down after its last by tests/slurm/cluster.sh): the tiny
config end to end through sbatch with the resources the profile asks for, the SFT model alone evaluated (the
student's and the teacher's evaluations are the same rule and job kind, run by the local whole run); a job cancelled with scancel,
reported, and finished by the rerun; a job that fails once and is submitted again; the training launch
(srun + torchrun) run for real on one node, and submitted for two nodes and read back from the controller;
a job no node can take (reported with SLURM's reason within a minute, and cancelled, or refused by sbatch) and
one waiting for a drained node (reported, then run). Every result of that run is compared with the local run of
the same config (finished_run, conftest.py): two whole runs with the same seeds.

Needs root and the packages of tests/system_packages.sh: skipped without them, failed under CI=true."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from helpers.processes import vllm_servers
from helpers.slurm import PROFILE, cluster_jobs, job_env, link_models, slurm_cluster, slurm_snakemake
from helpers.workflow import REPO, edited_config

pytestmark = pytest.mark.e2e
TINY = REPO / "tests" / "configs" / "tiny.yaml"
# The tiny config's cluster jobs: fetch_dataset and report are local rules, and the models are copied in.
GPU_RULES = {"teacher", "evaluate", "train"}
CPU_RULES = {"prepare_data", "reward", "curate", "score_eval", "eval_summary"}
# Every job on GPUs: the node's fake GPUs make the requests schedulable; the jobs themselves see no CUDA.
ONE_GPU_EACH = {"teacher.gpus": 1, "eval.gpus": 1, "train.gpus": 1, "train.launcher": "srun"}
# The models the SLURM run evaluates: every stage runs, each evaluation is one more server start and sampling.
EVALUATED = ["sft"]
INJECTED = "injected failure: the first curate attempt"


def megabytes(value: str) -> int:
    """scontrol's memory (32000M, 125G) in MB."""
    return int(float(value[:-1]) * {"M": 1, "G": 1024, "T": 1024 ** 2}[value[-1]])


def minutes(value: str) -> int:
    """scontrol's time limit ([days-]hours:minutes:seconds) in minutes."""
    days, _, clock = value.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return (int(days) if days else 0) * 1440 + hours * 60 + mins


def profile_resources(rule: str) -> dict[str, str]:
    """The resources profiles/slurm gives a rule: its default-resources, then the rule's set-resources."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    resources = dict(item.split("=", 1) for item in profile["default-resources"])
    for item in profile["set-resources"]:
        name, assignment = item.split(":", 1)
        if name == rule:
            key, value = assignment.split("=", 1)
            resources[key] = value
    return resources


def shell_command(output: str, script: str) -> str:
    """The shell command Snakemake printed (-p) for the job that runs `script` (a job's SLURM log has it twice:
    from the snakemake that srun starts, and from the one that runs the rule)."""
    commands = {line.split(":", 1)[1].strip() for line in output.splitlines()
                if line.startswith("Shell command:") and script in line}
    assert len(commands) == 1, output[-3000:]
    return commands.pop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The single-node cluster: its state folder (slurm.conf, the daemons' logs), down again after the module."""
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as state:
        yield state


@dataclass
class SlurmRun:
    workdir: Path
    cancelled_job: str  # SLURM job id of the teacher job cancelled in the first run
    cancelled_shard: str
    first: subprocess.CompletedProcess  # stopped by the cancelled job
    servers_after_first: list[str]  # vLLM servers still running once the first run had ended
    second: subprocess.CompletedProcess  # the rerun that finishes the work
    jobs: list[dict[str, str]]  # every job of both runs, from scontrol
    seconds: dict[str, float]


def fail_first_curate(bin_dir: Path, marker: Path) -> Path:
    """A `python` first on the jobs' PATH that fails the first curate job before it starts, then is the venv's
    python: a fault the real components cannot be made to produce on demand."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "python"
    shim.write_text(f"""#!/bin/sh
case "$1" in
*/curate_sft.py)
    if [ ! -e {marker} ]; then
        touch {marker}
        echo "{INJECTED}" >&2
        exit 3
    fi ;;
esac
exec {sys.executable} "$@"
""")
    shim.chmod(0o755)
    return bin_dir


def cancel_first_teacher_job(process: subprocess.Popen, workdir: Path, log: Path, timeout: float = 600) -> tuple[str, str]:
    """scancel the first teacher job seen running, once its vLLM server is starting; its (job id, shard)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for job in cluster_jobs():
            if job["rule"] == "teacher" and job["JobState"] == "RUNNING":
                shard = job["Comment"].rsplit("_", 1)[1]
                if (workdir / "logs" / "teacher" / f"{shard}.server.log").exists():
                    subprocess.run(["scancel", job["JobId"]], check=True)
                    return job["JobId"], shard
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"no teacher job ran within {timeout} s:\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The tiny config through profiles/slurm, one GPU per GPU job, in two runs: the first with no retries,
    stopped by a teacher job cancelled while its server starts; then the profile's own run (retries,
    rerun-incomplete), whose first curate attempt fails (injected)."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    link_models(workdir)
    config = edited_config(TINY, workdir / "slurm.yaml", **ONE_GPU_EACH, **{"eval.models": EVALUATED})
    env = job_env(fail_first_curate(workdir / "fault" / "bin", workdir / "fault" / "curate-failed-once"))
    command = slurm_snakemake(workdir, config)
    seconds = {}

    started = time.monotonic()
    log = workdir / "first_run.log"
    with log.open("w") as out:
        process = subprocess.Popen([*command, "--retries", "0"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=workdir)
        cancelled_job, shard = cancel_first_teacher_job(process, workdir, log)
        try:
            process.wait(timeout=1200)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    first = subprocess.CompletedProcess(process.args, process.returncode, log.read_text(), "")
    seconds["first run (stopped by scancel)"] = time.monotonic() - started
    servers = vllm_servers(workdir)

    started = time.monotonic()
    second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir, timeout=1800)
    seconds["second run (finishes)"] = time.monotonic() - started
    print(f"\nSLURM runs: {', '.join(f'{name} {value:.0f} s' for name, value in seconds.items())}")
    if second.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log"))
                         if "server" not in p.name)
        pytest.fail(f"the SLURM run failed:\n{second.stdout[-6000:]}\n{second.stderr[-6000:]}\n{logs}")
    return SlurmRun(workdir, cancelled_job, shard, first, servers, second, cluster_jobs(), seconds)


def test_the_tiny_pipeline_runs_through_sbatch_and_writes_eval_json(slurm_run):
    workdir = slurm_run.workdir
    document = json.loads((workdir / "results" / "eval.json").read_text())
    assert list(document["models"]) == EVALUATED
    for model in document["models"].values():
        assert set(model["benchmarks"]) == {"chain_sum", "basic_arithmetic"}
    assert (workdir / "results" / "report.html").is_file()  # a local rule, run where snakemake runs


def test_the_cost_ledger_counts_gpu_seconds_for_the_gpu_jobs_through_slurm(slurm_run):
    """Benchmark files are written by the jobs on the cluster's node; a job that asked for a GPU costs wall x 1."""
    ledger = json.loads((slurm_run.workdir / "results" / "cost.json").read_text())
    jobs = {job["name"]: job for stage in ledger["stages"] if stage["stage"] != "models" for job in stage["jobs"]}
    assert all(job["measured"] for job in jobs.values()), [name for name, job in jobs.items() if not job["measured"]]
    for name, job in jobs.items():
        expected = job["wall_s"] if name.split()[0] in GPU_RULES else job["cpu_s"]
        assert (job["gpus"], job["device_s"]) == (int(name.split()[0] in GPU_RULES), expected), name
    assert ledger["totals"]["to_make_what_is_here"]["gpu_s"] > 0
    # The second run finished what the first (stopped by scancel) left: the data it made is not this run's cost.
    assert not jobs["prepare_data"]["this_invocation"] and jobs["eval_summary"]["this_invocation"]


def test_every_cluster_job_went_through_sbatch_with_the_profiles_resources(slurm_run):
    jobs = slurm_run.jobs
    per_rule = {rule: sum(job["rule"] == rule for job in jobs) for rule in GPU_RULES | CPU_RULES}
    # Two shards, one evaluated model; plus the cancelled teacher job and the curate attempt that failed.
    assert per_rule == {"prepare_data": 1, "teacher": 3, "reward": 2, "curate": 2, "train": 1, "evaluate": 1,
                        "score_eval": 1, "eval_summary": 1}
    assert {job["rule"] for job in jobs} == GPU_RULES | CPU_RULES  # no local rule, no prepare_model
    assert len({job["JobName"] for job in jobs}) == 2  # one SLURM run id per snakemake run
    for job in jobs:
        expected = profile_resources(job["rule"])
        where = f"{job['rule']} (SLURM job {job['JobId']})"
        assert megabytes(job["MinMemoryNode"]) == int(expected["mem_mb"]), where
        assert minutes(job["TimeLimit"]) == int(expected["runtime"]), where
        assert job["Partition"] == "debug" and job["NumNodes"] == "1", where  # the cluster's default partition
        assert 1 <= int(job["NumCPUs"]) <= os.cpu_count(), where
        if job["rule"] in GPU_RULES:
            assert job.get("TresPerJob") == "gres:gpu:1", where  # the rules' `gpu` resource: --gpus=1
        else:
            assert "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", ""), where
    finished = [job for job in jobs if job["JobId"] != slurm_run.cancelled_job and job["rule"] != "curate"]
    assert {job["JobState"] for job in finished} == {"COMPLETED"}


def test_a_job_that_fails_once_is_submitted_again_and_the_run_completes(slurm_run):
    first, second = [job for job in slurm_run.jobs if job["rule"] == "curate"]
    assert (first["JobState"], second["JobState"]) == ("FAILED", "COMPLETED")
    assert first["ExitCode"] != "0:0"
    output = slurm_run.second.stdout + slurm_run.second.stderr
    assert "Trying to restart job" in output
    assert INJECTED in output  # show-failed-logs: the failed attempt's log, in the run's output
    assert (slurm_run.workdir / "results" / "sft" / "train.parquet").is_file()


def test_a_cancelled_job_is_reported_and_the_rerun_finishes_its_work(slurm_run):
    job, shard = slurm_run.cancelled_job, slurm_run.cancelled_shard
    assert slurm_run.first.returncode != 0
    output = slurm_run.first.stdout
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in output
    assert re.search(rf"Error in rule teacher:.*?output: results/teacher/{shard}\.parquet", output, re.S)
    assert f"rule_teacher/{shard}/{job}.log" in output  # where the job's SLURM log is
    assert slurm_run.servers_after_first == []  # the cancelled job stopped its vLLM server
    cancelled = next(j for j in slurm_run.jobs if j["JobId"] == job)
    assert cancelled["JobState"] == "CANCELLED"
    rows = pq.read_table(slurm_run.workdir / "results" / "teacher" / f"{shard}.parquet").num_rows
    assert rows == 4 * 2  # the rerun sampled the whole shard: 4 problems x 2 samples


def test_training_runs_as_srun_and_torchrun_inside_its_job(slurm_run, cluster):
    (train,) = [job for job in slurm_run.jobs if job["rule"] == "train"]
    log = (slurm_run.workdir / ".snakemake" / "slurm_logs" / "rule_train" / "sft" / f"{train['JobId']}.log").read_text()
    command = shell_command(log, "train_sft.py")
    assert command.startswith("export SLURM_JOB_NODELIST=$(squeue --noheader --format=%N --jobs=${SLURM_JOB_ID:?"
                              "train.launcher srun runs in a SLURM job: use --profile profiles/slurm}); srun --overlap"
                              " --nodes=1 --ntasks=1 --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nnodes=1"
                              " --nproc_per_node=1 --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID")
    # Step 0 is the executor's srun running the job; step 1, inside it, is the launcher's srun.
    steps = re.findall(rf"launch task StepId={train['JobId']}\.(\d+)", (cluster / "slurmd.log").read_text())
    assert steps == ["0", "1"]
    summary = json.loads((slurm_run.workdir / "results" / "train" / "sft" / "summary.json").read_text())
    assert summary["steps"] > 0


def run_results(workdir: Path, labels: list[str]) -> dict[str, object]:
    """What a run computed, stage by stage, without its timings: teacher samples, curated rows, training
    losses and gradient norms, the exported weights, and the evaluation samples and eval.json's metrics of the
    models `labels`."""
    import hashlib

    results = workdir / "results"
    samples = lambda paths: sorted(  # noqa: E731
        (r["problem_id"], r["sample_index"], r["seed"], r["response"], r["finish_reason"], r["completion_tokens"])
        for path in paths for r in pq.read_table(path).to_pylist())
    steps = [json.loads(line) for line in (results / "train" / "sft" / "metrics.jsonl").read_text().splitlines()]
    document = json.loads((results / "eval.json").read_text())
    return {
        "teacher samples": samples(sorted((results / "teacher").glob("*.parquet"))),
        "curated train rows": [(r["problem_id"], r["sample_index"], r["response"])
                               for r in pq.read_table(results / "sft" / "train.parquet").to_pylist()],
        "training losses": [(s["step"], s.get("loss"), s.get("grad_norm"), s.get("val_loss")) for s in steps],
        "exported weights": hashlib.sha256((results / "models" / "sft" / "model.safetensors").read_bytes()).hexdigest(),
        "evaluation samples": {label: samples([results / "eval" / f"{label}.parquet"]) for label in labels},
        "eval.json metrics": {label: document["models"][label]["benchmarks"] for label in labels},
    }


def test_a_second_whole_run_with_the_same_seeds_reproduces_every_result(slurm_run, finished_run):
    """Two whole runs of the tiny config with the same seeds: the local one (finished_run) and this one,
    through SLURM, with a teacher job cancelled and sampled again and a curate job failed and retried. Every
    seeded stage gives the same result: vLLM sampling, scoring, curation, DeepSpeed training on CPU (the same
    weights, byte for byte) and the SFT model's evaluation, so its eval.json metrics are identical."""
    local, cluster_run = run_results(finished_run[0], EVALUATED), run_results(slurm_run.workdir, EVALUATED)
    assert local["teacher samples"] and local["curated train rows"] and local["training losses"]
    differ = [name for name in local if local[name] != cluster_run[name]]
    assert differ == [], {name: (local[name], cluster_run[name]) for name in differ}


def test_two_node_training_asks_for_two_nodes_and_gpus_per_node(slurm_run, cluster, tmp_path):
    """The 2-node x 8-GPU launch command from a dry run, and its submission read back from the controller
    (which accepts it and keeps it pending: this cluster has one node), then cancelled."""
    two_nodes = edited_config(TINY, tmp_path / "two_nodes.yaml", **{"train.gpus": 8, "train.nodes": 2})
    one_process = edited_config(TINY, tmp_path / "one_process.yaml", **{"train.gpus": 8, "train.launcher": "python"})
    workdir = tmp_path / "run"
    (workdir / "results" / "sft").mkdir(parents=True)
    # All of curate's outputs: train reaches its data through the curate checkpoint, which must look finished.
    for name in ("train.parquet", "val.parquet", "sha256sums", "stats.json"):
        os.link(slurm_run.workdir / "results" / "sft" / name, workdir / "results" / "sft" / name)
    link_models(workdir, ("smollm2-135m-instruct",))
    only_train = ("results/models/sft", "--allowed-rules", "train")  # the target first: --allowed-rules takes a list

    dry = {}
    for name, config in (("two_nodes", two_nodes), ("one_process", one_process)):
        result = subprocess.run([*slurm_snakemake(workdir, config), "-n", *only_train], capture_output=True,
                                text=True, env=job_env(), timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        dry[name] = shell_command(result.stdout, "train_sft.py")
    launcher = ("export SLURM_JOB_NODELIST=$(squeue --noheader --format=%N --jobs="
                "${SLURM_JOB_ID:?train.launcher srun runs in a SLURM job: use --profile profiles/slurm}); "
                "srun --overlap --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=1"
                " torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID"
                ' --rdzv_endpoint=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):$((29500 + SLURM_JOB_ID % 1000))')
    # The trainer's own arguments are those of a one-process run, flag for flag.
    assert dry["two_nodes"] == launcher + dry["one_process"].removeprefix("python")

    before = {job["JobId"] for job in cluster_jobs()}
    log = tmp_path / "submit.log"
    with log.open("w") as out:
        process = subprocess.Popen([*slurm_snakemake(workdir, two_nodes), "--retries", "0", "--verbose", *only_train],
                                   stdout=out, stderr=subprocess.STDOUT, env=job_env())
        deadline = time.monotonic() + 120
        submitted = []
        while not submitted and process.poll() is None and time.monotonic() < deadline:
            submitted = [job for job in cluster_jobs() if job["JobId"] not in before]
            time.sleep(0.5)
        assert submitted, log.read_text()[-3000:]
        (job,) = submitted
        # Two nodes on a one-node cluster never start (PartitionNodeLimit): mathsft.slurm's watch cancels such a
        # job too, in 15 s, so this scancel may find it cancelled already.
        subprocess.run(["scancel", job["JobId"]], check=False)
        process.wait(timeout=120)
    output = log.read_text()
    assert job["rule"] == "train" and job["JobState"] == "PENDING"
    assert job["NumNodes"].split("-")[0] == "2" and job["NumTasks"] == "2"  # one task (torchrun) per node
    assert job["TresPerNode"] == "gres:gpu:8" and "TresPerJob" not in job
    assert megabytes(job["MinMemoryNode"]) == int(profile_resources("train")["mem_mb"])  # per node
    assert minutes(job["TimeLimit"]) == int(profile_resources("train")["runtime"])
    (sbatch,) = [line for line in output.splitlines() if "sbatch call: sbatch" in line]
    assert " --nodes=2" in sbatch and " --gres=gpu:8" in sbatch and "--gpus=" not in sbatch
    assert process.returncode != 0 and f"SLURM-job '{job['JobId']}' failed" in output


def run_until(command: list[str], log: Path, pattern: str, seconds: float,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, float]:
    """Start `command` with its output in `log`; the seconds until its output matched `pattern`, which must
    happen within `seconds` (else the process is killed and the test fails). The process goes on."""
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or job_env())
    while True:
        exited = process.poll() is not None  # before reading: what it wrote before exiting is read
        if re.search(pattern, log.read_text()):
            return process, time.monotonic() - started
        if exited or time.monotonic() - started > seconds:
            process.kill()
            process.wait()
            pytest.fail(f"not within {seconds} s: {pattern}\n{log.read_text()[-5000:]}")
        time.sleep(0.2)


def finished(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    """The output of `process` once it has exited (killed after `timeout` s)."""
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return log.read_text()


def only_prepare_data(workdir: Path, *resources: str) -> list[str]:
    """The cheapest cluster job of the tiny config (no model, no server): prepare_data, with `resources` for it."""
    command = [*slurm_snakemake(workdir, TINY), "--retries", "0", "results/data/problems.parquet"]
    return command + (["--set-resources", *(f"prepare_data:{r}" for r in resources)] if resources else [])


@pytest.mark.parametrize(("resource", "reason"), [
    # More CPUs than the node has: SLURM queues the job (EnforcePartLimits=NO, its default) with this reason.
    ("cpus_per_task=64", r"SLURM job (\d+) of rule prepare_data: can never start, SLURM keeps it pending with "
                         r"reason PartitionConfig\. It asks for 64 CPUs"),
    # More memory than any node has: sbatch itself refuses the job.
    ("mem_mb=10000000", r"(?s)Error in rule prepare_data:\s+message: SLURM sbatch failed\. The error message was "
                        r"'sbatch: error: Memory specification can not be satisfied"),
], ids=["cpus-PartitionConfig", "memory-refused-by-sbatch"])
def test_a_job_no_node_can_take_is_reported_with_slurms_reason_within_a_minute(cluster, tmp_path, resource, reason):
    workdir = tmp_path / "run"
    workdir.mkdir()
    before = {job["JobId"] for job in cluster_jobs()}
    started = time.monotonic()
    process, seconds = run_until(only_prepare_data(workdir, resource), tmp_path / "run.log", reason, 60)
    output = finished(process, tmp_path / "run.log")
    print(f"\n{resource}: reported after {seconds:.1f} s, snakemake exited {process.returncode} after "
          f"{time.monotonic() - started:.1f} s")
    assert process.returncode != 0, output[-3000:]
    assert "Error in rule prepare_data" in output
    jobs = [job for job in cluster_jobs() if job["JobId"] not in before]
    if resource.startswith("cpus"):
        job_id = re.search(reason, output).group(1)
        assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in output  # Snakemake's own error
        assert [(job["JobId"], job["JobState"], job["NumCPUs"]) for job in jobs] == [(job_id, "CANCELLED", "64")]
    else:  # refused at submission: the controller keeps a record of it, failed, never queued
        assert [(job["JobState"], job["Reason"], job["rule"]) for job in jobs] == [("FAILED", "BadConstraints",
                                                                                    "prepare_data")]


def test_a_job_waiting_for_drained_nodes_is_reported_and_runs_once_they_return(cluster, tmp_path):
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    workdir = tmp_path / "run"
    workdir.mkdir()
    waiting = r"SLURM job (\d+) of rule prepare_data: waiting, SLURM keeps it pending with reason 'Nodes required"
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=test_slurm maintenance"],
                   check=True)
    started = time.monotonic()
    try:
        process, seconds = run_until(only_prepare_data(workdir), tmp_path / "run.log", waiting, 60)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=True)
    output = finished(process, tmp_path / "run.log")
    print(f"\nwaiting for a drained node: reported after {seconds:.1f} s, snakemake exited {process.returncode} "
          f"after {time.monotonic() - started:.1f} s")
    assert process.returncode == 0, output[-5000:]  # reported, not cancelled: it ran once the node was back
    assert (workdir / "results" / "data" / "problems.parquet").is_file()
    assert len(re.findall(waiting, output)) == 1


def fail_one_status_check(bin_dir: Path, failed: Path) -> Path:
    """A `scontrol` first on PATH whose first `show config` asked while a job is queued fails as a busy
    controller's does (the plugin asks at each status check), then is the real one: a fault the real controller
    cannot be made to produce on demand. `failed` is written when it has failed."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    scontrol, squeue = (shutil.which(name, path=job_env()["PATH"]) for name in ("scontrol", "squeue"))
    shim = bin_dir / "scontrol"
    shim.write_text(f"""#!/bin/sh
if [ "$1 $2" = "show config" ] && [ ! -e {failed} ] && [ -n "$({squeue} --noheader --format=%i)" ]; then
    touch {failed}
    echo "slurm_load_ctl_conf error: Socket timed out on send/recv operation" >&2
    exit 1
fi
exec {scontrol} "$@"
""")
    shim.chmod(0o755)
    return bin_dir


def test_a_job_whose_state_a_status_check_could_not_read_stays_followed_and_the_run_finishes(cluster, tmp_path):
    """One failed `scontrol show config` makes the plugin ask sacct, which this cluster (no accounting) refuses;
    the plugin then forgets the job, and without mathsft/slurm_status.py Snakemake waits for it forever."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    failed = tmp_path / "show-config-failed"
    log = tmp_path / "run.log"
    before = {job["JobId"] for job in cluster_jobs()}
    started = time.monotonic()
    process, _ = run_until(only_prepare_data(workdir), log, "has been submitted with SLURM jobid", 120,
                           env=job_env(fail_one_status_check(tmp_path / "bin", failed)))
    output = finished(process, log, timeout=240)
    print(f"\none status check failed: snakemake exited {process.returncode} after {time.monotonic() - started:.1f} s")
    assert process.returncode == 0, output[-5000:]
    assert failed.exists() and "Falling back to 'sacct' for status queries (MinJobAge=None" in output
    assert re.search(r"SLURM: the state of 1 job\(s\) \(\d+\) could not be read", output)
    assert "SLURM: job states read again after 1 failed status check(s)." in output
    assert [(job["rule"], job["JobState"]) for job in cluster_jobs() if job["JobId"] not in before] == [
        ("prepare_data", "COMPLETED")]
    assert (workdir / "results" / "data" / "problems.parquet").is_file()


def test_more_than_one_node_without_srun_is_refused_before_any_job(tmp_path):
    config = edited_config(TINY, tmp_path / "c.yaml", **{"train.nodes": 2, "train.launcher": "torchrun"})
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                             str(tmp_path), "--configfile", str(config), "-n", "results/eval.json"],
                            capture_output=True, text=True, env=job_env(), timeout=300)
    assert result.returncode != 0
    assert "train.launcher: torchrun starts one node; train.nodes: 2 needs srun" in result.stdout + result.stderr
