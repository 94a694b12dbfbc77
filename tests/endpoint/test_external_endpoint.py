"""The seed's way of working, through Snakemake: the teacher at a vLLM server the user started, under a served
name that differs from its model path and behind an API key. Requests name teacher.model, records keep the
model id and the served name apart, the teacher is evaluated through the same server, and no key is written
anywhere the run writes, Snakemake's own .snakemake/ included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from conftest import TINY
from endpoint.conftest import API_KEY, SERVED_NAME
from helpers.faultproxy import HOSTILE_REPLIES, FaultProxy
from helpers.workflow import checkout, edited_config, snakemake, snakemake_command

pytestmark = pytest.mark.e2e
OTHER_SECRET = "hf_mathsft_unrelated_token_41d0"  # a secret the user's environment holds: it must not leak either
KEY_ENV = {"MATHSFT_TEST_TEACHER_KEY": API_KEY, "HF_TOKEN": OTHER_SECRET}
TARGETS = ("results/teacher/00000.parquet", "results/teacher/00001.parquet", "results/eval/generations/teacher/all.parquet")


def _config(tmp_path, endpoint, model=SERVED_NAME, **edits):
    return edited_config(TINY, tmp_path / "external.yaml", **{
        "teacher.endpoint": endpoint.base_url, "teacher.model": model,
        "teacher.api_key_env": "MATHSFT_TEST_TEACHER_KEY", "eval.models": ["teacher"], "eval.pass_k": [1], **edits})


def test_teacher_and_its_evaluation_run_through_a_server_the_user_started(tmp_path, endpoint, user_model):
    workdir = tmp_path / "run"
    result = snakemake(workdir, _config(tmp_path, endpoint), *TARGETS, timeout=1200, env=KEY_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "prepare_model" not in result.stdout + result.stderr  # the user's server holds the weights
    teacher = [r for k in (0, 1) for r in pq.read_table(workdir / f"results/teacher/{k:05d}.parquet").to_pylist()]
    evaluated = pq.read_table(workdir / "results/eval/generations/teacher/all.parquet").to_pylist()
    assert len(teacher) == 16 and len(evaluated) == 2 * 3 * 2
    for row in teacher + evaluated:
        # The model id is what that server reports it loaded; the name requests used is kept beside it.
        assert row["model"] == str(user_model) and row["served_model_name"] == SERVED_NAME
        assert row["response"] and row["finish_reason"] in ("stop", "length")
    written = [path for path in workdir.rglob("*") if path.is_file()]
    assert any(".snakemake" in path.parts for path in written)
    for secret in (API_KEY, OTHER_SECRET):
        leaks = [str(path) for path in written if secret.encode() in path.read_bytes()]
        assert leaks == [], f"a key was written to {leaks}"
    assert API_KEY not in result.stdout + result.stderr


def test_a_name_the_users_server_does_not_serve_fails_the_job_naming_what_it_serves(tmp_path, endpoint):
    workdir = tmp_path / "run"
    result = snakemake(workdir, _config(tmp_path, endpoint, model="teacher"), TARGETS[0], timeout=600,
                       env=KEY_ENV)
    assert result.returncode != 0
    log = (workdir / "logs" / "teacher" / "00000.log").read_text()
    assert f"serves ['{SERVED_NAME}'], not 'teacher'" in log
    assert not (workdir / TARGETS[0]).exists()


def test_a_teacher_job_asks_again_for_each_hostile_reply_and_stores_none(tmp_path, endpoint):
    """Through Snakemake, the teacher stage behind a proxy that answers its first completion requests with each
    hostile reply of HOSTILE_REPLIES but the trickle (request_timeout_s: tests/endpoint/test_teacher_generation.py):
    the job asks again for each, finishes the shard from the real server and counts what it asked again."""
    hostile = tuple(name for name in HOSTILE_REPLIES if name != "trickle")
    workdir = tmp_path / "run"
    with FaultProxy(endpoint.base_url.removesuffix("/v1"), hostile=hostile) as proxy:
        config = _config(tmp_path, proxy, **{"teacher.concurrency": 8, "teacher.max_attempts": 3})
        result = snakemake(workdir, config, TARGETS[0], timeout=600, env=KEY_ENV)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert proxy.injected == {fault: 0 for fault in proxy.injected} | {name: 1 for name in hostile}
    log = (workdir / "logs" / "teacher" / "00000.log").read_text()
    summary = json.loads(next(line for line in log.splitlines() if " summary " in line).split(" summary ", 1)[1])
    assert summary["retried"] == {"MalformedReply": len(hostile)} and summary["failed"] == 0, summary
    rows = pq.read_table(workdir / TARGETS[0]).to_pylist()
    assert len(rows) == 8 and all(len(row["response"]) < 5000 for row in rows)  # not the 10 kB or 20 MB answers
    for row in rows:
        row["response"].encode("utf-8")  # no lone surrogate
    (store,) = (workdir / "results" / "teacher" / ".samples").glob("*/00000.jsonl")
    assert len(store.read_text().splitlines()) == 1 + 8


def test_an_endpoint_without_v1_fails_the_job_at_once_saying_where_the_api_is(tmp_path, endpoint):
    """The user's vLLM server answers 404 under its root: the job stops at its first request with the URL to use."""
    root = endpoint.base_url.removesuffix("/v1")
    workdir = tmp_path / "run"
    config = edited_config(_config(tmp_path, endpoint), tmp_path / "root.yaml", **{"teacher.endpoint": root})
    result = snakemake(workdir, config, TARGETS[0], timeout=600, env=KEY_ENV)
    assert result.returncode != 0
    log = (workdir / "logs" / "teacher" / "00000.log").read_text()
    assert f"endpoint {root}: listing its models failed with HTTP 404 (an OpenAI-compatible API is under /v1: did " \
           f"you mean {root}/v1?)" in log, log[-2000:]


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_job_left_running_by_a_killed_snakemake_is_the_only_one_writing_its_shard(tmp_path, endpoint):
    """kill -9 of Snakemake leaves its teacher job running; after --unlock, a rerun's job for the same shard
    stops at once naming it, and once it has ended a rerun finishes the shard from the store: every sample was
    requested once, none is stored twice."""
    workdir, target = tmp_path / "run", TARGETS[0]
    with FaultProxy(endpoint.base_url.removesuffix("/v1"), delay_s=4.0) as slow:  # 8 samples one by one: 32 s
        config = _config(tmp_path, slow, **{"teacher.concurrency": 1})
        command, env = snakemake_command(workdir, config, target, env=KEY_ENV)
        first = subprocess.Popen(command, env=env, cwd=checkout(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        store = workdir / "results" / "teacher" / ".samples"
        deadline = time.monotonic() + 300
        while not any(p.read_text().count("\n") >= 2 for p in store.glob("*/00000.jsonl")):  # a sample is stored
            assert first.poll() is None and time.monotonic() < deadline, "the teacher job stored no sample"
            time.sleep(0.5)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        orphan = int((store / "00000.lock").read_text().split()[1])
        assert _alive(orphan)

        assert snakemake(workdir, config, "--unlock", env=KEY_ENV).returncode == 0
        beside = snakemake(workdir, config, target, timeout=300, env=KEY_ENV)
        assert _alive(orphan), "the orphan ended before the rerun's job started: the delay is too short"
        assert beside.returncode != 0
        log = (workdir / "logs" / "teacher" / "00000.log").read_text()
        assert f"is being sampled by another job (pid {orphan} on " in log, log[-2000:]

        while _alive(orphan):
            time.sleep(0.5)
        after = snakemake(workdir, config, target, timeout=300, env=KEY_ENV)
        assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
        assert slow.paths["/v1/chat/completions"] == 8  # 4 problems x 2 samples, each asked once
    rows = pq.read_table(workdir / target).to_pylist()
    assert sorted((r["problem_id"], r["sample_index"]) for r in rows) == sorted(
        {(r["problem_id"], r["sample_index"]) for r in rows}) and len(rows) == 8
    (journal,) = store.glob("*/00000.jsonl")
    assert len(journal.read_text().splitlines()) == 1 + 8  # its header and each sample once
