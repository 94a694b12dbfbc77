"""The managed vLLM server: start failures are clear and quick, the health wait is bounded, and the
server's processes are gone on every exit path."""

import http.server
import json
import logging
import os
import socket
import threading
import time
import urllib.error
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from helpers.processes import vllm_servers

from mathsft.serve import (ManagedServer, ServerError, check_server_settings, external_endpoint, list_models,
                           redact)

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1"}
CPU_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512"]




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


@pytest.mark.e2e  # starts vLLM, which then fails to load
def test_a_bad_model_path_fails_well_within_the_health_timeout_with_the_server_log(tmp_path):
    started = time.monotonic()
    with pytest.raises(ServerError, match="exited with code") as error:
        with ManagedServer(str(tmp_path / "no-such-model"), "m", tmp_path / "server.log", args=CPU_ARGS,
                           env=CPU_ENV, health_timeout_s=600):
            pass
    assert time.monotonic() - started < 180
    assert "no-such-model" in str(error.value)  # the server's own last lines say what was wrong
    assert not vllm_servers(tmp_path)


@pytest.mark.e2e  # starts a vLLM server
def test_the_health_wait_is_bounded_and_the_server_stopped_when_it_runs_out(tmp_path, student_dir):
    started = time.monotonic()
    with pytest.raises(ServerError, match="not ready after 3 s"):
        with ManagedServer(str(student_dir), "m", tmp_path / "server.log", args=CPU_ARGS, env=CPU_ENV,
                           health_timeout_s=3):
            pass
    assert time.monotonic() - started < 60
    assert not vllm_servers(tmp_path)


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory, student_dir):
    """A managed server of the student with the embedded default's server settings and a key of its own, started
    once for the tests below; when it stops, its key is in neither its log nor the job's, and none of its
    processes is left."""
    import logging.handlers

    import yaml

    server = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["server"]
    log = tmp_path_factory.mktemp("server") / "server.log"
    job_log = logging.handlers.BufferingHandler(capacity=100_000)
    logger = logging.getLogger("mathsft.serve")
    level, _ = logger.level, logger.setLevel(logging.INFO)
    logger.addHandler(job_log)
    try:
        with ManagedServer(str(student_dir), "m", log, args=server["args"], env=server["env"],
                           health_timeout_s=300) as managed:
            yield managed
    finally:
        logger.removeHandler(job_log)
        logger.setLevel(level)
    job_lines = "\n".join(record.getMessage() for record in job_log.buffer)
    assert "starting vLLM" in job_lines and managed.api_key not in job_lines
    assert managed.api_key not in log.read_text()
    assert not vllm_servers(log.parent)


@pytest.mark.e2e  # starts a vLLM server
def test_the_shipped_cpu_server_settings_survive_a_wide_batch_of_seeded_requests(shipped_server):
    """vLLM's CPU backend crashed on seeded requests whose prefill was split across steps; the embedded
    default's server arguments must keep a wide batch alive (every request answered)."""
    from mathsft.generate import ClientSettings, Sampling, sample

    rows = [{"problem_id": f"{i:016x}", "source": "s", "problem": f"What is {i} + {i}? " * 12, "answer": f"${2 * i}$"}
            for i in range(32)]
    records, summary = sample(rows, shipped_server.base_url, "m", "boxed_cot_v1",
                              Sampling(samples_per_problem=4, temperature=0.6, top_p=0.95, max_tokens=8, seed=0),
                              ClientSettings(concurrency=128, max_attempts=1), api_key=shipped_server.api_key,
                              check_alive=shipped_server.check_alive)
    assert summary["failed"] == 0 and len(records) == 128


def _group_commands(pgid: int) -> list[bytes]:
    """The command lines of every process in a process group (the server and the engine it forks)."""
    commands = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getpgid(int(proc.name)) == pgid:
                    commands.append((proc / "cmdline").read_bytes())
            except (OSError, ProcessLookupError):
                continue
    return commands


