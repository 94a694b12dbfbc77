"""Shared fixtures (the embedded models, converted once per machine by the pipeline's own script; the checkout and
the finished run every worker shares) and how pytest-xdist deals the test files out."""

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
# The suite oversubscribes the cores by design (two workers, each starting processes that use every core). OpenMP
# threads that spin while they wait (libgomp's default) then take the cores from the threads with work: two CPU
# trainings side by side took 75-120 s each, against 11-13 s with sleeping waits (7.4 s alone), with the same
# losses (bench/omp_wait.sh). Every process the tests start inherits this. Not a pipeline default: a training
# alone on its cores is about 20% faster spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (pyproject.toml: two workers, whole files each) these go first, slowest first; the rest follow
# in collection order. tests/endpoint/ goes to one worker as one unit: its files share one vLLM server (a test that
# starts a larger server of its own stays out of that folder: two there and two on the other worker ran the 24 GB
# machine out of memory). So do the two SLURM modules: their test clusters share /etc/slurm/slurm.conf and ports,
# one is up at a time. The end-to-end units come first, then the slowest files of the quick loop (pytest -m
# "not e2e": 45, 27, 24, 17 and 13 s of its 180 s on 2026-12-05), so that the last file a worker takes is short.
SLOWEST_FIRST = ("tests/test_slurm.py", "tests/test_pipeline.py", "tests/endpoint", "tests/test_reasoning_teacher.py",
                 "tests/test_train_run.py", "tests/test_signals.py", "tests/test_serve.py", "tests/test_offline_jobs.py",
                 "tests/test_data_sources.py", "tests/test_workflow.py", "tests/test_report.py",
                 "tests/test_hub_models.py", "tests/test_reward.py")


def unit_of(nodeid: str) -> str:
    """The scheduling unit of a test: its file, tests/endpoint for the files there, tests/test_slurm.py for both
    SLURM cluster modules."""
    path = nodeid.split("::", 1)[0]
    return ("tests/endpoint" if path.startswith("tests/endpoint/") else
            "tests/test_slurm.py" if path == "tests/test_slurm_nodes.py" else path)


def pytest_collection_modifyitems(config, items):
    """The slowest units first, so that neither worker is left with a long one at the end."""
    rank = {unit: place for place, unit in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(unit_of(item.nodeid), len(rank)))  # stable: files keep their order


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown to pytest without it
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's whole-file scheduling, with tests/endpoint/ as one unit (--dist loadgroup would say this with
    marks, but pytest 9.2's node ids make it ignore them: pytest-xdist issue 1386)."""
    from xdist.scheduler import LoadFileScheduling

    class WholeUnits(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return WholeUnits(config, log)


def converted_model(name: str) -> Path:
    """The embedded model `name`, converted by scripts/prepare_model.py once per machine: one test process converts
    it while any other that needs it waits (pytest-xdist runs several)."""
    import fcntl

    out = MODEL_CACHE / name
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    with open(MODEL_CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").is_file():
            subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_model.py"), "--name", name, "--output",
                            str(out)], check=True)
    return out


def store_file(output: Path) -> Path:
    """The sample store's file for `output` (one fingerprint in these tests), or a path that does not exist yet."""
    found = sorted((output.parent / ".samples").glob(f"*/{output.stem}.jsonl"))
    return found[0] if found else output.parent / ".samples" / "none-yet.jsonl"


def keyed_server(model_dir: Path, log: Path, api_key: str, served_model_name: str = "m", extra_args=()):
    """A real vLLM server with the tiny config's CPU settings (1 GB of KV cache: two of these and the other worker's
    two fit the 24 GB machine) and `extra_args` that demands `api_key`: a stand-in for a server a user runs
    (ManagedServer, used as a context manager)."""
    import yaml

    from mathsft.serve import ManagedServer

    server = yaml.safe_load(TINY.read_text())["server"]
    return ManagedServer(str(model_dir), served_model_name, log, args=[*server["args"], *extra_args],
                         env=server["env"], health_timeout_s=300, api_key=api_key)


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


def readme_command(start: str) -> str:
    """The command of the README's "Two commands" that starts with `start`, as written there."""
    found = [line.strip() for line in (REPO / "README.md").read_text().splitlines() if line.strip().startswith(start)]
    assert len(found) == 1, f"README.md: expected one command starting {start!r}, found {found}"
    return found[0]


@pytest.fixture(scope="session", autouse=True)
def shared_root(tmp_path_factory) -> Path:
    """A folder shared by every pytest-xdist worker of this test run (the session's own without xdist): the
    checkout and the finished run are made there once, by the first worker that needs them."""
    from helpers import workflow

    base = tmp_path_factory.getbasetemp()
    workflow.SHARED_ROOT = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return workflow.SHARED_ROOT


@pytest.fixture(scope="session")
def finished_run(shared_root):
    """A complete run of the tiny config (rule all: eval.json and report.html), made once per test run, as a
    newcomer makes it: the README's first command as written (setup.sh, which makes the checkout's own .venv,
    then snakemake), in a checkout whose path has a space and a quote (workflow.checkout()), with every per-user
    cache empty, into a folder whose path has both too. The end-to-end and rerun tests read it, and the SLURM
    tests compare their own whole run with it. The models are hard links to the per-machine converted copies."""
    import json
    import shlex
    import shutil
    import time

    from helpers.caches import fresh_user_caches
    from helpers.workflow import checkout, made_once

    top = shared_root / "finished_run"
    workdir = top / "a user's run"
    with made_once(top) as to_make:
        if to_make:
            for name in EMBEDDED:
                shutil.copytree(converted_model(name), workdir / "results" / "base_models" / name,
                                copy_function=os.link)
            command = (f"{readme_command('bash setup.sh && . .venv/bin/activate')}"
                       f" --configfile {shlex.quote(str(checkout() / TINY.relative_to(REPO)))}"
                       f" --directory {shlex.quote(str(workdir))}")
            env = {name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "PYTHONPATH")}
            env |= fresh_user_caches(top / "a user's caches", env)
            started = time.monotonic()
            result = subprocess.run(["bash", "-c", command], cwd=checkout(), env=env, capture_output=True,
                                    text=True, timeout=2400)
            print(f"\nthe README's first command (tiny config) from {checkout()}: exit {result.returncode} after "
                  f"{time.monotonic() - started:.0f} s")
            (top / "result.json").write_text(json.dumps(
                {"args": result.args, "returncode": result.returncode, "stdout": result.stdout,
                 "stderr": result.stderr}))
    result = subprocess.CompletedProcess(**json.loads((top / "result.json").read_text()))
    if result.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log"))
                         if "server" not in p.name)
        pytest.fail(f"pipeline failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}\n{logs}")
    return workdir, result
