"""Running Snakemake on this workflow from tests: a real run, and the jobs a dry run plans."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def load_script(script: str):
    """scripts/`script` as a module (its build_parser(), main() and helpers), without running it."""
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), REPO / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Set by conftest.py for the session: a folder every pytest-xdist worker of this run shares (pytest removes it
# with its other old temporary folders).
SHARED_ROOT: Path | None = None


@contextlib.contextmanager
def made_once(folder: Path):
    """Yields whether `folder` is still to be made, holding a lock that the other workers of this test run wait on;
    the folder counts as made once the block exits without an exception."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.parent / f".{folder.name}.done"
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
        yield not done.exists()
        done.touch()


@functools.cache
def checkout() -> Path:
    """A copy of this checkout (its tracked and unignored files) in a folder whose path has a space and a quote,
    as users clone into any folder: the workflow tests run Snakemake from it, so every path and value that
    reaches a job's shell is tested quoted. Made once per test run, shared by its workers: a finished run is
    planned against the Snakefile it was made with."""
    top = (SHARED_ROOT or Path(tempfile.mkdtemp(prefix="mathsft-checkout-"))) / "checkout"
    copy = top / "a user's checkout" / "mathsft"
    with made_once(top) as to_make:
        if to_make:
            listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                    cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
            for name in filter(None, listed):
                if (REPO / name).is_file():
                    (copy / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / name, copy / name)
    return copy

def snakemake(workdir: Path, configfile: Path, *args: str, timeout: float = 1800,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake on the Snakefile of checkout() in `workdir` with `configfile` and the local profile
    (`env`: variables added to the environment): `python -m snakemake ...` as a user runs it, started by
    cli_process()."""
    command, env = snakemake_command(workdir, configfile, *args, env=env)
    return cli_process(command, cwd=checkout(), env=env, timeout=timeout)


def snakemake_command(workdir: Path, configfile: Path, *args: str,
                      env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of snakemake(), for a test that starts it with subprocess.Popen (run it
    in checkout())."""
    env = dict(os.environ) | (env or {})
    # Jobs run `python`: the one these tests run under, whatever PATH the caller had.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return [*SNAKEMAKE, "-s", str(checkout() / "Snakefile"), "--directory", str(workdir), "--configfile",
            str(configfile), "--profile", str(checkout() / "profiles" / "local"), *args], env


class _Zygote:
    """A process that has imported Snakemake's CLI (2.5 s of imports: its persistence layer, pandas for the SLURM
    plugin) and the reporting scripts' libraries once, and forks each run from there: tests/helpers/zygote.py."""

    def __init__(self):
        source = (Path(__file__).parent / "zygote.py").read_text()
        self.process = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0)
        self._buffer = b""
        self.lock = threading.Lock()

    def answer(self, timeout: float | None) -> dict | None:
        """The zygote's next JSON line, or None if none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.process.stdout], [], [], wait)[0]:
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the zygote exited with {self.process.wait()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


@functools.cache
def _zygote() -> _Zygote:
    return _Zygote()


def cli_process(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True, ...) for `python -m snakemake` and `python
    scripts/NAME.py` command lines (by default in this folder and environment): the same arguments, folder and
    environment in a process of its own, forked from _zygote() instead of importing Snakemake or the scripts'
    libraries again. Its jobs are new processes, as with subprocess.run."""
    assert command[0] == sys.executable and (command[1:3] == SNAKEMAKE[1:] or command[1].endswith(".py")), command
    zygote = _zygote()
    with zygote.lock, tempfile.TemporaryDirectory(prefix="zygote-cli-") as folder:
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
        request = {"args": command[1:], "cwd": str(cwd or Path.cwd()), "env": dict(os.environ) if env is None else env,
                   "stdout": str(stdout), "stderr": str(stderr)}
        zygote.process.stdin.write(json.dumps(request).encode() + b"\n")
        pid = zygote.answer(None)["pid"]
        status = zygote.answer(timeout)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            zygote.answer(None)
            raise subprocess.TimeoutExpired(command, timeout, stdout.read_text(), stderr.read_text())
        return subprocess.CompletedProcess(command, status["status"], stdout.read_text(errors="replace"),
                                           stderr.read_text(errors="replace"))


# How Snakemake announces a job, planned or run: "rule teacher:", "localrule report:", "checkpoint curate:".
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def planned_outputs(workdir: Path, configfile: Path, target: str = "results/eval.json") -> dict[str, set[str]]:
    """Rule name -> outputs of the jobs a dry run of `target` would run. After a checkpoint (curate, score_eval)
    a dry run lists what would run if the checkpoint's output changed: see ran_jobs for what a run did."""
    result = snakemake(workdir, configfile, "-n", target, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"dry run failed:\n{result.stdout}\n{result.stderr}")
    return outputs_of_plan(result.stdout)


def outputs_of_plan(stdout: str) -> dict[str, set[str]]:
    """Rule name -> outputs of the jobs a dry run's output lists (planned_outputs)."""
    planned: dict[str, set[str]] = {}
    rule = None
    for line in stdout.splitlines():
        match = JOB_HEADER.match(line.strip())
        if match:
            rule = match.group(1)
            planned.setdefault(rule, set())
        elif rule and line.strip().startswith("output:"):
            planned[rule].update(part.strip() for part in line.split(":", 1)[1].split(","))
            rule = None
    return planned


def ran_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule name -> how many of its jobs a real run (the result of snakemake()) ran; the target rule `all`, which
    runs no command, is left out."""
    ran: dict[str, int] = {}
    for line in (result.stdout + result.stderr).splitlines():
        match = JOB_HEADER.match(line.strip())
        if match and match.group(1) != "all":
            ran[match.group(1)] = ran.get(match.group(1), 0) + 1
    return ran


def edited_config(base: Path, out: Path, **edits) -> Path:
    """A copy of config `base` with dotted keys replaced, e.g. edited_config(b, o, **{"curate.reward_threshold": 0.5})."""
    config = yaml.safe_load(base.read_text())
    for dotted, value in edits.items():
        section, key = dotted.split(".")
        config.setdefault(section, {})[key] = value
    out.write_text(yaml.safe_dump(config))
    return out
