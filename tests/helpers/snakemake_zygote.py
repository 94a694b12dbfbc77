"""Started by tests/helpers/workflow.py (cli_process), as `python -c` with this file's text: imports Snakemake's
CLI once, then for each request on standard input (a JSON line: argv, cwd, env, stdout and stderr files) forks a
process that runs `python -m snakemake` with that argv, folder, environment and output, and answers two JSON
lines: the run's pid, then its exit status (negative: the signal that ended it). A process of its own, so that
no test's multiprocessing (the reward pool's fork server) shares anything with it."""

import json
import os
import sys
import traceback

import snakemake.cli  # noqa: F401  (the 2.5 s of imports the forked runs share)


def run(request: dict) -> None:
    """In the forked process: what `python -m snakemake` does with the request's argv."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [os.path.join(os.path.dirname(snakemake.cli.__file__), "__main__.py"), *request["argv"]]
    code = 0
    try:
        snakemake.cli.main()
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
