"""Started by tests/helpers/workflow.py (cli_process), as `python -c` with this file's text: imports Snakemake's
CLI and the libraries of the project's reporting scripts once, then for each request on standard input (a JSON
line: the python arguments, cwd, env, stdout and stderr files) forks a process that runs `python -m snakemake ...`
or `python scripts/NAME.py ...` with those arguments, folder, environment and output, and answers two JSON lines:
the run's pid, then its exit status (negative: the signal that ended it). A process of its own, so that no test's
multiprocessing (the reward pool's fork server) shares anything with it."""

import json
import os
import runpy
import sys
import traceback

import snakemake.cli  # noqa: F401  (the 2.5 s of imports the forked runs share)

# What the report, metrics and cost scripts load (about 1 s: matplotlib, pyarrow); each script still imports
# what it uses, so one that lacks an import fails here as it does alone.
import matplotlib.figure  # noqa: F401,E402
import mathsft.report  # noqa: F401,E402
import pyarrow.parquet  # noqa: F401,E402


def run(request: dict) -> None:
    """In the forked process: what `python ARGS...` does with the request's arguments (`-m snakemake ...` or a
    script and its arguments)."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    args = request["args"]
    if args[:2] == ["-m", "snakemake"]:
        sys.argv = [os.path.join(os.path.dirname(snakemake.cli.__file__), "__main__.py"), *args[2:]]
        main = snakemake.cli.main
    else:
        script = os.path.abspath(args[0])
        sys.argv = [script, *args[1:]]
        sys.path.insert(0, os.path.dirname(script))  # as python puts a script's folder first
        main = lambda: runpy.run_path(script, run_name="__main__")  # noqa: E731
    code = 0
    try:
        main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        run(request)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
