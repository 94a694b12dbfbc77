"""A vLLM OpenAI-compatible server managed by the job: started, waited for with a bounded timeout,
watched while in use and stopped on every exit path."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from mathsft.openmp_preload import OpenMPPreload
from mathsft.ports import free_port, port_in_use

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The server failed to start or died; the message carries its last log lines."""


# What server.args may hold: the vLLM options that decide how a model is loaded, run and served, by their exact
# names (vLLM reads "_" as "-"). Nothing else reaches a server's command line, which `ps`, the job's log line and
# Snakemake's metadata show: no key or token (--api-key, --hf-token...), no host or port (the job picks them), no
# abbreviation. A list of what is refused could never be complete (vLLM adds options each release and its parser
# takes abbreviations); an option a run needs that is missing here is one line to add.
SERVER_OPTIONS = frozenset("--" + name for name in """
    dtype max-model-len enforce-eager gpu-memory-utilization tensor-parallel-size pipeline-parallel-size
    data-parallel-size max-num-seqs max-num-batched-tokens enable-chunked-prefill no-enable-chunked-prefill
    enable-prefix-caching no-enable-prefix-caching kv-cache-dtype block-size swap-space cpu-offload-gb
    quantization load-format seed trust-remote-code tokenizer-mode generation-config override-generation-config
    reasoning-parser chat-template chat-template-content-format max-logprobs distributed-executor-backend
    compilation-config async-scheduling disable-log-stats enable-log-requests disable-log-requests
    disable-custom-all-reduce max-seq-len-to-capture hf-overrides rope-scaling""".split())
# The one key vLLM's server takes as an argument: its own; refused with the way to give a key instead.
SECRET_ARGS = ("--api-key",)
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)


def _option_name(word: str) -> str | None:
    """The option a server argument names, as vLLM reads it (`--api_key=x` -> `--api-key`), or None for a value."""
    if not word.startswith("-") or re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", word):
        return None
    name = word.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def is_secret_arg(arg: str) -> bool:
    """A server argument that holds (or introduces) a key: `--api-key`, `--api_key`, or either with `=...`."""
    return _option_name(arg) in SECRET_ARGS


def redact(words: list[str]) -> list[str]:
    """A command line with the value of every secret argument replaced, for log lines."""
    out, hide_next = [], False
    for word in words:
        if hide_next:
            out.append("***")
        elif is_secret_arg(word) and "=" in word:
            out.append(word.split("=", 1)[0] + "=***")
        else:
            out.append(word)
        hide_next = is_secret_arg(word) and "=" not in word
    return out


def check_server_settings(args: list[str], env: dict[str, str], where: str) -> None:
    """Refuse server arguments other than SERVER_OPTIONS and their values, and variables named like secrets: keys
    would reach argv (`ps`), logs and Snakemake's metadata. The server inherits the job's environment: export
    them there instead."""
    for arg in args:
        name = _option_name(arg)
        if name is None:
            continue
        if name in SECRET_ARGS:
            raise ValueError(f"{where}: {arg.split('=', 1)[0]} holds a key; keys never go on a command line. The "
                             "managed server makes its own per-job key; for a server you run, name the variable "
                             "that holds its key in api_key_env")
        if name not in SERVER_OPTIONS:
            raise ValueError(f"{where}: {arg.split('=', 1)[0]} is not among the vLLM options a managed server may "
                             f"be given (mathsft.serve.SERVER_OPTIONS: {', '.join(sorted(SERVER_OPTIONS))}). Keys "
                             "and tokens (HF_TOKEN...) go in the environment that runs snakemake, never on a "
                             "command line; host and port are the job's")
    for name in env:
        if SECRET_NAME.search(name):
            raise ValueError(f"{where}: {name} looks like a secret; do not put it in the config. Export it in the "
                             "environment that runs snakemake: the server inherits it")


MODELS_REPLY_BYTES = 1 << 20  # a model list names a few models: more is not a model list


