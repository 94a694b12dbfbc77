"""A cluster's run of hub models, on one machine: the models fetched once by the fetch_model rule from a login node's
Hugging Face cache, then the teacher, train and evaluate jobs run with no network at all (a network namespace of
their own with only loopback, as root) and an empty Hugging Face cache, which proves that no job reaches out or
reads a shared cache. The hub models are the embedded student, laid out as the hub cache holds a download
(helpers/hubmodels.py), under a hub id and a pinned commit, which stay the model's identity in every record.

Needs root and unshare: skipped without them, failed under CI=true."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from conftest import TINY, converted_model
from helpers.hubmodels import DECOYS, model_files, write_hub_cache
from helpers.workflow import checkout, edited_config, outputs_of_plan, ran_jobs, snakemake_command
from mathsft import hub_models

pytestmark = pytest.mark.e2e
HUB = "mathsft-test/smollm2-135m-instruct"
COMMIT = "5f0c3e2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e"
STORE = "results/hub_models/mathsft-test--smollm2-135m-instruct"
TEACHER = "mathsft-test/teacher-135m"  # the same weights under another id: its pin can move alone
TEACHER_STORE = "results/hub_models/mathsft-test--teacher-135m"
MOVED = "6a1d4f3b0c9e8d7f6a5b4c3d2e1f0a9b8c7d6e5f"


def without_network(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own: loopback only (its vLLM servers listen there)."""
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


