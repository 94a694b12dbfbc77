#!/usr/bin/env python
"""Wall time and peak memory of the curate stage (mathsft.curate.curate, one DuckDB query) over synthetic
scored shards, against the same curation written the way a pandas user would, each in its own child process.
Run from the repo root:

    python bench/curation.py --rows 1000000 --shards 8 --workdir /tmp/mathsft-curation-bench

The shards (zstd, SCORED_SCHEMA, about 1 KB a row) are generated once per (rows, shards) and reused. They
mimic a teacher run: 8 samples per problem, problems of varied difficulty (about half the traces correct),
some cut at max_tokens ('length'), some longer than the training max_length, five sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLES_PER_PROBLEM = 8
MAX_TOKENS = 8192  # the teacher's
CURATION = {"reward_threshold": 1.0, "max_traces_per_problem": 4, "val_fraction": 0.05, "max_length": 4096}
SOURCES = ("amc", "aime", "math", "omni_math", "still")
SOURCE_WEIGHTS = (0.1, 0.05, 0.5, 0.25, 0.1)
TARGET_SECONDS = 30.0
TARGET_SPEEDUP = 10.0
WORDS = ("the so we let then since thus hence x y z n k m equals sum of product square root prime integer "
         "divides factor modulo remainder triangle angle side area circle radius probability expected value "
         "compute check substitute simplify therefore answer case consider assume contradiction wait but "
         "+ - = ( ) ^ 2 3 4 5 7 11 13 \\frac{1}{2} \\sqrt{2} \\pi").split()


def generate(rows: int, shards: int, folder: Path) -> list[str]:
    """Write `rows` synthetic scored traces in `shards` files under `folder` (skipped if already there)."""
    marker = folder / "params.json"
    params = {"rows": rows, "shards": shards, "samples_per_problem": SAMPLES_PER_PROBLEM, "version": 1}
    paths = [str(folder / f"{shard:05d}.parquet") for shard in range(shards)]
    if marker.exists() and json.loads(marker.read_text()) == params and all(map(os.path.exists, paths)):
        return paths
    import numpy as np
    import pyarrow as pa

    from mathsft.io import SCORED_SCHEMA, write_parquet

    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for stale in folder.glob("*.parquet"):  # the children read every shard in the folder
        stale.unlink()
    rng = np.random.default_rng(0)
    # One long random text; each response is a window of it, so texts differ but compress like prose.
    corpus = " ".join(rng.choice(WORDS, size=2_000_000))
    problems = -(-rows // SAMPLES_PER_PROBLEM)
    per_shard = -(-problems // shards)
    for shard, path in enumerate(paths):
        first, last = shard * per_shard, min(problems, (shard + 1) * per_shard)
        n_problems = last - first
        n = min(rows, last * SAMPLES_PER_PROBLEM) - first * SAMPLES_PER_PROBLEM
        problem_of = np.arange(n) // SAMPLES_PER_PROBLEM  # shard-local problem number of each trace
        texts = [f"Problem {first + p}: " + corpus[o:o + 90] for p, o in
                 enumerate(rng.integers(0, len(corpus) - 100, n_problems))]
        ids = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
        sources = rng.choice(len(SOURCES), size=n_problems, p=SOURCE_WEIGHTS)
        difficulty = rng.beta(1.0, 1.0, n_problems)  # chance that one sample is right
        length = rng.random(n) < 0.08  # cut at max_tokens
        # Median about 2,000 tokens; about 13% of the finished ones exceed CURATION["max_length"].
        completion = np.where(length, MAX_TOKENS, np.minimum(rng.lognormal(7.6, 0.6, n), MAX_TOKENS - 1))
        completion = completion.astype(np.int32)
        prompt_tokens = rng.integers(60, 200, n).astype(np.int32)
        correct = (rng.random(n) < difficulty[problem_of]) & ~(length & (rng.random(n) < 0.95))
        offsets = rng.integers(0, len(corpus) - 1000, n)
        sizes = rng.integers(600, 1000, n)
        answers = [str(first + p) for p in range(n_problems)]
        sample_index = (np.arange(n) % SAMPLES_PER_PROBLEM).astype(np.int32)
        problem_col = [texts[p] for p in problem_of]
        columns = {
            "problem_id": [ids[p] for p in problem_of],
            "source": [SOURCES[sources[p]] for p in problem_of],
            "problem": problem_col,
            "answer": [f"${answers[p]}$" for p in problem_of],
            "sample_index": sample_index,
            "messages": [json.dumps([{"role": "user", "content": t + " Put the final answer in \\boxed{}."}])
                         for t in problem_col],
            "response": [corpus[o:o + s] + f" \\boxed{{{answers[p] if c else 0}}}"
                         for o, s, p, c in zip(offsets, sizes, problem_of, correct)],
            "finish_reason": np.where(length, "length", "stop"),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "model": ["agentica-org/DeepScaleR-1.5B-Preview"] * n,
            "served_model_name": [None] * n,
            "prompt_template": ["boxed_cot_v1"] * n,
            "api": ["chat"] * n,
            "temperature": np.full(n, 0.6),
            "top_p": np.full(n, 0.95),
            "max_tokens": np.full(n, MAX_TOKENS, dtype=np.int32),
            "seed": (first * SAMPLES_PER_PROBLEM + np.arange(n)).astype(np.int64),
            "latency_s": rng.random(n) * 60,
            "extracted_answer": [answers[p] if c else "0" for p, c in zip(problem_of, correct)],
            "reward": correct.astype(np.float64),
            "verifier_status": np.where(correct, "correct", "wrong"),
        }
        write_parquet(pa.table(columns), path, SCORED_SCHEMA)
    marker.write_text(json.dumps(params))
    return paths


def pandas_curate(files: list[str], train_path: str, val_path: str) -> None:
    """The same curation as sql/curate.sql (selection 'shortest'), the way a pandas user writes it."""
    import pandas as pd

    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    funnel = {"generated": len(df)}
    df = df[df["reward"] >= CURATION["reward_threshold"]]
    funnel["correct"] = len(df)
    df = df[df["finish_reason"] == "stop"]
    funnel["finished"] = len(df)
    df = df[df["prompt_tokens"] + df["completion_tokens"] <= CURATION["max_length"]]
    funnel["fits"] = len(df)
    df = df.sort_values(["problem_id", "completion_tokens", "sample_index"])
    df = df.groupby("problem_id").head(CURATION["max_traces_per_problem"])
    funnel["kept"] = len(df)
    df = df.sort_values(["problem_id", "sample_index"])
    is_val = df["problem_id"].map(lambda pid: int(pid[:8], 16) % 1_000_000 < CURATION["val_fraction"] * 1_000_000)
    df[~is_val].to_parquet(train_path, index=False, compression="zstd")
    df[is_val].to_parquet(val_path, index=False, compression="zstd")
    print(json.dumps({"funnel": funnel}))


def child(args) -> None:
    """Run one implementation in this (child) process; prints its wall time as JSON on the last line."""
    files = sorted(str(p) for p in Path(args.workdir, "shards").glob("*.parquet"))
    out = Path(args.workdir, args.child)
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    if args.child == "duckdb":
        from mathsft.curate import CurateSettings, curate

        stats = curate(files, str(out / "train.parquet"), str(out / "val.parquet"), str(out / "stats.json"),
                       CurateSettings(**CURATION), threads=args.threads)
        print(json.dumps({"funnel": stats["funnel"]}))
    else:
        pandas_curate(files, str(out / "train.parquet"), str(out / "val.parquet"))
    print(json.dumps({"seconds": time.perf_counter() - start}))


def run_child(name: str, args) -> dict:
    """Run one implementation in a child process; its wall time (in-process and whole) and peak RSS."""
    command = [sys.executable, __file__, "--child", name, "--workdir", args.workdir]
    if args.threads:
        command += ["--threads", str(args.threads)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    process_seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{name} child failed with exit code {proc.returncode}")
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {"seconds": lines[-1]["seconds"], "process_seconds": process_seconds,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "funnel": lines[0]["funnel"]}


def same_kept_rows(workdir: str) -> bool:
    """Whether both implementations wrote the same train and val rows, in the same order, every column."""
    import pyarrow.parquet as pq

    from mathsft.io import SCORED_SCHEMA

    for split in ("train", "val"):
        tables = [pq.read_table(Path(workdir, name, f"{split}.parquet")).select(SCORED_SCHEMA.names).cast(SCORED_SCHEMA)
                  for name in ("duckdb", "pandas")]
        if not tables[0].equals(tables[1]):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/mathsft-curation-bench")
    parser.add_argument("--skip_pandas", action="store_true", help="time only mathsft.curate")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; best and median shown")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--child", choices=["generate", "duckdb", "pandas"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        generate(args.rows, args.shards, Path(args.workdir, "shards"))
        return
    if args.child:
        return child(args)

    start = time.perf_counter()
    # In a child too: a child's peak RSS counts the parent's pages it was forked with.
    subprocess.run([sys.executable, __file__, "--child", "generate", "--rows", str(args.rows), "--shards",
                    str(args.shards), "--workdir", args.workdir], check=True)
    files = sorted(Path(args.workdir, "shards").glob("*.parquet"))
    size_mb = sum(os.path.getsize(f) for f in files) / 2**20
    print(f"shards: {len(files)} files, {args.rows} rows, {size_mb:.0f} MiB zstd "
          f"(ready in {time.perf_counter() - start:.1f} s) under {args.workdir}/shards", flush=True)
    names = ["duckdb"] + ([] if args.skip_pandas else ["pandas"])
    runs = {name: [] for name in names}
    for repeat in range(args.repeats):  # alternating, so that load from other work hits both alike
        for name in names:
            result = run_child(name, args)
            runs[name].append(result)
            print(f"run {repeat + 1} {name:7s} {result['seconds']:6.2f} s in the function, "
                  f"{result['process_seconds']:6.2f} s the process, {result['cpu_seconds']:6.2f} s CPU, "
                  f"peak RSS {result['peak_rss_mb']:5.0f} MiB "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    results = {name: min(rs, key=lambda r: r["seconds"]) | {"median": statistics.median(r["seconds"] for r in rs)}
               for name, rs in runs.items()}
    for name, result in results.items():
        print(f"{name:7s} best {result['seconds']:6.2f} s, median {result['median']:6.2f} s of {args.repeats}, "
              f"CPU median {statistics.median(r['cpu_seconds'] for r in runs[name]):6.2f} s; "
              f"peak RSS {max(r['peak_rss_mb'] for r in runs[name]):5.0f} MiB; funnel {result['funnel']}")
    duck = results["duckdb"]
    met = "met" if duck["median"] <= TARGET_SECONDS else "MISSED"
    print(f"target: mathsft.curate <= {TARGET_SECONDS:.0f} s (median): {met}")
    if "pandas" in results:
        speedup = results["pandas"]["median"] / duck["median"]
        same = same_kept_rows(args.workdir) and results["pandas"]["funnel"] == duck["funnel"]
        print(f"same kept rows and funnel: {same}")
        print(f"speed-up over pandas (medians): {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x: "
              f"{'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}); memory ratio pandas/duckdb "
              f"{results['pandas']['peak_rss_mb'] / duck['peak_rss_mb']:.1f}x")
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
