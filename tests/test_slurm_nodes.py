"""Training across two SLURM nodes, on one machine: a two-node test cluster (tests/slurm/cluster.sh with
SLURM_TEST_NODES=2: each slurmd in a network namespace of its own, with its own address on a bridge, host name and
/etc/hosts), and the tiny config's training through profiles/slurm with train.nodes: 2. One sbatch over both
nodes; srun starts one torchrun per node, which meet at the first node (c10d) and train with DeepSpeed over gloo
on the CPU. Compared with a one-node run of the same two processes and global batch; then cancelled with scancel
after its first checkpoint and run again, which resumes on both nodes and ends with the same model. Last, a node
lost while teacher shards run on both (cluster.sh lose): SLURM requeues its job, which resumes the shard from its
sample store on the other node, with no sample lost or drawn twice.

The curated data is the finished local run's (conftest.py's finished_run). Needs root and the packages of
tests/system_packages.sh: skipped without them, failed under CI=true."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import TINY, store_file
from helpers.slurm import CLUSTER_SCRIPT, cluster_jobs, job_env, link_models, slurm_cluster, slurm_snakemake
from helpers.workflow import edited_config

pytestmark = pytest.mark.e2e
# Two processes, a global batch of 4 over 7 traces: 2 steps an epoch, 6 in all; one checkpoint, after step 3 (in
# the middle of the second epoch; the last step saves none): each checkpoint writes the model and both ranks'
# optimizer states, which a checkpoint after every step wrote five times a training.
TRAINING = {"train.launcher": "srun", "train.epochs": 3, "train.checkpoint_every": 3}
TWO_NODES = {**TRAINING, "train.nodes": 2, "train.gpus": 1}
ONE_NODE = {**TRAINING, "train.nodes": 1, "train.gpus": 2}
ONLY_TRAIN = ("results/models/sft", "--allowed-rules", "train")  # the target first: --allowed-rules takes a list


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm_nodes"), nodes=2) as state:
        yield state


def training_folder(workdir: Path, finished_run) -> Path:
    """A run folder holding the finished run's curated data and the student: only `train` is left to run."""
    (workdir / "results" / "sft").mkdir(parents=True)
    # All of curate's outputs: train reaches its data through the curate checkpoint, which must look finished.
    for name in ("train.parquet", "val.parquet", "sha256sums", "stats.json"):
        (workdir / "results" / "sft" / name).write_bytes((finished_run[0] / "results" / "sft" / name).read_bytes())
    link_models(workdir, ("smollm2-135m-instruct",))
    return workdir


