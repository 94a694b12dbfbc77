#!/usr/bin/env python
"""Wall time of the teacher stage after raising teacher.samples_per_problem, with the sample store (only the new
indices are requested), against the same stage sampled from scratch at the new n; and after lowering it (nothing
requested, no server). With --raise_num_samples_to, after raising data.num_samples instead (only the new
problems are requested), against the stage from scratch at the new count. Each is a real `snakemake --until
teacher` run of the embedded default (config/config.yaml, its managed vLLM CPU server), in one working directory.
Run from the repo root:

    python bench/incremental_sampling.py --workdir /tmp/mathsft-incremental-bench
    python bench/incremental_sampling.py --raise_num_samples_to 80

The embedded models are converted once (or linked from --models, e.g. .cache/models of the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = ("qwen2.5-coder-0.5b-instruct",)


def teacher_stage(workdir: Path, config: dict, samples: int, problems: int | None = None) -> tuple[float, int]:
    """Run the teacher stage at `samples` per problem (and `problems` training problems, where given); wall seconds
    and the samples its jobs requested (the jobs that ran: their logs are rewritten)."""
    path = workdir / f"config.n{samples}.p{problems}.yaml"
    config = json.loads(json.dumps(config))
    config["teacher"]["samples_per_problem"] = samples
    if problems:
        config["data"]["num_samples"] = problems
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    wall_started = time.time()
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                    "--configfile", str(path), "--profile", str(REPO / "profiles" / "local"), "--until", "teacher"],
                   check=True, env=env, cwd=REPO, capture_output=True)
    elapsed = time.monotonic() - started
    requested = 0
    for log in sorted((workdir / "logs" / "teacher").glob("*[0-9].log")):
        if log.stat().st_mtime < wall_started:
            continue
        line = next(line for line in log.read_text().splitlines() if " summary " in line)
        summary = json.loads(line.split(" summary ", 1)[1])
        requested += summary["sent"]
    return elapsed, requested


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=None,
                        help="training problems (data.num_samples; default: the embedded default's)")
    parser.add_argument("--low", type=int, default=2, help="samples per problem first")
    parser.add_argument("--high", type=int, default=4, help="samples per problem after the edit")
    parser.add_argument("--raise_num_samples_to", type=int, default=None,
                        help="benchmark raising data.num_samples to this count instead (at --low samples per problem)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mathsft-incremental-bench"))
    parser.add_argument("--models", type=Path, default=REPO / ".cache" / "models",
                        help="converted embedded models to link in, when there")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if args.num_samples:
        config["data"]["num_samples"] = args.num_samples
    shutil.rmtree(args.workdir, ignore_errors=True)
    for name in EMBEDDED:
        if (args.models / name / "config.json").is_file():
            shutil.copytree(args.models / name, args.workdir / "results" / "base_models" / name, copy_function=os.link)

    teacher_stage(args.workdir, config, args.low)  # the finished run the edit starts from (data, model, store)
    if args.raise_num_samples_to:
        before, after = config["data"]["num_samples"], args.raise_num_samples_to
        raised, raised_requests = teacher_stage(args.workdir, config, args.low, after)
        shutil.rmtree(args.workdir / "results" / "teacher")  # from scratch: no outputs, an empty sample store
        scratch, scratch_requests = teacher_stage(args.workdir, config, args.low, after)
        print(json.dumps({
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "samples_per_problem": args.low,
            f"num_samples_raised_{before}_to_{after}": {"wall_s": round(raised, 1), "requested": raised_requests},
            f"from_scratch_at_{after}": {"wall_s": round(scratch, 1), "requested": scratch_requests},
            "raised_over_scratch": round(raised / scratch, 3),
        }, indent=1))
        return
    raised, raised_requests = teacher_stage(args.workdir, config, args.high)
    lowered, lowered_requests = teacher_stage(args.workdir, config, args.low)
    shutil.rmtree(args.workdir / "results" / "teacher")  # from scratch: no outputs, an empty sample store
    scratch, scratch_requests = teacher_stage(args.workdir, config, args.high)
    print(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "problems": config["data"]["num_samples"],
        f"raised_{args.low}_to_{args.high}": {"wall_s": round(raised, 1), "requested": raised_requests},
        f"from_scratch_at_{args.high}": {"wall_s": round(scratch, 1), "requested": scratch_requests},
        f"lowered_{args.high}_to_{args.low}": {"wall_s": round(lowered, 1), "requested": lowered_requests},
        "raised_over_scratch": round(raised / scratch, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
