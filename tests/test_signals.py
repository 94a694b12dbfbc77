"""SIGTERM (what SLURM sends on scancel and at the time limit) to any stage's script stops every process it
started, exits non-zero and leaves no output under its final name: the math-verify workers of scoring (busy in
a check, not idle), one plain training process and both ranks of a torchrun training (and a first start's
extension build, whose lock must not outlive it), and a managed vLLM server, starting or answering. Real
process trees throughout: each script runs in a session of its own, and "its processes" are every process of
that session and of the sessions its descendants opened (the vLLM server opens one), so a process that
outlived its parent and was handed to init still counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO
from helpers.sftdata import write_sft_set
from test_reward import TOWER
from test_train_run import train_command

from mathsft.io import PROBLEM_SCHEMA, TRAJECTORY_SCHEMA, write_parquet

VLLM = "vllm.entrypoints.openai.api_server"


def session_members(sessions: set[int]) -> list[psutil.Process]:
    """Live processes (zombies are dead) in any of `sessions`, this test's own process excepted."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if (process.pid != os.getpid() and os.getsid(process.pid) in sessions
                    and process.info["status"] != psutil.STATUS_ZOMBIE):
                members.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            lines.append(f"{process.pid} (gone)")
    return "\n".join(lines)


class ProcessTree:
    """A script started in a session of its own, its output in a log file; the sessions its descendants
    opened are collected whenever the tree is looked at. On exit, whatever is left is SIGKILLed."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=REPO, start_new_session=True, env={**os.environ, **(env or {})})
        self.sessions = {self.process.pid}

    def __enter__(self) -> "ProcessTree":
        return self

    def __exit__(self, *exc) -> None:
        for session in self.sessions:  # a failed test leaves nothing behind either
            try:
                os.killpg(session, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            try:
                self.sessions.add(os.getsid(child.pid))
            except (ProcessLookupError, PermissionError):
                pass
        return children

    def names(self) -> list[str]:
        names = []
        for process in self.descendants():
            try:
                names.append(process.name())
            except psutil.Error:
                continue
        return names

    def wait_until(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"the script ended (exit code {self.process.returncode}) before {what}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout_s:.0f} s:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def sigterm_and_wait(self, within_s: float) -> float:
        """SIGTERM the script alone (not its group); returns the seconds until every process of its sessions
        was gone, failing the test if some are still alive after `within_s`."""
        self.descendants()
        os.kill(self.process.pid, signal.SIGTERM)
        sent = time.monotonic()
        while True:
            self.descendants()  # a session opened during the shutdown counts too
            self.process.poll()  # reaped: the script's own zombie is not alive
            left = session_members(self.sessions)
            if self.process.returncode is not None and not left:
                return time.monotonic() - sent
            if time.monotonic() - sent > within_s:
                pytest.fail(f"{within_s:.0f} s after SIGTERM these are still running:\n{describe(left)}\n"
                            f"log:\n{self.log()[-3000:]}")
            time.sleep(0.1)


def trajectory_row(index: int, response: str, answer: str) -> dict:
    return {"problem_id": f"{index:016x}", "source": "test", "problem": "p", "answer": answer, "sample_index": 0,
            "messages": "[]", "response": response, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
            "model": "teacher", "served_model_name": None, "prompt_template": "boxed_cot_v1", "api": "chat",
            "temperature": 0.6, "top_p": 0.95, "max_tokens": 256, "seed": index, "latency_s": 1.0}


def scoring_tree(tmp_path: Path) -> tuple[ProcessTree, Path]:
    """score_trajectories.py with 2 workers on answers that keep sympy busy far past any wait here."""
    write_parquet([trajectory_row(i, TOWER, "$3$") for i in range(40)], tmp_path / "teacher.parquet", TRAJECTORY_SCHEMA)
    output = tmp_path / "scored" / "00000.parquet"
    command = [sys.executable, str(REPO / "scripts" / "score_trajectories.py"), "--input", str(tmp_path / "teacher.parquet"),
               "--output", str(output), "--workers", "2", "--timeout_s", "600"]
    return ProcessTree(command, tmp_path / "score.log"), output


def busy_workers(tree: ProcessTree) -> list[psutil.Process]:
    """Scoring workers (children of the forkserver) that have computed for over a second: inside a check."""
    busy = []
    for process in tree.descendants():
        try:
            if "forkserver" in " ".join(process.parent().cmdline()) and process.cpu_times().user > 1.0:
                busy.append(process)
        except (psutil.Error, AttributeError):
            continue
    return busy


def test_sigterm_to_scoring_stops_its_busy_math_verify_workers_and_writes_nothing(tmp_path):
    tree, output = scoring_tree(tmp_path)
    with tree:
        tree.wait_until(lambda: len(busy_workers(tree)) == 2, 120, "two busy scoring workers")
        elapsed = tree.sigterm_and_wait(within_s=15)
    assert tree.process.returncode != 0
    assert not output.parent.exists() or not list(output.parent.iterdir())
    print(f"scoring: every process gone {elapsed:.1f} s after SIGTERM")


def training_ranks(tree: ProcessTree) -> list[psutil.Process]:
    ranks = []
    for process in [psutil.Process(tree.process.pid), *tree.descendants()]:
        try:
            if "train_sft.py" in " ".join(process.cmdline()) and "torch.distributed.run" not in process.cmdline():
                ranks.append(process)
        except psutil.Error:
            continue
    return ranks


@pytest.mark.e2e
@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_sigterm_to_a_training_stops_every_rank_within_seconds_and_exports_nothing(student_dir, tmp_path, launcher):
    write_sft_set(tmp_path / "train.parquet", 32)
    write_sft_set(tmp_path / "val.parquet", 2)
    # 16 optimizer steps: far from done when the first one is logged.
    command = train_command(student_dir, tmp_path, "run", "--global_batch_size", "2", "--micro_batch_size_per_device",
                            "2" if launcher == "python" else "1", "--checkpoint_dir", str(tmp_path / "ckpt"))
    if launcher == "torchrun":
        command[command.index("--threads") + 1] = "1"
        command[:1] = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    ranks = 1 if launcher == "python" else 2
    with ProcessTree(command, tmp_path / "train.log") as tree:
        tree.wait_until(lambda: len(training_ranks(tree)) == ranks and "step 1/16" in tree.log(), 600,
                        f"{ranks} training process(es) past their first step")
        elapsed = tree.sigterm_and_wait(within_s=15)
    assert tree.process.returncode != 0
    assert not (tmp_path / "run").exists(), "no model, metrics or summary is written for a stopped run"
    print(f"training under {launcher}: every process gone {elapsed:.1f} s after SIGTERM")


@pytest.mark.e2e
def test_sigterm_during_the_first_starts_extension_build_releases_its_lock(student_dir, tmp_path):
    # A DeepSpeed JSON without torch_adam makes DeepSpeed build its FusedAdam op at a machine's first start
    # (the shipped JSONs build none), holding a lock file meanwhile; a process that dies without running its
    # `finally` leaves the lock, and every later start waits on it forever. The compilers ninja started finish
    # their file and exit on their own.
    write_sft_set(tmp_path / "train.parquet", 4)
    extensions = tmp_path / "torch_extensions"
    fused_adam = json.loads((REPO / "config" / "deepspeed" / "zero2.json").read_text())
    del fused_adam["optimizer"]["params"]["torch_adam"]
    (tmp_path / "fused_adam.json").write_text(json.dumps(fused_adam))
    command = train_command(student_dir, tmp_path, "run", "--global_batch_size", "2")
    command[command.index("--deepspeed") + 1] = str(tmp_path / "fused_adam.json")
    with ProcessTree(command, tmp_path / "train.log", env={"TORCH_EXTENSIONS_DIR": str(extensions)}) as tree:
        tree.wait_until(lambda: "ninja" in tree.names(), 300, "extension build")
        os.kill(tree.process.pid, signal.SIGTERM)
        assert tree.process.wait(timeout=15) != 0
        assert not list(extensions.rglob("lock")), "the build's lock outlived the run"
        # One compile can take minutes on a loaded 2-core machine (CI at 3,605 s: still running after 120 s).
        deadline = time.monotonic() + 600
        while session_members(tree.sessions) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not session_members(tree.sessions), describe(session_members(tree.sessions))
    assert not (tmp_path / "run").exists()


def vllm_tree(student_dir: Path, tmp_path: Path, samples: int) -> tuple[ProcessTree, Path]:
    """generate_sft_data.py with a managed vLLM server (no --endpoint) on the student, the embedded default's
    server settings, one problem."""
    import yaml

    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    shard = tmp_path / "shard.parquet"
    write_parquet([{"problem_id": "0" * 16, "source": "test", "problem": "What is 2 + 3?", "answer": "$5$"}], shard,
                  PROBLEM_SCHEMA)
    output = tmp_path / "teacher" / "00000.parquet"
    command = [sys.executable, str(REPO / "scripts" / "generate_sft_data.py"), "--shard", str(shard),
               "--output", str(output), "--model", str(student_dir), "--samples_per_problem", str(samples),
               "--max_tokens", "2048", "--temperature", "1.0", "--health_timeout_s", "600",
               *[f"--server_arg={arg}" for arg in server["args"]],
               *[f"--server_env={key}={value}" for key, value in server["env"].items()]]
    return ProcessTree(command, tmp_path / "generate.log", env={"HF_HUB_OFFLINE": "1"}), output


def vllm_processes(tree: ProcessTree) -> list[psutil.Process]:
    found = []
    for process in tree.descendants():
        try:
            if VLLM in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.mark.e2e
def test_sigterm_while_the_managed_vllm_server_starts_stops_the_server(student_dir, tmp_path):
    tree, output = vllm_tree(student_dir, tmp_path, samples=1)
    with tree:
        tree.wait_until(lambda: vllm_processes(tree), 120, "vLLM server process")
        # Well into its start: the engine process it forks exists. Until that engine reports ready, vLLM 0.32's
        # API server waits for it in a ZeroMQ poll that SIGTERM does not interrupt (for up to
        # VLLM_ENGINE_READY_TIMEOUT_S, 600 s), so here it is the managed server's own SIGKILL, after the 5 s
        # grace it gives a server that never became ready, that ends it.
        tree.wait_until(lambda: any(p.children() for p in vllm_processes(tree)), 120, "vLLM engine process")
        elapsed = tree.sigterm_and_wait(within_s=20)
    assert tree.process.returncode != 0 and not output.exists()
    print(f"vLLM starting: every process gone {elapsed:.1f} s after SIGTERM")


@pytest.mark.e2e
def test_sigterm_while_the_managed_vllm_server_answers_requests_stops_the_server(student_dir, tmp_path):
    tree, output = vllm_tree(student_dir, tmp_path, samples=64)
    with tree:
        tree.wait_until(lambda: "vLLM ready after" in tree.log(), 600, "ready vLLM server")
        time.sleep(3)  # requests in flight
        elapsed = tree.sigterm_and_wait(within_s=30)
    assert tree.process.returncode != 0 and not output.exists()
    print(f"vLLM answering: every process gone {elapsed:.1f} s after SIGTERM")
