"""A vLLM OpenAI-compatible server managed by the job: started, waited for with a bounded timeout,
watched while in use and stopped on every exit path."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """The server failed to start or died; the message carries its last log lines."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM (Snakemake, SLURM, kill) into SystemExit so `finally` blocks stop the server."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


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
    """`python -m vllm.entrypoints.openai.api_server` for one model, as a context manager."""

    def __init__(
        self,
        model: str,
        served_model_name: str,
        log_path: str | os.PathLike,
        port: int | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        health_timeout_s: float = 600.0,
        host: str = "127.0.0.1",
    ):
        self.model, self.served_model_name = model, served_model_name
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.host = host
        self.args = list(args or [])
        self.env = dict(env or {})
        self.health_timeout_s = health_timeout_s
        self.proc: subprocess.Popen | None = None

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
            *self.args,
        ]

    def __enter__(self) -> "ManagedServer":
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if port_in_use(self.port, self.host):
            raise ServerError(f"port {self.port} on {self.host} is already in use; choose another (server.port) or stop what holds it")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM: %s (log: %s)", " ".join(self.command()), self.log_path)
        with open(self.log_path, "ab") as server_log:
            # A new session so stop() can signal the server and the engine processes it forks.
            self.proc = subprocess.Popen(
                self.command(), stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        self.started_at = time.monotonic()

    def check_alive(self) -> None:
        """Raise ServerError with the server's last log lines if it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(
                f"vLLM server exited with code {self.proc.returncode}; last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def wait_healthy(self) -> None:
        """Poll /v1/models until it answers, the process dies, or health_timeout_s passes."""
        deadline = self.started_at + self.health_timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as reply:
                    ready = reply.status == 200
            except urllib.error.HTTPError as exc:
                ready = exc.code == 401  # started with --api-key: it answers, so the engine is up
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                ready = False
            if ready:
                log.info("vLLM ready after %.1f s", time.monotonic() - self.started_at)
                return
            time.sleep(1.0)
        raise ServerError(
            f"vLLM server not ready after {self.health_timeout_s:.0f} s (server.health_timeout_s); "
            f"last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace_s`."""
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
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
        log.info("vLLM server stopped")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class serving:
    """Context manager yielding (base_url, check_alive) for `model`: the external `endpoint` when one is
    given (the server is the user's), else a ManagedServer started here."""

    def __init__(self, model: str, served_model_name: str, endpoint: str | None, server_log: str | os.PathLike,
                 server_args: list[str], server_env: dict[str, str], health_timeout_s: float, port: int | None = None):
        self.endpoint = endpoint
        self.server = None if endpoint else ManagedServer(
            model, served_model_name, server_log, port=port, args=server_args, env=server_env,
            health_timeout_s=health_timeout_s,
        )

    def __enter__(self):
        if self.server is None:
            return self.endpoint.rstrip("/"), None
        self.server.__enter__()
        return self.server.base_url, self.server.check_alive

    def __exit__(self, *exc):
        if self.server is not None:
            self.server.stop()