def run(workdir, config, hf_home, *args, timeout=1800) -> subprocess.CompletedProcess:
    """Snakemake with the local profile, without network, with `hf_home` as the Hugging Face cache."""
    command, env = snakemake_command(workdir, config, *args)
    env = {name: value for name, value in env.items() if not name.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(hf_home)
    return subprocess.run(without_network(command), cwd=checkout(), env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        if os.environ.get("CI") == "true":
            pytest.fail("a network namespace needs root, unshare and ip; CI must run this test")
        pytest.skip("a network namespace needs root, unshare and ip")
    top = tmp_path_factory.mktemp("offline")
    login_cache = top / "login node hf"
    files = model_files(converted_model("smollm2-135m-instruct")) | DECOYS
    write_hub_cache(login_cache / "hub", HUB, COMMIT, files)
    write_hub_cache(login_cache / "hub", TEACHER, COMMIT, files)
    write_hub_cache(login_cache / "hub", TEACHER, MOVED, files)  # a later commit, the same weights
    # One shard, the student evaluated, every trace kept: the least that runs each rule that loads a model.
    config = edited_config(TINY, top / "hub.yaml", **{
        "teacher.model": TEACHER, "teacher.revision": COMMIT, "train.model": HUB, "train.revision": COMMIT,
        "data.num_samples": 4, "curate.reward_threshold": 0.0, "eval.models": ["student"]})
    workdir, compute_cache = top / "run", top / "compute node hf"
    # The cost ledger reads every job's benchmark file, the fetches' too.
    targets = ("results/eval.json", "results/train/sft/summary.json", "results/cost.json")
    moved = edited_config(config, top / "moved.yaml", **{"teacher.revision": MOVED})
    steps = {"plan before the fetch": (config, compute_cache, "-n", *targets),
             "fetch": (config, login_cache, STORE, TEACHER_STORE),
             "plan after the fetch": (config, compute_cache, "-n", *targets),
             "run": (config, compute_cache, *targets),
             # The student's copy lost (deleted, or a run folder copied without it), fetched again as the jobs' error
             # says (as the target: Snakemake remakes no deleted output that nothing out of date needs).
             "fetched again": (config, login_cache, STORE, *targets),
             "teacher's revision moved": (moved, login_cache, *targets)}
    runs = {}
    for name, (configfile, hf_home, *args) in steps.items():
        if name == "fetched again":
            shutil.rmtree(workdir / STORE)
        started = time.monotonic()
        runs[name] = run(workdir, configfile, hf_home, *args)
        print(f"\n{name}: {time.monotonic() - started:.0f} s")
        assert runs[name].returncode == 0, f"{name}:\n{runs[name].stdout[-4000:]}\n{runs[name].stderr[-6000:]}"
    return workdir, compute_cache, runs


def test_the_fetch_rule_fetches_the_model_once_with_no_network_from_the_login_nodes_cache(offline_run):
    workdir, _, runs = offline_run
    assert ran_jobs(runs["fetch"]) == {"fetch_model": 2}
    store = workdir / STORE
    # (Snakemake marks a directory output with its own .snakemake_timestamp.)
    fetched = [name for name in model_files(converted_model("smollm2-135m-instruct")) if hub_models.wanted(name)]
    assert "model.safetensors" in fetched and "SOURCE.txt" not in fetched  # the converter's note is no model file
    assert sorted(path.name for path in store.iterdir() if path.name != ".snakemake_timestamp") == sorted(
        [*fetched, "SHA256SUMS", "origin.json"])
    assert json.loads((store / "origin.json").read_text())["commit"] == COMMIT


def test_after_the_fetch_the_plan_holds_the_same_jobs_but_the_fetch(offline_run):
    _, _, runs = offline_run
    before, after = outputs_of_plan(runs["plan before the fetch"].stdout), outputs_of_plan(runs["plan after the fetch"].stdout)
    assert before.pop("fetch_model") == {STORE, TEACHER_STORE}
    assert after == before


def test_teacher_train_and_evaluate_ran_offline_from_the_store_and_read_no_hugging_face_cache(offline_run):
    workdir, compute_cache, runs = offline_run
    ran = ran_jobs(runs["run"])
    assert {"teacher", "train", "evaluate"} <= set(ran) and "fetch_model" not in ran
    ledger = json.loads((workdir / "results" / "cost.json").read_text())
    fetches = [job for stage in ledger["stages"] for job in stage["jobs"] if job["name"].startswith("fetch_model")]
    assert sorted(job["name"] for job in fetches) == [f"fetch_model {HUB}", f"fetch_model {TEACHER}"]
    assert all(job["measured"] for job in fetches)
    # Nothing was downloaded into, or read from, a Hugging Face cache on the "compute node".
    assert not any(compute_cache.rglob("models--*"))
    server_log = (workdir / "logs" / "teacher" / "00000.server.log").read_text()
    assert TEACHER_STORE in server_log  # the teacher's vLLM server loaded the fetched folder


def test_records_and_eval_json_name_the_hub_id_and_revision_not_the_folder(offline_run):
    workdir, _, _ = offline_run
    samples = pq.read_table(workdir / "results" / "teacher" / "00000.parquet").to_pylist()
    assert samples and {row["model"] for row in samples} == {TEACHER}
    evaluated = pq.read_table(workdir / "results" / "eval" / "generations" / "student" / "all.parquet").to_pylist()
    assert {row["model"] for row in evaluated} == {HUB}
    document = json.loads((workdir / "results" / "eval.json").read_text())
    assert document["models"]["student"]["model"] == HUB
    summary = json.loads((workdir / "results" / "train" / "sft" / "summary.json").read_text())
    assert (summary["config"]["model"], summary["config"]["revision"]) == (HUB, COMMIT)


def test_fetching_the_same_revision_again_samples_and_trains_nothing_again(offline_run):
    """The jobs that load the model take the folder as ancient(), with the model's hub id and revision as params:
    once the checkpoint has run, none of them reruns. The student's scoring, which comes after its evaluation,
    does (seconds, the same scores, and nothing after it): Snakemake decides again only the jobs that depend on the
    checkpoint that ran, and keeps the others' first decision, made while the evaluation had a missing input."""
    _, _, runs = offline_run
    assert ran_jobs(runs["fetched again"]) == {"fetch_model": 1, "score_eval": 1, "cost": 1}


def test_moving_the_teachers_revision_refetches_it_and_samples_the_teacher_again_in_the_same_run(offline_run):
    """Snakemake weighs no params of a job downstream of one that runs, and skips it where the files between are
    ancient(): without fetch_model being a checkpoint, after which the jobs are decided again, this run would
    refetch and leave the old revision's samples in place until the next one. (The same weights sample the same
    traces here; the curated set still changes, by the latencies it keeps, so training reruns; eval.json's
    config_hash names the revision.)"""
    workdir, _, runs = offline_run
    ran = ran_jobs(runs["teacher's revision moved"])
    assert ran == {"fetch_model": 1, "teacher": 1, "reward": 1, "curate": 1, "train": 1, "eval_summary": 1, "cost": 1}
    assert json.loads((workdir / TEACHER_STORE / "origin.json").read_text())["revision"] == MOVED
    assert json.loads((workdir / STORE / "origin.json").read_text())["revision"] == COMMIT
