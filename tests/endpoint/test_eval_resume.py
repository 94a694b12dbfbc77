"""Evaluation sampling against a real vLLM server used as an external endpoint (conftest.py beside this file): a run killed with kill -9 at
random points resumes from its journal without losing or repeating samples."""

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
from conftest import REPO, store_file
from endpoint.conftest import API_KEY, API_KEY_ENV, SERVED_NAME

from mathsft.io import PROBLEM_SCHEMA, write_parquet

pytestmark = pytest.mark.e2e

MAX_TOKENS = 48
SAMPLES_PER_PROBLEM = 3
BENCHMARKS = {
    "sums": [{"problem_id": f"{i:016x}", "source": "s", "problem": f"What is {i} + {2 * i}?", "answer": f"${3 * i}$"}
             for i in range(1, 4)],
    "products": [{"problem_id": f"{i:016x}", "source": "p", "problem": f"What is {i} * 3?", "answer": f"${3 * i}$"}
                 for i in range(11, 14)],
}
TOTAL = sum(len(rows) for rows in BENCHMARKS.values()) * SAMPLES_PER_PROBLEM


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    for name, rows in BENCHMARKS.items():
        write_parquet(rows, folder / f"{name}.parquet", PROBLEM_SCHEMA)
    return [folder / f"{name}.parquet" for name in BENCHMARKS]


def _evaluate_command(benchmarks, output, endpoint, concurrency):
    return [sys.executable, str(REPO / "scripts" / "run_sft_model.py"), "--no-score", "--model", SERVED_NAME,
            "--label", "student", "--benchmarks", *map(str, benchmarks), "--output", str(output),
            "--endpoint", endpoint.base_url, "--api_key_env", API_KEY_ENV,
            "--samples_per_problem", str(SAMPLES_PER_PROBLEM), "--max_tokens", str(MAX_TOKENS), "--seed", "7",
            "--concurrency", str(concurrency)]


def _env():
    return os.environ | {API_KEY_ENV: API_KEY}


def _journaled(output) -> int:
    """Complete sample lines in the store (its header aside; a line torn by a kill has no newline)."""
    journal = store_file(output)
    return journal.read_bytes().count(b"\n") - 1 if journal.exists() else 0


def _rows(path):
    """The output's rows without their timing, the one field a rerun may change."""
    return [{k: v for k, v in row.items() if k != "latency_s"} for row in pq.read_table(path).to_pylist()]


def test_killed_evaluation_resumes_without_losing_or_repeating_samples(tmp_path, benchmarks, endpoint):
    reference = tmp_path / "reference.parquet"
    result = subprocess.run(_evaluate_command(benchmarks, reference, endpoint, concurrency=TOTAL), env=_env(),
                            check=True, capture_output=True, text=True)
    assert API_KEY not in result.stdout + result.stderr and API_KEY.encode() not in reference.read_bytes()
    expected = _rows(reference)
    assert len({(r["problem_id"], r["sample_index"]) for r in expected}) == len(expected) == TOTAL
    assert _journaled(reference) == TOTAL  # the store keeps them

    # In a folder of its own: beside the reference, the store would find every sample in the reference's journal.
    output = tmp_path / "resumed" / "resumed.parquet"
    rng = random.Random(2)
    kills = 0
    for _ in range(5):
        # Kill once 1 to 3 more samples are journaled (at most 15 of 18: the job is always still running).
        target = _journaled(output) + rng.randint(1, 3)
        proc = subprocess.Popen(_evaluate_command(benchmarks, output, endpoint, concurrency=1), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _journaled(output) >= target:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        assert not output.exists()  # no final file from an unfinished evaluation
    assert kills == 5, "the evaluation finished before it could be killed five times"

    journaled = _journaled(output)
    result = subprocess.run(_evaluate_command(benchmarks, output, endpoint, concurrency=1), env=_env(), check=True,
                            capture_output=True, text=True)
    summary_line = next(line for line in result.stderr.splitlines() if " summary " in line)
    summary = json.loads(summary_line.split(" summary ", 1)[1])
    assert summary["resumed"] == journaled >= 5  # what the killed runs finished was not requested again
    rows = _rows(output)
    assert len(rows) == len({(r["problem_id"], r["sample_index"]) for r in rows}) == TOTAL  # none lost or repeated
    assert rows == expected  # same seeds, same samples, in the same order, as the uninterrupted run
    benchmark_of = {row["problem_id"]: name for name, problems in BENCHMARKS.items() for row in problems}
    assert all(r["benchmark"] == benchmark_of[r["problem_id"]] and r["evaluated_model"] == "student" for r in rows)
    assert _journaled(output) == TOTAL  # kept, for a rerun that asks for more samples
