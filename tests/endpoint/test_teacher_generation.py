"""Teacher generation against a real vLLM server used as an external endpoint (conftest.py beside this file): resumption after kill -9
at random points, and faults injected by a proxy in front of the server."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, store_file
from endpoint.conftest import API_KEY, API_KEY_ENV, SERVED_NAME
from helpers.faultproxy import HOSTILE_REPLIES, FaultProxy

from mathsft.generate import ClientSettings, Sampling, sample
from mathsft.io import PROBLEM_SCHEMA, write_parquet
from mathsft.serve import ManagedServer

# Every test here samples from a real vLLM server.
pytestmark = pytest.mark.e2e

MAX_TOKENS = 48
ROWS = [{"problem_id": f"{i:016x}", "source": "s", "problem": f"What is {i} + {2 * i}?", "answer": f"${3 * i}$"}
        for i in range(1, 7)]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("shard") / "00000.parquet"
    write_parquet(ROWS, path, PROBLEM_SCHEMA)
    return path


def _generate_command(shard, output, endpoint, concurrency):
    return [sys.executable, str(REPO / "scripts" / "generate_sft_data.py"), "--shard", str(shard), "--output",
            str(output), "--endpoint", endpoint.base_url, "--api_key_env", API_KEY_ENV, "--model", SERVED_NAME,
            "--samples_per_problem", "3",
            "--max_tokens", str(MAX_TOKENS), "--seed", "7", "--concurrency", str(concurrency)]


def _run(command, **kwargs):
    return subprocess.run(command, env=os.environ | {API_KEY_ENV: API_KEY}, **kwargs)


def _texts(path):
    return {(r["problem_id"], r["sample_index"]): r["response"] for r in pq.read_table(path).to_pylist()}


def test_a_wrong_api_key_fails_at_once_and_is_not_retried(endpoint):
    sampling = Sampling(samples_per_problem=1, temperature=0.6, top_p=0.95, max_tokens=4, seed=7)
    records, summary = sample(ROWS[:2], endpoint.base_url, SERVED_NAME, "boxed_cot_v1", sampling,
                              ClientSettings(max_attempts=5, max_failed_fraction=1.0), api_key="wrong")
    assert records == [] and summary["failed"] == 2 and summary["elapsed_s"] < 5


def test_killed_generation_resumes_without_losing_or_repeating_samples(tmp_path, shard, endpoint):
    reference = tmp_path / "reference.parquet"
    result = _run(_generate_command(shard, reference, endpoint, concurrency=18), check=True, capture_output=True,
                  text=True)
    assert API_KEY not in result.stdout + result.stderr and API_KEY.encode() not in reference.read_bytes()
    expected = _texts(reference)
    assert len(expected) == 6 * 3

    # In a folder of its own: beside the reference, the store would find every sample in the reference's journal.
    output = tmp_path / "resumed" / "resumed.parquet"
    rng = random.Random(1)
    kills = 0
    for _ in range(5):
        # Kill once 1 to 3 more samples are journaled (at most 15 of 18: the job is always still running).
        journal = store_file(output)
        done = journal.read_text().count("\n") - 1 if journal.exists() else 0
        target = done + rng.randint(1, 3)
        proc = subprocess.Popen(_generate_command(shard, output, endpoint, concurrency=1),
                                env=os.environ | {API_KEY_ENV: API_KEY},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            journal = store_file(output)
            if journal.exists() and journal.read_text().count("\n") - 1 >= target:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not output.exists()  # no final file from an unfinished shard
    assert kills == 5, "the job finished before it could be killed five times"
    _run(_generate_command(shard, output, endpoint, concurrency=1), check=True, capture_output=True)
    rows = pq.read_table(output).to_pylist()
    assert len(rows) == len({(r["problem_id"], r["sample_index"]) for r in rows}) == 18  # none lost or repeated
    assert _texts(output) == expected  # same seeds, same texts as the uninterrupted run
    assert store_file(output).read_text().count("\n") == 1 + 18  # kept: its header and every sample


def test_injected_faults_are_retried_or_counted_and_never_stored(endpoint):
    # Short answers keep real requests well inside the timeout that the injected stalls run past.
    sampling = Sampling(samples_per_problem=3, temperature=0.6, top_p=0.95, max_tokens=8, seed=7)
    clean, _ = sample(ROWS, endpoint.base_url, SERVED_NAME, "boxed_cot_v1", sampling, ClientSettings(concurrency=18),
                      api_key=API_KEY)
    expected = {(r["problem_id"], r["sample_index"]): r["response"] for r in clean}
    settings = ClientSettings(concurrency=18, request_timeout_s=10.0, max_attempts=4, backoff_base_s=0.05,
                              backoff_max_s=0.2, max_failed_fraction=1.0)
    with FaultProxy(endpoint.base_url.removesuffix("/v1"), fault_rate=0.5, stall_s=15.0, seed=3) as proxy:
        records, summary = sample(ROWS, proxy.base_url, SERVED_NAME, "boxed_cot_v1", sampling, settings, api_key=API_KEY)
    assert all(proxy.injected[fault] > 0 for fault in proxy.injected), proxy.injected
    assert summary["succeeded"] + summary["failed"] == summary["requested"] == 18
    assert summary["succeeded"] == len(records) >= 9
    for record in records:
        assert record["response"] == expected[(record["problem_id"], record["sample_index"])]
    text = json.dumps(records)
    assert "injected" not in text


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_every_hostile_reply_is_retried_and_counted_and_never_stored(endpoint, student_tokenizer, api):
    """Each reply of HOSTILE_REPLIES once, to the first requests; every sample is then asked again and gets the
    real server's answer. The trickled reply is cut off at request_timeout_s, the 20 MB one after the bytes its
    max_tokens allows."""
    render = None if api == "chat" else (
        lambda messages: student_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    sampling = Sampling(samples_per_problem=1, temperature=0.6, top_p=0.95, max_tokens=8, seed=7)
    clean, _ = sample(ROWS, endpoint.base_url, SERVED_NAME, "boxed_cot_v1", sampling, ClientSettings(concurrency=6),
                      api_key=API_KEY, render=render)
    # The trickled reply would take minutes; a real one takes a second or two, more on a loaded machine.
    settings = ClientSettings(concurrency=6, request_timeout_s=20.0, max_attempts=5, backoff_base_s=0.05,
                              backoff_max_s=0.2)
    with FaultProxy(endpoint.base_url.removesuffix("/v1"), hostile=tuple(HOSTILE_REPLIES)) as proxy:
        records, summary = sample(ROWS, proxy.base_url, SERVED_NAME, "boxed_cot_v1", sampling, settings,
                                  api_key=API_KEY, render=render)
    assert proxy.injected == {fault: 0 for fault in proxy.injected} | {name: 1 for name in HOSTILE_REPLIES}
    assert summary["retried"]["MalformedReply"] == len(HOSTILE_REPLIES) - 1, summary
    assert summary["retried"]["TimeoutError"] >= 1 and summary["failed"] == 0, summary  # the trickle, cut off
    assert summary["elapsed_s"] < 300  # the trickled reply (about 600 bytes, one a second) was not waited for
    assert [(r["problem_id"], r["response"]) for r in records] == [(r["problem_id"], r["response"]) for r in clean]


def test_text_completions_of_the_chat_template_give_the_chat_apis_samples(endpoint, student_tokenizer):
    sampling = Sampling(samples_per_problem=2, temperature=0.6, top_p=0.95, max_tokens=16, seed=7)
    chat, _ = sample(ROWS, endpoint.base_url, SERVED_NAME, "boxed_cot_v1", sampling, ClientSettings(concurrency=12),
                     api_key=API_KEY)

    def render(messages):
        return student_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    text, _ = sample(ROWS, endpoint.base_url, SERVED_NAME, "boxed_cot_v1", sampling, ClientSettings(concurrency=12),
                     api_key=API_KEY, render=render)
    assert {r["api"] for r in chat} == {"chat"} and {r["api"] for r in text} == {"completions"}
    assert [r["prompt_tokens"] for r in text] == [r["prompt_tokens"] for r in chat]
    assert [r["response"] for r in text] == [r["response"] for r in chat]


def test_a_server_that_dies_mid_shard_fails_the_job_with_its_log(tmp_path, student_dir):
    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    sampling = Sampling(samples_per_problem=4, temperature=0.6, top_p=0.95, max_tokens=400, seed=7)
    from mathsft.serve import ServerError

    with ManagedServer(str(student_dir), "m", tmp_path / "server.log", args=server["args"], env=server["env"],
                       health_timeout_s=300) as managed:
        killer = threading.Timer(3.0, os.killpg, args=(managed.proc.pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        with pytest.raises(ServerError, match="exited with code") as error:
            sample(ROWS, managed.base_url, "m", "boxed_cot_v1", sampling,
                   ClientSettings(concurrency=4, request_timeout_s=600, max_attempts=10), api_key=managed.api_key,
                   check_alive=managed.check_alive)
        assert time.monotonic() - started < 30  # not after the request timeout or the retries
    assert "server.log" in str(error.value)


def _summary(result):
    line = next(line for line in result.stderr.splitlines() if " summary " in line)
    return json.loads(line.split(" summary ", 1)[1])


def _with_samples(command, samples):
    command = list(command)
    command[command.index("--samples_per_problem") + 1] = str(samples)
    return command


def test_more_samples_per_problem_request_only_the_new_indices_and_fewer_request_nothing(tmp_path, shard, endpoint):
    output = tmp_path / "00000.parquet"
    command = _generate_command(shard, output, endpoint, concurrency=18)
    first = _run(_with_samples(command, 2), check=True, capture_output=True, text=True)
    assert _summary(first)["requested"] == 12 and _summary(first)["resumed"] == 0
    two = pq.read_table(output).to_pylist()

    more = _run(_with_samples(command, 4), check=True, capture_output=True, text=True)
    assert _summary(more)["resumed"] == 12 and _summary(more)["succeeded"] == 24  # 12 new requests
    four = pq.read_table(output).to_pylist()
    assert [r for r in four if r["sample_index"] < 2] == two  # the kept samples, byte for byte

    fresh = tmp_path / "fresh" / "00000.parquet"  # another store: everything sampled anew at n = 4
    _run(_with_samples(_generate_command(shard, fresh, endpoint, concurrency=18), 4), check=True, capture_output=True)
    without_timing = [{k: v for k, v in r.items() if k != "latency_s"} for r in four]
    assert [{k: v for k, v in r.items() if k != "latency_s"} for r in pq.read_table(fresh).to_pylist()] == without_timing

    fewer = _run(_with_samples(command, 1), check=True, capture_output=True, text=True)
    assert _summary(fewer)["resumed"] == 6 == _summary(fewer)["requested"]
    assert "no server needed" in fewer.stderr
    assert pq.read_table(output).to_pylist() == [r for r in four if r["sample_index"] < 1]


def test_a_job_whose_samples_are_all_stored_starts_no_managed_server(tmp_path, shard, student_dir):
    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    output = tmp_path / "00000.parquet"
    command = [sys.executable, str(REPO / "scripts" / "generate_sft_data.py"), "--shard", str(shard), "--output",
               str(output), "--model", str(student_dir), "--samples_per_problem", "2", "--max_tokens", "8",
               "--seed", "7", *[f"--server_arg={arg}" for arg in server["args"]],
               *[f"--server_env={key}={value}" for key, value in server["env"].items()]]
    first = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "starting vLLM" in first.stderr and _summary(first)["resumed"] == 0
    started = time.monotonic()
    fewer = subprocess.run(_with_samples(command, 1), check=True, capture_output=True, text=True)
    assert "starting vLLM" not in fewer.stderr and "no server needed" in fewer.stderr
    assert time.monotonic() - started < 30  # a managed server alone takes about a minute to start here
    assert len(pq.read_table(output)) == 6 and _summary(fewer)["resumed"] == 6
    changed = subprocess.run(command + ["--temperature", "0.9"], check=True, capture_output=True, text=True)
    assert "starting vLLM" in changed.stderr and _summary(changed)["resumed"] == 0  # another setting: sampled anew
    back = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "starting vLLM" not in back.stderr and _summary(back)["resumed"] == 12  # switching back costs nothing
