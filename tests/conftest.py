"""Shared fixtures: the embedded models, converted once per machine by the pipeline's own script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
EMBEDDED = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
# Converted models are kept between test runs on the same machine (conversion takes about two minutes).
MODEL_CACHE = Path(os.environ.get("MATHSFT_TEST_MODELS", REPO / ".cache" / "models"))


def converted_model(name: str) -> Path:
    out = MODEL_CACHE / name
    if not (out / "config.json").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_model.py"), "--name", name, "--output", str(out)],
                       check=True)
    return out


def store_file(output: Path) -> Path:
    """The sample store's file for `output` (one fingerprint in these tests), or a path that does not exist yet."""
    found = sorted((output.parent / ".samples").glob(f"{output.stem}.*.jsonl"))
    return found[0] if found else output.parent / ".samples" / "none-yet.jsonl"


def keyed_server(model_dir: Path, log: Path, api_key: str, served_model_name: str = "m"):
    """A real vLLM server with the embedded default's CPU settings that demands `api_key`: a stand-in for a server
    a user runs (ManagedServer, used as a context manager)."""
    import yaml

    from mathsft.serve import ManagedServer

    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    return ManagedServer(str(model_dir), served_model_name, log, args=server["args"], env=server["env"],
                         health_timeout_s=300, api_key=api_key)


@pytest.fixture(scope="session")
def student_dir() -> Path:
    return converted_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    return converted_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def student_tokenizer(student_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student_dir)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A complete run of the tiny config (rule all: eval.json and report.html), once per session, from a checkout
    and into a folder whose paths have a space and a quote: the end-to-end and rerun tests read it, and the SLURM tests compare their own whole run with it. The models
    are hard links to the per-machine converted copies."""
    import shutil

    from helpers.workflow import snakemake

    # A working directory whose path has a space and a quote too (the checkout has both: workflow.checkout()).
    workdir = tmp_path_factory.mktemp("run") / "a user's run"
    for name in EMBEDDED:
        shutil.copytree(converted_model(name), workdir / "results" / "base_models" / name, copy_function=os.link)
    result = snakemake(workdir, TINY, timeout=2400)
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log"))
                         if "server" not in p.name)
        pytest.fail(f"pipeline failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}\n{logs}")
    return workdir, result
