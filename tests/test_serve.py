"""The managed vLLM server: start failures are clear and quick, the health wait is bounded, and the
server's processes are gone on every exit path."""

import socket
import subprocess
import time

import pytest
from conftest import REPO

from mathsft.serve import ManagedServer, ServerError

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1"}
CPU_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512"]


def _vllm_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "vllm.entrypoints.openai.api_server"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_a_port_in_use_fails_at_once_naming_the_port(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServerError, match=f"port {port}.*in use"):
            with ManagedServer("unused", "m", tmp_path / "server.log", port=port):
                pass
        assert time.monotonic() - started < 1


def test_a_bad_model_path_fails_well_within_the_health_timeout_with_the_server_log(tmp_path):
    started = time.monotonic()
    with pytest.raises(ServerError, match="exited with code") as error:
        with ManagedServer(str(tmp_path / "no-such-model"), "m", tmp_path / "server.log", args=CPU_ARGS,
                           env=CPU_ENV, health_timeout_s=600):
            pass
    assert time.monotonic() - started < 180
    assert "no-such-model" in str(error.value)  # the server's own last lines say what was wrong
    assert not _vllm_processes()


def test_the_health_wait_is_bounded_and_the_server_stopped_when_it_runs_out(tmp_path, student_dir):
    started = time.monotonic()
    with pytest.raises(ServerError, match="not ready after 3 s"):
        with ManagedServer(str(student_dir), "m", tmp_path / "server.log", args=CPU_ARGS, env=CPU_ENV,
                           health_timeout_s=3):
            pass
    assert time.monotonic() - started < 60
    assert not _vllm_processes()


def test_the_shipped_cpu_server_settings_survive_a_wide_batch_of_seeded_requests(tmp_path, student_dir):
    """vLLM's CPU backend crashed on seeded requests whose prefill was split across steps; the embedded
    default's server arguments must keep a wide batch alive (every request answered)."""
    import yaml

    from mathsft.generate import ClientSettings, Sampling, sample

    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    rows = [{"problem_id": f"{i:016x}", "source": "s", "problem": f"What is {i} + {i}? " * 12, "answer": f"${2 * i}$"}
            for i in range(32)]
    with ManagedServer(str(student_dir), "m", tmp_path / "server.log", args=server["args"], env=server["env"],
                       health_timeout_s=300) as managed:
        records, summary = sample(rows, managed.base_url, "m", "boxed_cot_v1",
                                  Sampling(samples_per_problem=4, temperature=0.6, top_p=0.95, max_tokens=8, seed=0),
                                  ClientSettings(concurrency=128, max_attempts=1), check_alive=managed.check_alive)
    assert summary["failed"] == 0 and len(records) == 128
    assert not _vllm_processes()