def list_models(base_url: str, api_key: str | None, timeout_s: float = 5.0) -> list[dict]:
    """GET {base_url}/models (OpenAI-compatible): the models the server serves, each with its `id` (the name
    requests use) and, from vLLM, its `root` (the weights it loaded). Raises urllib's errors."""
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        body = reply.read(MODELS_REPLY_BYTES + 1)
    if len(body) > MODELS_REPLY_BYTES:
        raise ValueError(f"its model list is larger than {MODELS_REPLY_BYTES} bytes")
    return json.loads(body)["data"]


def model_id(models: list[dict], served_model_name: str) -> str | None:
    """The weights behind `served_model_name` as the server reports them (vLLM's `root`), the name itself
    when the server does not say, None when it does not serve that name."""
    for entry in models:
        if entry.get("id") == served_model_name:
            return entry.get("root") or served_model_name
    return None


def exit_on_sigterm() -> None:
    """Turn SIGTERM (Snakemake, SLURM, kill) into SystemExit so `finally` blocks stop the server."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a server log, after the last lines that name an error (vLLM's root cause often
    comes well before its shutdown noise)."""
    try:
        with open(path, errors="replace") as f:
            last = deque(f, maxlen=2000)
    except OSError:
        return "(no server log)"
    errors = [line for line in last if "Error" in line and "Traceback" not in line][-5:]
    tail_lines = list(last)[-lines:]
    head = [line for line in errors if line not in tail_lines]
    return "".join(head + (["...\n"] if head else []) + tail_lines)


class ManagedServer:
    """`python -m vllm.entrypoints.openai.api_server` for one model, as a context manager. Only this job can use
    it: it is bound to loopback and demands a key made for this job, given to vLLM through its environment
    (never argv), and it counts as ready only when it answers with that key, refuses a request without it,
    and serves the expected name (so a process that took the port first is never sampled from)."""

    def __init__(
        self,
        model: str,
        served_model_name: str | None,
        log_path: str | os.PathLike,
        port: int | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        health_timeout_s: float = 600.0,
        host: str = "127.0.0.1",
        api_key: str | None = None,
        revision: str | None = None,
    ):
        self.args = list(args or [])
        self.env = dict(env or {})
        check_server_settings(self.args, {}, "server arguments")
        self.model = model
        self.revision = revision  # the hub commit of `model` (weights and tokenizer); not one of `args`, checked above
        # vLLM's default: requests name the model as loaded (a path or hub id).
        self.served_model_name = served_model_name or model
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.host = host
        self.api_key = api_key or secrets.token_urlsafe(32)
        self.health_timeout_s = health_timeout_s
        self.proc: subprocess.Popen | None = None
        self.model_id: str | None = None  # what the server reports it loaded, once ready
        self.preload: OpenMPPreload | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            *(["--revision", self.revision, "--tokenizer-revision", self.revision] if self.revision else []),
            *self.args,
        ]

    def __enter__(self) -> "ManagedServer":
        try:
            self.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if port_in_use(self.port, self.host):
            raise ServerError(f"port {self.port} on {self.host} is already in use; stop what holds it, or leave the "
                              "port unset so that a free one is chosen")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM: %s (log: %s)", " ".join(redact(self.command())), self.log_path)
        env = {**os.environ, **self.env}
        self.preload = OpenMPPreload(env)  # from a venv whose path has a space (mathsft.openmp_preload)
        with open(self.log_path, "ab") as server_log:
            # A new session so stop() can signal the server and the engine processes it forks.
            self.proc = subprocess.Popen(
                self.command(), stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**env, **self.preload.env, "VLLM_API_KEY": self.api_key}, start_new_session=True,
            )
        self.started_at = time.monotonic()

    def check_alive(self) -> None:
        """Raise ServerError with the server's last log lines if it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(
                f"vLLM server exited with code {self.proc.returncode}; last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def _answer(self, api_key: str | None) -> int | list[dict] | None:
        """/v1/models asked with `api_key`: the model list, an HTTP error code, or None (nothing answers yet)."""
        try:
            return list_models(self.base_url, api_key)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError, KeyError):
            return None

    def wait_healthy(self) -> None:
        """Poll /v1/models until this job's server answers, the process dies, something else answers on the port,
        or health_timeout_s passes."""
        deadline = self.started_at + self.health_timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            answer = self._answer(self.api_key)
            # A server error (5xx) may be a server still starting; a refusal or a list is an answer to judge.
            if answer is not None and not (isinstance(answer, int) and answer >= 500):
                self._check_it_is_ours(answer)
                log.info("vLLM ready after %.1f s", time.monotonic() - self.started_at)
                return
            time.sleep(1.0)
        raise ServerError(
            f"vLLM server not ready after {self.health_timeout_s:.0f} s (server.health_timeout_s); "
            f"last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def _check_it_is_ours(self, answer: int | list[dict]) -> None:
        """Our server answers our key with a list holding the served name, and refuses a request without it."""
        impostor = (f"something other than the vLLM server this job started answers on {self.host}:{self.port}")
        if isinstance(answer, int):
            raise ServerError(f"{impostor}: it refused this job's key (HTTP {answer}); not sampling from it")
        self.model_id = model_id(answer, self.served_model_name)
        if self.model_id is None:
            raise ServerError(f"{impostor}: it serves {[entry.get('id') for entry in answer]}, not "
                              f"{self.served_model_name!r}; not sampling from it")
        if self._answer(None) != 401:
            raise ServerError(f"{impostor}: it answers without this job's key; not sampling from it")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace_s` (5 s for a server that never became
        ready: vLLM waiting for its engine does not heed SIGTERM). A second SIGTERM to this job meanwhile (SLURM
        sends one, then SIGKILL) cannot cut the stop short."""
        try:
            self._stop(grace_s)
        finally:
            if self.preload is not None:
                self.preload.close()

    def _stop(self, grace_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        if self.model_id is None:
            grace_s = min(grace_s, 5.0)
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if in_main_thread else None
        try:
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait_s)
                    if not _group_alive(self.proc.pid):
                        break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
        log.info("vLLM server stopped")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass(frozen=True)
