"""The cost ledger, results/cost.json: what each stage spent (wall seconds, device-seconds, tokens, peak memory),
the totals, the cost per kept trajectory and per significant pass@1 point gained.

Sources: each job's Snakemake benchmark file (benchmarks/*.tsv: wall seconds, CPU seconds of the job's process
tree, peak resident memory), the records' token counts (teacher and evaluation samples), the training tokens in
metrics.jsonl. Device-seconds are GPU-seconds (wall x GPUs the job asked for) for a job that asked for GPUs,
else CPU-seconds; the two are totalled apart, never added.

A job that did not rerun keeps the figures of the run that made its output: its benchmark file is the one that
run wrote. A job belongs to this invocation when its benchmark file is newer than the invocation's start (written
by the Snakefile's onstart handler): the ledger gives both totals, "to make what is here" and "this invocation".
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
COST_JSON_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "cost.schema.json"
# Stages in pipeline order; a ledger lists those that have jobs.
STAGES = ("models", "data", "teacher", "reward", "curate", "train", "evaluate", "eval_scoring", "summary")
# The stages that make the curated set (cost per kept trajectory) and the SFT model (cost per point gained).
CURATED_SET_STAGES = ("models", "data", "teacher", "reward", "curate")
SFT_MODEL_STAGES = CURATED_SET_STAGES + ("train",)


@dataclass(frozen=True)
class Job:
    """One job of the ledger: its stage, a name (rule and wildcards), its benchmark file and the GPUs it asked for."""

    stage: str
    name: str
    benchmark: str
    gpus: int = 0

    @classmethod
    def parse(cls, text: str) -> "Job":
        """STAGE:NAME:GPUS:BENCHMARK, as the cost rule passes it (the benchmark path last: it may hold ':')."""
        parts = text.split(":", 3)
        if len(parts) != 4 or parts[0] not in STAGES or not parts[2].isdigit():
            raise ValueError(f"--job {text!r}: expected STAGE:NAME:GPUS:BENCHMARK with STAGE one of {', '.join(STAGES)}")
        return cls(parts[0], parts[1], parts[3], int(parts[2]))


def read_benchmark(path: str | Path) -> dict | None:
    """A Snakemake benchmark file's last row as wall_s, cpu_s and max_rss_mb, with the file's time; None when the
    file is missing (a job made by a version of the workflow that kept no benchmark for it)."""
    path = Path(path)
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: a benchmark file with no row")
    row = rows[-1]
    try:
        return {"wall_s": float(row["s"]), "cpu_s": _number(row.get("cpu_time")),
                "max_rss_mb": _number(row.get("max_rss")), "finished_at": path.stat().st_mtime}
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a Snakemake benchmark row ({exc})") from exc


def _number(text: str | None) -> float | None:
    """A benchmark column; Snakemake writes NA where it could not measure."""
    return None if text in (None, "", "NA", "-") else float(text)


def record_tokens(paths: list[str | Path]) -> tuple[int, int]:
    """Prompt and completion tokens summed over the records of sample files (teacher or evaluation parquet)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    prompt = completion = 0
    for path in paths:
        table = pq.read_table(path, columns=["prompt_tokens", "completion_tokens"])
        prompt += int(pc.sum(table["prompt_tokens"]).as_py() or 0)
        completion += int(pc.sum(table["completion_tokens"]).as_py() or 0)
    return prompt, completion


def training_tokens(path: str | Path) -> int:
    """Real (non-padding) tokens the training steps saw, summed over metrics.jsonl's step rows."""
    total = 0
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if "step" in row and "tokens" in row:
            total += int(row["tokens"])
    return total


def job_entry(job: Job, invocation_started_at: float | None) -> dict:
    """One job's figures. device_s: GPU-seconds when it asked for GPUs, else CPU-seconds."""
    measured = read_benchmark(job.benchmark)
    entry = {"name": job.name, "benchmark": job.benchmark, "gpus": job.gpus, "measured": measured is not None}
    if measured is None:
        return entry | {"wall_s": None, "cpu_s": None, "device_s": None, "max_rss_mb": None, "finished_at": None,
                        "this_invocation": False}
    device_s = measured["wall_s"] * job.gpus if job.gpus else measured["cpu_s"]
    this_invocation = invocation_started_at is not None and measured["finished_at"] >= invocation_started_at
    return entry | {"wall_s": measured["wall_s"], "cpu_s": measured["cpu_s"], "device_s": device_s,
                    "max_rss_mb": measured["max_rss_mb"], "finished_at": _iso(measured["finished_at"]),
                    "this_invocation": this_invocation}