@pytest.mark.e2e  # starts a vLLM server
def test_a_managed_server_answers_only_its_own_key_which_never_reaches_argv_or_a_log(shipped_server, student_dir,
                                                                                        caplog):
    caplog.set_level(logging.INFO, logger="mathsft.serve")
    managed = shipped_server
    key = managed.api_key
    assert len(key) >= 32 and managed.model_id == str(student_dir)  # vLLM reports what it loaded
    assert [entry["id"] for entry in list_models(managed.base_url, key)] == ["m"]
    for wrong in (None, "not-the-key"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            list_models(managed.base_url, wrong)
        assert refused.value.code == 401
    commands = _group_commands(managed.proc.pid)
    assert commands and not any(key.encode() in command for command in commands)
    # The same server seen as a user's endpoint: the name is checked before any request.
    assert external_endpoint(managed.base_url, "m", key).model_id == str(student_dir)
    with pytest.raises(ServerError, match=r"serves \['m'\], not 'teacher'"):
        external_endpoint(managed.base_url, "teacher", key)
    with pytest.raises(ServerError, match="HTTP 401.*api_key_env"):
        external_endpoint(managed.base_url, "m", None)
    assert key not in caplog.text  # and the start's lines: the fixture checks them and the server's log


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Whatever another user left on the port: it lists our model to anyone, or refuses every key."""

    status = 200

    def do_GET(self):
        body = json.dumps({"data": [{"id": "m", "root": "elsewhere"}]}).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, refusal", [
    (200, "something other than the vLLM server.*answers without this job's key"),
    (401, "something other than the vLLM server.*refused this job's key"),
    # A server error reads as a server still starting: the wait goes on until vLLM, unable to bind, exits.
    (503, "vLLM server exited with code"),
])
@pytest.mark.e2e  # starts vLLM, which then cannot bind
def test_a_process_that_takes_the_port_before_vllm_is_refused(tmp_path, student_dir, monkeypatch, status, refusal):
    handler = type("Impostor", (_Impostor,), {"status": status})
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    # The impostor binds between the job's check that the port is free and vLLM's own bind.
    monkeypatch.setattr("mathsft.serve.port_in_use", lambda port, host: False)
    try:
        started = time.monotonic()
        with pytest.raises(ServerError, match=refusal):
            with ManagedServer(str(student_dir), "m", tmp_path / "server.log", port=impostor.server_port,
                               args=CPU_ARGS, env=CPU_ENV, health_timeout_s=300):
                pass
        assert time.monotonic() - started < 60
    finally:
        impostor.shutdown()
    assert not vllm_servers(tmp_path)


def test_keys_in_server_arguments_or_variables_are_refused_and_redacted_from_log_lines():
    with pytest.raises(ValueError, match="--api-key holds a key"):
        check_server_settings(["--dtype", "float32", "--api-key=abc"], {}, "server.args")
    with pytest.raises(ValueError, match="HF_TOKEN looks like a secret.*Export it"):
        check_server_settings([], {"HF_TOKEN": "abc"}, "server.env")
    check_server_settings(["--dtype", "float32"], {"VLLM_CPU_KVCACHE_SPACE": "2"}, "server.env")
    with pytest.raises(ValueError, match="--api_key holds a key"):
        check_server_settings(["--api_key", "sk-abc"], {}, "server.args")  # vLLM reads it as --api-key
    assert redact(["vllm", "--api-key", "abc", "--api-key=def", "--port", "1"]) == [
        "vllm", "--api-key", "***", "--api-key=***", "--port", "1"]
    with pytest.raises(ValueError, match="--api-key"):
        ManagedServer("unused", "m", "unused.log", args=["--api-key", "abc"])


def test_a_revision_pins_the_managed_servers_weights_and_tokenizer_and_is_refused_with_an_endpoint():
    import argparse

    from mathsft.cli import add_server_args, server_from_args

    parser = argparse.ArgumentParser()
    add_server_args(parser)
    pinned = server_from_args(parser.parse_args(["--model", "org/m", "--server_arg=--dtype", "--server_arg=float32",
                                                 "--revision", "0123abc"]))
    assert pinned.managed_args() == ["--dtype", "float32", "--revision", "0123abc", "--tokenizer-revision", "0123abc"]
    # The server the job starts takes the pin beside its checked arguments (among them it was refused, and every
    # pinned managed server failed to start).
    loads, revision, served_model_name = pinned.launch()
    command = ManagedServer(loads, served_model_name, "unused.log", args=list(pinned.args), revision=revision).command()
    assert command[command.index("--model"):command.index("--model") + 2] == ["--model", "org/m"]
    assert command[command.index("--revision"):] == ["--revision", "0123abc", "--tokenizer-revision", "0123abc",
                                                     "--dtype", "float32"]
    unpinned = server_from_args(parser.parse_args(["--model", "org/m", "--server_arg=--dtype", "--server_arg=float32"]))
    assert unpinned.managed_args() == ["--dtype", "float32"]
    with pytest.raises(SystemExit, match="--revision is for a managed server"):
        server_from_args(parser.parse_args(["--model", "m", "--revision", "0123abc",
                                            "--endpoint", "http://127.0.0.1:9/v1"]))


@pytest.mark.parametrize("args", [["--hf-token", "hf_abc"], ["--hf_token=hf_abc"], ["--port", "8000"],
                                  ["--host=0.0.0.0"], ["--api", "abc"], ["--ssl-keyfile", "k.pem"]])
def test_only_the_options_that_shape_serving_reach_a_servers_command_line(args):
    with pytest.raises(ValueError, match=f"server.args: {args[0].split('=')[0]} is not among the vLLM options"):
        check_server_settings(args, {}, "server.args")


def test_every_shipped_configs_server_arguments_are_allowed():
    for config in (REPO / "config").glob("*.yaml"):
        server = (yaml.safe_load(config.read_text()) or {}).get("server") or {}
        check_server_settings(server.get("args", []), server.get("env", {}), config.name)
    check_server_settings(["--seed", "-1", "--max_model_len=4096", "--enforce-eager"], {}, "server.args")