class Endpoint:
    """Where a job sends its requests, and what answers there."""

    base_url: str
    api_key: str | None
    served_model_name: str  # the name requests use
    model_id: str  # the weights behind it, as the server reports them (vLLM's `root`), else the served name
    check_alive: Callable[[], None] | None = None  # raises when a managed server has died


def external_endpoint(base_url: str, served_model_name: str, api_key: str | None, timeout_s: float = 30.0) -> Endpoint:
    """A server the user runs: check at once that it answers and serves `served_model_name`, so a wrong name,
    URL or key fails the job before any request, naming what the server does serve."""
    base_url = base_url.rstrip("/")
    try:
        models = list_models(base_url, api_key, timeout_s)
    except urllib.error.HTTPError as exc:
        hint = (" (is api_key_env set, and does it hold that server's key?)" if exc.code in (401, 403) else
                f" (an OpenAI-compatible API is under /v1: did you mean {base_url}/v1?)"
                if exc.code == 404 and not base_url.endswith("/v1") else "")
        raise ServerError(f"endpoint {base_url}: listing its models failed with HTTP {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise ServerError(f"endpoint {base_url}: no OpenAI-compatible server answers there ({exc})") from exc
    found = model_id(models, served_model_name)
    if found is None:
        raise ServerError(f"endpoint {base_url} serves {[entry.get('id') for entry in models]}, not "
                          f"{served_model_name!r}: set the model to the name that server knows")
    return Endpoint(base_url, api_key, served_model_name, found)


@contextlib.contextmanager
def serving(model: str, endpoint: str | None, server_log: str | os.PathLike, server_args: list[str],
            server_env: dict[str, str], health_timeout_s: float, api_key: str | None = None,
            served_model_name: str | None = None, revision: str | None = None) -> Iterator[Endpoint]:
    """The Endpoint to sample `model` from: the user's server at `endpoint` (requests name `model`, the name
    that server knows; `api_key` is its key), else a ManagedServer started here (loading `model` at `revision`)
    and stopped on every exit path."""
    if endpoint:
        yield external_endpoint(endpoint, model, api_key)
        return
    with ManagedServer(model, served_model_name, server_log, args=server_args, env=server_env,
                       health_timeout_s=health_timeout_s, revision=revision) as server:
        yield Endpoint(server.base_url, server.api_key, server.served_model_name, server.model_id or model,
                       server.check_alive)