def stage_entry(stage: str, jobs: list[dict], tokens: dict) -> dict:
    """A stage's totals over its jobs: wall and device seconds (GPU and CPU apart), tokens, peak memory."""
    return {"stage": stage, "jobs": jobs, **_totals(jobs), "max_rss_mb": _max(job["max_rss_mb"] for job in jobs),
            "tokens_in": tokens.get("in"), "tokens_out": tokens.get("out")}


def _totals(jobs: list[dict]) -> dict:
    """wall_s, gpu_s and cpu_s summed over measured jobs; unmeasured jobs are counted apart."""
    measured = [job for job in jobs if job["measured"]]
    return {"wall_s": round(sum(job["wall_s"] for job in measured), 2),
            "gpu_s": round(sum(job["device_s"] for job in measured if job["gpus"]), 2),
            "cpu_s": round(sum(job["device_s"] or 0.0 for job in measured if not job["gpus"]), 2),
            "job_count": len(jobs), "unmeasured_jobs": len(jobs) - len(measured)}


def _max(values) -> float | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def cost_ledger(jobs: list[Job], tokens: dict[str, dict], kept_trajectories: int | None, comparisons: list[dict],
                invocation_started_at: float | None) -> dict:
    """The ledger document (schemas/cost.schema.json). tokens: per stage, {"in": n, "out": n} (either may be
    left out). comparisons: eval.json's; a gain counts when its 95% interval lies above zero."""
    entries = {stage: [job_entry(job, invocation_started_at) for job in jobs if job.stage == stage] for stage in STAGES}
    stages = [stage_entry(stage, entries[stage], tokens.get(stage, {})) for stage in STAGES if entries[stage]]
    every_job = [job for stage in stages for job in stage["jobs"]]
    by_stage = {stage["stage"]: stage for stage in stages}
    return {
        "schema_version": SCHEMA_VERSION,
        "invocation_started_at": None if invocation_started_at is None else _iso(invocation_started_at),
        "stages": stages,
        "totals": {"to_make_what_is_here": _totals(every_job),
                   "this_invocation": _totals([job for job in every_job if job["this_invocation"]])},
        "per_kept_trajectory": _per_kept(by_stage, kept_trajectories),
        "per_pass1_point": _per_point(by_stage, comparisons),
    }


def _sum_stages(by_stage: dict, names: tuple[str, ...]) -> dict:
    jobs = [job for name in names if name in by_stage for job in by_stage[name]["jobs"]]
    return _totals(jobs)


def _per_kept(by_stage: dict, kept: int | None) -> dict | None:
    """What the curated set cost (CURATED_SET_STAGES), per trajectory kept for training."""
    if not kept:
        return None
    cost = _sum_stages(by_stage, CURATED_SET_STAGES)
    teacher_out = by_stage.get("teacher", {}).get("tokens_out")
    return {"kept": kept, "stages": [name for name in CURATED_SET_STAGES if name in by_stage],
            "wall_s": round(cost["wall_s"] / kept, 3), "gpu_s": round(cost["gpu_s"] / kept, 3),
            "cpu_s": round(cost["cpu_s"] / kept, 3),
            "teacher_tokens_out": None if teacher_out is None else round(teacher_out / kept, 1)}


def _per_point(by_stage: dict, comparisons: list[dict]) -> list[dict]:
    """For each comparison with the student whose 95% interval lies above zero: what making the model cost
    (SFT_MODEL_STAGES) per pass@1 point (percentage point) gained."""
    if "train" not in by_stage:
        return []
    cost = _sum_stages(by_stage, SFT_MODEL_STAGES)
    rows = []
    for comparison in comparisons:
        if comparison["baseline"] != "student" or comparison["model"] == "teacher" or comparison["ci95"][0] <= 0:
            continue
        points = 100.0 * comparison["pass@1_delta"]
        rows.append({"model": comparison["model"], "baseline": comparison["baseline"],
                     "benchmark": comparison["benchmark"], "pass@1_points": round(points, 2),
                     "ci95_points": [round(100.0 * bound, 2) for bound in comparison["ci95"]],
                     "wall_s": round(cost["wall_s"] / points, 2), "gpu_s": round(cost["gpu_s"] / points, 2),
                     "cpu_s": round(cost["cpu_s"] / points, 2)})
    return rows