def train(workdir: Path, config: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([*slurm_snakemake(workdir, config), "--retries", "0", *ONLY_TRAIN], capture_output=True,
                            text=True, env=job_env(), timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + train_log(workdir)[-3000:]
    return result


def train_log(workdir: Path) -> str:
    log = workdir / "logs" / "train" / "sft.log"
    return log.read_text() if log.is_file() else ""


def losses(workdir: Path) -> list[tuple]:
    steps = [json.loads(line) for line in (workdir / "results" / "train" / "sft" / "metrics.jsonl").read_text().splitlines()]
    return [(s["step"], s.get("loss"), s.get("grad_norm"), s.get("val_loss")) for s in steps]


def close(a: list[tuple], b: list[tuple], rel: float) -> bool:
    """The same steps, with the same values missing and the others equal within `rel`."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(u == v if u is None or v is None else u == pytest.approx(v, rel=rel)
                                 for u, v in zip(x, y)) for x, y in zip(a, b))


def weights(workdir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(workdir / "results" / "models" / "sft" / "model.safetensors")


def train_jobs(since: set[str]) -> list[dict[str, str]]:
    return [job for job in cluster_jobs() if job["JobId"] not in since and job["rule"] == "train"]


def ranks_by_node(workdir: Path) -> dict[str, str]:
    """Where each rank ran, from the trainer's first line (mathsft.train): rank -> host name."""
    return dict(re.findall(r"INFO rank (\d+) of \d+ on (\S+)", train_log(workdir)))


@pytest.fixture(scope="module")
def trainings(two_nodes, finished_run, tmp_path_factory):
    """The same training on two nodes (one process each) and on one node (two processes): workdir and its job."""
    runs = {}
    for name, edits in (("two nodes", TWO_NODES), ("one node", ONE_NODE)):
        workdir = training_folder(tmp_path_factory.mktemp(name.replace(" ", "_")), finished_run)
        before = {job["JobId"] for job in cluster_jobs()}
        started = time.monotonic()
        train(workdir, edited_config(TINY, workdir / "config.yaml", **edits))
        (job,) = train_jobs(before)
        runs[name] = (workdir, job)
        print(f"\n{name}: trained in {time.monotonic() - started:.0f} s; SLURM job {job['JobId']} on {job['NodeList']}")
    return runs


def test_the_two_node_cluster_has_two_nodes_with_addresses_and_names_of_their_own(two_nodes):
    nodes = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %t"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    assert [line.split() for line in nodes if line] == [["node1", "idle"], ["node2", "idle"]]
    script = two_nodes / "where.sh"
    script.write_text("#!/bin/sh\nsrun --nodes=2 --ntasks=2 --ntasks-per-node=1 sh -c 'echo $(hostname) "
                      "$(hostname -I) $(getent hosts node1 | cut -d\" \" -f1)'\n")
    out = two_nodes / "where.out"
    subprocess.run(["sbatch", "--nodes=2", "--wait", f"--output={out}", str(script)], check=True, timeout=120,
                   env=job_env(), capture_output=True)
    # Each task on its own node, with its node's name and address; both find node1 at the same address.
    assert sorted(line.split() for line in out.read_text().splitlines()) == [
        ["node1", "10.77.0.11", "10.77.0.11"], ["node2", "10.77.0.12", "10.77.0.11"]]


def test_training_runs_across_both_nodes_from_one_sbatch(trainings, two_nodes):
    workdir, job = trainings["two nodes"]
    assert (job["NumNodes"], job["NodeList"], job["JobState"]) == ("2", "node[1-2]", "COMPLETED")
    assert job["TresPerNode"] == "gres:gpu:1"
    # The executor's step (0) on the first node; the launcher's srun (step 1) on both: one torchrun per node.
    for node in ("node1", "node2"):
        steps = re.findall(rf"launch task StepId={job['JobId']}\.(\d+)", (two_nodes / f"slurmd-{node}.log").read_text())
        assert steps == (["0", "1"] if node == "node1" else ["1"]), (node, steps)
    assert ranks_by_node(workdir) == {"0": "node1", "1": "node2"}
    # Each rank says where it runs; only the first logs the steps: one line each, not one per rank.
    assert re.findall(r"INFO step (\d+)/6 ", train_log(workdir)) == ["1", "2", "3", "4", "5", "6"]


def test_two_nodes_train_as_one_node_with_the_same_processes_and_batch(trainings):
    (two, _), (one, one_job) = trainings["two nodes"], trainings["one node"]
    assert one_job["NumNodes"] == "1" and set(ranks_by_node(one).values()) == {one_job["NodeList"]}
    steps = losses(two)
    assert [step for step, loss, *_ in steps if loss is not None] == [1, 2, 3, 4, 5, 6]
    # The same losses, gradient norms and validation losses (gloo sums in the same order on one node or two)...
    assert close(steps, losses(one), rel=1e-6), (steps, losses(one))
    # ...and the same exported model. One rank writes metrics and the export: one line per step, one model.
    a, b = weights(two), weights(one)
    assert a.keys() == b.keys() and all((a[name] - b[name]).abs().max() < 1e-6 for name in a)
    for workdir in (two, one):
        summary = json.loads((workdir / "results" / "train" / "sft" / "summary.json").read_text())
        assert summary["steps"] == 6 and summary["resumed_from_step"] == 0
        assert not (workdir / "results" / "train" / "sft" / "checkpoints").exists()  # removed once finished


def test_a_two_node_training_cancelled_after_a_checkpoint_resumes_on_both_nodes_to_the_same_model(
        trainings, finished_run, tmp_path):
    workdir = training_folder(tmp_path / "run", finished_run)
    config = edited_config(TINY, tmp_path / "config.yaml", **TWO_NODES)
    checkpoints = workdir / "results" / "train" / "sft" / "checkpoints"
    before = {job["JobId"] for job in cluster_jobs()}
    log = tmp_path / "cancelled.log"
    with log.open("w") as out:
        process = subprocess.Popen([*slurm_snakemake(workdir, config), "--retries", "0", *ONLY_TRAIN], stdout=out,
                                   stderr=subprocess.STDOUT, env=job_env())
        deadline = time.monotonic() + 600
        while not (checkpoints / "latest").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (checkpoints / "latest").is_file(), log.read_text()[-3000:] + train_log(workdir)[-3000:]
        (job,) = train_jobs(before)
        subprocess.run(["scancel", job["JobId"]], check=True)
        process.wait(timeout=300)
    assert process.returncode != 0 and f"SLURM-job '{job['JobId']}' failed" in log.read_text()
    saved = int((checkpoints / "latest").read_text().removeprefix("step"))
    assert saved == 3 and not (workdir / "results" / "models" / "sft").exists()
    # DeepSpeed ZeRO-2: the model states once (rank 0), each rank's optimizer shard beside them.
    assert sorted(path.name for path in (checkpoints / f"step{saved:08d}").iterdir()) == [
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    before = {job["JobId"] for job in cluster_jobs()}
    train(workdir, config)
    (rerun,) = train_jobs(before)
    assert rerun["NodeList"] == "node[1-2]"
    # Each rank says where it resumed from (the second naming its rank; it logs no step line).
    resumed = re.findall(r"INFO (rank 1: )?resumed from \S+ at step (\d+)", train_log(workdir))
    assert sorted(resumed) == [("", str(saved)), ("rank 1: ", str(saved))], resumed
    assert ranks_by_node(workdir) == {"0": "node1", "1": "node2"}
    summary = json.loads((workdir / "results" / "train" / "sft" / "summary.json").read_text())
    assert (summary["resumed_from_step"], summary["steps"]) == (saved, 6)
    whole, _ = trainings["two nodes"]
    assert close(losses(workdir), losses(whole), rel=1e-5), (losses(workdir), losses(whole))
    a, b = weights(workdir), weights(whole)
    assert a.keys() == b.keys() and all((a[name] - b[name]).abs().max() < 1e-5 for name in a)


def stored_samples(path: Path) -> int:
    """Whole sample lines in a journal: its first line is the header (mathsft.journal), and a line a killed job
    left without its newline is torn, skipped when the journal is read."""
    return max(len(path.read_bytes().split(b"\n")[:-1]) - 1, 0) if path.is_file() else 0


def test_a_node_lost_while_teacher_shards_run_on_both_nodes_loses_and_repeats_no_sample(two_nodes, finished_run,
                                                                                        tmp_path):
    """Last in this module: node2 stays down. The tiny config's two teacher shards, one job on each node (each
    takes a node's two CPUs); once the job on node2 has stored a sample, node2's machine is lost (cluster.sh lose:
    every process in its namespace killed, the node set DOWN). The run goes on with the profile's settings."""
    workdir = tmp_path / "run"
    link_models(workdir)
    config = edited_config(TINY, tmp_path / "config.yaml", **{"teacher.gpus": 1})
    shards = [workdir / "results" / "teacher" / f"{shard}.parquet" for shard in ("00000", "00001")]
    before = {job["JobId"] for job in cluster_jobs()}
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen([*slurm_snakemake(workdir, config), *(str(s.relative_to(workdir)) for s in shards)],
                                   stdout=out, stderr=subprocess.STDOUT, env=job_env())
        deadline, lost = time.monotonic() + 900, None
        while lost is None and process.poll() is None and time.monotonic() < deadline:
            running = {job["NodeList"]: job for job in cluster_jobs()
                       if job["JobId"] not in before and job["rule"] == "teacher" and job["JobState"] == "RUNNING"}
            if set(running) == {"node1", "node2"}:
                shard = running["node2"]["Comment"].rsplit("_", 1)[1]
                if stored_samples(store_file(workdir / "results" / "teacher" / f"{shard}.parquet")) >= 1:
                    lost = running["node2"]
            time.sleep(0.2)
        assert lost is not None, log.read_text()[-5000:]
        result = subprocess.run(["bash", str(CLUSTER_SCRIPT), "lose", str(two_nodes), "node2"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        journal = store_file(workdir / "results" / "teacher" / f"{shard}.parquet")
        stored_when_lost = stored_samples(journal)
        print(f"\nnode2 lost with shard {shard}'s job {lost['JobId']} running there, {stored_when_lost} samples stored")
        process.wait(timeout=1200)
    output = log.read_text()
    assert process.returncode == 0, output[-5000:]
    history = [job for job in cluster_jobs() if job["JobId"] not in before and job["rule"] == "teacher"]
    print("\n".join(" ".join(f"{key}={job.get(key)}" for key in ("JobId", "Comment", "JobState", "Restarts",
                                                                  "NodeList", "Reason")) for job in history))
    # SLURM requeued the lost job (JobRequeue=1, its default, for a batch job on a failed node): the same job id,
    # restarted once, finished on node1, which Snakemake's status checks (squeue) followed as one job.
    (again,) = [job for job in history if job["Comment"] == lost["Comment"]]
    assert (again["JobId"], again["Restarts"], again["JobState"], again["NodeList"]) == (
        lost["JobId"], "1", "COMPLETED", "node1"), history
    rerun_log = (workdir / "logs" / "teacher" / f"{shard}.log").read_text()
    resumed = [int(n) for n in re.findall(rf"journal \S+/{shard}\.jsonl: (\d+) finished samples", rerun_log)]
    assert resumed and resumed[0] >= stored_when_lost >= 1, rerun_log[-3000:]
    # No sample lost or repeated: each shard holds every (problem, sample index) once, the same samples as the
    # local run's (the same seeds), whatever node drew them.
    local = finished_run[0] / "results" / "teacher"
    for path in shards:
        rows = [(r["problem_id"], r["sample_index"], r["seed"], r["response"])
                for r in pq.read_table(path).to_pylist()]
        assert len(rows) == 8 and len({row[:2] for row in rows}) == 8, path
        assert sorted(rows) == sorted((r["problem_id"], r["sample_index"], r["seed"], r["response"])
                                      for r in pq.read_table(local / path.name).to_pylist()), path
