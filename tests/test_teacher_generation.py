"""Teacher generation against a real vLLM server used as an external endpoint: resumption after kill -9
at random points, and faults injected by a proxy in front of the server."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO
from faultproxy import FaultProxy

from mathsft.generate import ClientSettings, Sampling, sample
from mathsft.io import PROBLEM_SCHEMA, write_parquet
from mathsft.journal import journal_path
from mathsft.serve import ManagedServer

MAX_TOKENS = 48
ROWS = [{"problem_id": f"{i:016x}", "source": "s", "problem": f"What is {i} + {2 * i}?", "answer": f"${3 * i}$"}
        for i in range(1, 7)]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, student_dir):
    """A real vLLM server (the student: small and quick) with the embedded default's CPU settings."""
    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ManagedServer(str(student_dir), "m", log, args=server["args"], env=server["env"], health_timeout_s=300) as s:
        yield s


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("shard") / "00000.parquet"
    write_parquet(ROWS, path, PROBLEM_SCHEMA)
    return path


def _generate_command(shard, output, endpoint, concurrency):
    return [sys.executable, str(REPO / "scripts" / "generate_sft_data.py"), "--shard", str(shard), "--output",
            str(output), "--endpoint", endpoint.base_url, "--model", "m", "--samples_per_problem", "3",
            "--max_tokens", str(MAX_TOKENS), "--seed", "7", "--concurrency", str(concurrency)]


def _texts(path):
    return {(r["problem_id"], r["sample_index"]): r["response"] for r in pq.read_table(path).to_pylist()}


def test_killed_generation_resumes_without_losing_or_repeating_samples(tmp_path, shard, endpoint):
    reference = tmp_path / "reference.parquet"
    subprocess.run(_generate_command(shard, reference, endpoint, concurrency=18), check=True, capture_output=True)
    expected = _texts(reference)
    assert len(expected) == 6 * 3

    output = tmp_path / "resumed.parquet"
    journal = journal_path(output)
    rng = random.Random(1)
    kills = 0
    for _ in range(5):
        target = rng.randint(1, 16)  # kill once the journal holds about this many samples
        proc = subprocess.Popen(_generate_command(shard, output, endpoint, concurrency=1),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count("\n") - 1 >= target:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not output.exists() or proc.returncode == 0  # no final file from an unfinished shard
        if output.exists():
            break
    assert kills >= 3, "the job finished before it could be killed; the test proved nothing"
    subprocess.run(_generate_command(shard, output, endpoint, concurrency=1), check=True, capture_output=True)
    rows = pq.read_table(output).to_pylist()
    assert len(rows) == len({(r["problem_id"], r["sample_index"]) for r in rows}) == 18  # none lost or repeated
    assert _texts(output) == expected  # same seeds, same texts as the uninterrupted run
    assert not journal.exists()


def test_injected_faults_are_retried_or_counted_and_never_stored(endpoint):
    # Short answers keep real requests well inside the timeout that the injected stalls run past.
    sampling = Sampling(samples_per_problem=3, temperature=0.6, top_p=0.95, max_tokens=8, seed=7)
    clean, _ = sample(ROWS, endpoint.base_url, "m", "boxed_cot_v1", sampling, ClientSettings(concurrency=18))
    expected = {(r["problem_id"], r["sample_index"]): r["response"] for r in clean}
    settings = ClientSettings(concurrency=18, request_timeout_s=10.0, max_attempts=4, backoff_base_s=0.05,
                              backoff_max_s=0.2, max_failed_fraction=1.0)
    with FaultProxy(endpoint.base_url.removesuffix("/v1"), fault_rate=0.5, stall_s=15.0, seed=3) as proxy:
        records, summary = sample(ROWS, proxy.base_url, "m", "boxed_cot_v1", sampling, settings)
    assert all(proxy.injected[fault] > 0 for fault in proxy.injected), proxy.injected
    assert summary["succeeded"] + summary["failed"] == summary["requested"] == 18
    assert summary["succeeded"] == len(records) >= 9
    for record in records:
        assert record["response"] == expected[(record["problem_id"], record["sample_index"])]
    text = json.dumps(records)
    assert "injected" not in text
