"""The seed's way of working, through Snakemake: the teacher at a vLLM server the user started, under a served
name that differs from its model path and behind an API key. Requests name teacher.model, records keep the
model id and the served name apart, the teacher is evaluated through the same server, and no key is written
anywhere the run writes, Snakemake's own .snakemake/ included."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import TINY
from endpoint.conftest import API_KEY, SERVED_NAME
from helpers.workflow import edited_config, snakemake

pytestmark = pytest.mark.e2e
OTHER_SECRET = "hf_mathsft_unrelated_token_41d0"  # a secret the user's environment holds: it must not leak either
KEY_ENV = {"MATHSFT_TEST_TEACHER_KEY": API_KEY, "HF_TOKEN": OTHER_SECRET}
TARGETS = ("results/teacher/00000.parquet", "results/teacher/00001.parquet", "results/eval/generations/teacher.parquet")


def _config(tmp_path, endpoint, model=SERVED_NAME):
    return edited_config(TINY, tmp_path / "external.yaml", **{
        "teacher.endpoint": endpoint.base_url, "teacher.model": model,
        "teacher.api_key_env": "MATHSFT_TEST_TEACHER_KEY", "eval.models": ["teacher"], "eval.pass_k": [1]})


def test_teacher_and_its_evaluation_run_through_a_server_the_user_started(tmp_path, endpoint, user_model):
    workdir = tmp_path / "run"
    result = snakemake(workdir, _config(tmp_path, endpoint), *TARGETS, timeout=1200, env=KEY_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "prepare_model" not in result.stdout + result.stderr  # the user's server holds the weights
    teacher = [r for k in (0, 1) for r in pq.read_table(workdir / f"results/teacher/{k:05d}.parquet").to_pylist()]
    evaluated = pq.read_table(workdir / "results/eval/generations/teacher.parquet").to_pylist()
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