def read_invocation_start(path: str | Path) -> float | None:
    """The invocation's start, as the Snakefile's onstart handler wrote it (seconds since the epoch); None when
    the file is missing (a run with --no-hooks): then no job counts as this invocation's."""
    path = Path(path)
    return float(path.read_text().strip()) if path.exists() else None


def build_ledger(jobs: list[Job], teacher_samples: list[str], eval_samples: list[str], train_metrics: list[str],
                 curate_stats: str | None, eval_json: str | None, invocation_file: str | Path) -> dict:
    """Read every source and build the ledger (checked against the schema)."""
    tokens = {}
    if teacher_samples:
        prompt, completion = record_tokens(teacher_samples)
        tokens["teacher"] = {"in": prompt, "out": completion}
    if eval_samples:
        prompt, completion = record_tokens(eval_samples)
        tokens["evaluate"] = {"in": prompt, "out": completion}
    if train_metrics:
        tokens["train"] = {"in": sum(training_tokens(path) for path in train_metrics)}
    kept = json.loads(Path(curate_stats).read_text())["funnel"]["kept"] if curate_stats else None
    comparisons = json.loads(Path(eval_json).read_text())["comparisons"] if eval_json else []
    ledger = cost_ledger(jobs, tokens, kept, comparisons, read_invocation_start(invocation_file))
    errors = schema_errors(ledger)
    if errors:
        raise ValueError("cost ledger does not match schemas/cost.schema.json:\n" + "\n".join(errors))
    return ledger


def schema_errors(document: dict, schema_path: str | Path = COST_JSON_SCHEMA) -> list[str]:
    """Every way `document` breaks schemas/cost.schema.json, one line each."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(Path(schema_path).read_text()))
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))]


def cost_rows(ledger: dict) -> list[list[str]]:
    """The ledger as table rows: one per stage, then the two totals."""
    rows = [["stage", "jobs", "wall s", "GPU s", "CPU s", "tokens in", "tokens out", "peak RSS MB", "ran now"]]
    for stage in ledger["stages"]:
        now = sum(job["this_invocation"] for job in stage["jobs"])
        rows.append([stage["stage"], *_total_cells(stage), _fmt(stage["tokens_in"]), _fmt(stage["tokens_out"]),
                     _fmt(stage["max_rss_mb"]), str(now)])
    for label, key in (("total (what is here)", "to_make_what_is_here"), ("this invocation", "this_invocation")):
        rows.append([label, *_total_cells(ledger["totals"][key]), "", "", "", ""])
    return rows


def _total_cells(totals: dict) -> list[str]:
    """jobs (and how many have no benchmark file), wall, GPU and CPU seconds; '-' where no job was measured."""
    jobs = str(totals["job_count"])
    if totals["unmeasured_jobs"]:
        jobs += f" ({totals['unmeasured_jobs']} unmeasured)"
    if totals["unmeasured_jobs"] == totals["job_count"]:
        return [jobs, "-", "-", "-"]
    return [jobs, _fmt(totals["wall_s"]), _fmt(totals["gpu_s"]), _fmt(totals["cpu_s"])]


def unit_cost_lines(ledger: dict) -> list[str]:
    """The cost per kept trajectory and per significant pass@1 point, as sentences."""
    lines = []
    kept = ledger["per_kept_trajectory"]
    if kept:
        lines.append(f"per kept trajectory ({kept['kept']} kept; {', '.join(kept['stages'])}): {kept['wall_s']} wall s, "
                     f"{kept['gpu_s']} GPU s, {kept['cpu_s']} CPU s")
    for row in ledger["per_pass1_point"]:
        lines.append(f"per pass@1 point, {row['model']} vs {row['baseline']} on {row['benchmark']} "
                     f"(+{row['pass@1_points']}, 95% CI {row['ci95_points'][0]} to {row['ci95_points'][1]}): "
                     f"{row['wall_s']} wall s, {row['gpu_s']} GPU s, {row['cpu_s']} CPU s")
    if not ledger["per_pass1_point"]:
        lines.append("per pass@1 point: no gain over the student with its 95% interval above zero")
    return lines


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"
