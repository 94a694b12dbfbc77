"""The cost ledger (mathsft/cost.py) on hand-made benchmark files, records and metrics; the pipeline's own ledger
is checked in test_pipeline.py."""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mathsft.cost import (Job, build_ledger, cost_ledger, cost_rows, read_benchmark, record_tokens, schema_errors,
                          training_tokens, unit_cost_lines)
from mathsft.summary import print_run_summary

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def benchmark(path, wall_s, cpu_s, rss_mb, mtime=None):
    """A Snakemake benchmark file with one row (Snakemake's columns), its time set to mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall_s}\t0:00:00\t{rss_mb}\t1\t1\t1\t0\t0\t50\t{cpu_s}\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return str(path)


def comparison(model, baseline, bench, delta, low, high):
    return {"model": model, "baseline": baseline, "benchmark": bench, "pass@1_delta": delta, "ci95": [low, high]}


def test_a_benchmark_row_gives_wall_cpu_and_peak_memory_and_a_missing_file_none(tmp_path):
    path = benchmark(tmp_path / "b.tsv", 12.5, 20.25, 300.5)
    measured = read_benchmark(path)
    assert (measured["wall_s"], measured["cpu_s"], measured["max_rss_mb"]) == (12.5, 20.25, 300.5)
    assert read_benchmark(tmp_path / "missing.tsv") is None
    (tmp_path / "na.tsv").write_text(HEADER + "3.0\t0:00:03\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
    assert read_benchmark(tmp_path / "na.tsv")["cpu_s"] is None
    (tmp_path / "empty.tsv").write_text(HEADER)
    with pytest.raises(ValueError, match="empty.tsv: a benchmark file with no row"):
        read_benchmark(tmp_path / "empty.tsv")


def test_a_job_spec_names_its_stage_and_keeps_a_colon_in_the_path():
    assert Job.parse("teacher:teacher 00001:2:bench/a:b.tsv") == Job("teacher", "teacher 00001", "bench/a:b.tsv", 2)
    for bad in ("teacher:teacher:x:b.tsv", "nostage:n:0:b.tsv", "teacher:n:0"):
        with pytest.raises(ValueError, match="STAGE:NAME:GPUS:BENCHMARK"):
            Job.parse(bad)


def test_device_seconds_are_gpu_seconds_for_gpu_jobs_and_cpu_seconds_otherwise_never_added(tmp_path):
    jobs = [Job("teacher", "teacher 00000", benchmark(tmp_path / "t0.tsv", 100, 150, 8000), gpus=2),
            Job("teacher", "teacher 00001", benchmark(tmp_path / "t1.tsv", 50, 60, 7000), gpus=2),
            Job("reward", "reward 00000", benchmark(tmp_path / "r0.tsv", 10, 18, 400)),
            Job("train", "train sft", benchmark(tmp_path / "tr.tsv", 200, 300, 9000), gpus=8)]
    ledger = cost_ledger(jobs, {"teacher": {"in": 10, "out": 90}}, kept_trajectories=None, comparisons=[],
                         invocation_started_at=None)
    assert schema_errors(ledger) == []
    stages = {stage["stage"]: stage for stage in ledger["stages"]}
    assert [stage["stage"] for stage in ledger["stages"]] == ["teacher", "reward", "train"]  # pipeline order
    assert (stages["teacher"]["wall_s"], stages["teacher"]["gpu_s"], stages["teacher"]["cpu_s"]) == (150, 300, 0)
    assert stages["teacher"]["max_rss_mb"] == 8000
    assert (stages["teacher"]["tokens_in"], stages["teacher"]["tokens_out"]) == (10, 90)
    assert (stages["reward"]["gpu_s"], stages["reward"]["cpu_s"]) == (0, 18)
    assert stages["reward"]["tokens_in"] is None
    total = ledger["totals"]["to_make_what_is_here"]
    assert (total["wall_s"], total["gpu_s"], total["cpu_s"], total["job_count"]) == (360, 1900, 18, 4)
    # Without the invocation's start no job counts as this invocation's.
    assert ledger["totals"]["this_invocation"]["job_count"] == 0


def test_this_invocation_counts_only_jobs_whose_benchmark_is_newer_than_its_start(tmp_path):
    start = 1_000_000.0
    jobs = [Job("reward", "reward 00000", benchmark(tmp_path / "old.tsv", 10, 10, 1, mtime=start - 60)),
            Job("curate", "curate", benchmark(tmp_path / "new.tsv", 2, 3, 1, mtime=start + 5)),
            Job("train", "train sft", str(tmp_path / "never.tsv"))]
    ledger = cost_ledger(jobs, {}, kept_trajectories=None, comparisons=[], invocation_started_at=start)
    assert schema_errors(ledger) == []
    now = ledger["totals"]["this_invocation"]
    assert (now["job_count"], now["wall_s"], now["cpu_s"]) == (1, 2, 3)
    here = ledger["totals"]["to_make_what_is_here"]
    assert (here["job_count"], here["unmeasured_jobs"], here["wall_s"]) == (3, 1, 12)
    train = ledger["stages"][-1]
    assert train["jobs"][0]["measured"] is False and train["jobs"][0]["wall_s"] is None
    assert cost_rows(ledger)[3][:5] == ["train", "1 (1 unmeasured)", "-", "-", "-"]


def test_unit_costs_per_kept_trajectory_and_per_significant_point_only(tmp_path):
    jobs = [Job("teacher", "teacher 00000", benchmark(tmp_path / "t.tsv", 80, 100, 1)),
            Job("curate", "curate", benchmark(tmp_path / "c.tsv", 20, 20, 1)),
            Job("train", "train sft", benchmark(tmp_path / "tr.tsv", 100, 380, 1)),
            Job("evaluate", "evaluate sft", benchmark(tmp_path / "e.tsv", 1000, 1000, 1))]
    comparisons = [comparison("sft", "student", "chain_sum", 0.125, 0.05, 0.2),      # significant: counted
                   comparison("sft", "student", "gsm", 0.10, -0.01, 0.2),           # interval reaches zero
                   comparison("sft", "teacher", "chain_sum", 0.2, 0.1, 0.3),        # not a gain over the student
                   comparison("teacher", "student", "chain_sum", 0.5, 0.3, 0.7)]    # the teacher is no trained model
    ledger = cost_ledger(jobs, {"teacher": {"in": 5, "out": 400}}, kept_trajectories=40, comparisons=comparisons,
                         invocation_started_at=None)
    assert schema_errors(ledger) == []
    # The curated set: teacher + curate = 100 wall s, 120 CPU s, over 40 kept; evaluation is not counted.
    assert ledger["per_kept_trajectory"] == {"kept": 40, "stages": ["teacher", "curate"], "wall_s": 2.5, "gpu_s": 0.0,
                                             "cpu_s": 3.0, "teacher_tokens_out": 10.0}
    # The model: teacher + curate + train = 200 wall s, 500 CPU s, over 12.5 points.
    assert ledger["per_pass1_point"] == [{"model": "sft", "baseline": "student", "benchmark": "chain_sum",
                                          "pass@1_points": 12.5, "ci95_points": [5.0, 20.0], "wall_s": 16.0,
                                          "gpu_s": 0.0, "cpu_s": 40.0}]
    lines = unit_cost_lines(ledger)
    assert lines[0].startswith("per kept trajectory (40 kept; teacher, curate): 2.5 wall s")
    assert "sft vs student on chain_sum (+12.5, 95% CI 5.0 to 20.0): 16.0 wall s" in lines[1]


def test_a_run_without_a_significant_gain_says_so():
    ledger = cost_ledger([], {}, kept_trajectories=None, comparisons=[comparison("sft", "student", "x", 0.1, -0.1, 0.3)],
                         invocation_started_at=None)
    assert ledger["per_pass1_point"] == [] and ledger["per_kept_trajectory"] is None
    assert unit_cost_lines(ledger) == ["per pass@1 point: no gain over the student with its 95% interval above zero"]


def test_tokens_come_from_the_records_and_the_training_steps(tmp_path):
    table = pa.table({"prompt_tokens": pa.array([10, 20, None], pa.int32()),
                      "completion_tokens": pa.array([100, 200, 5], pa.int32())})
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "b.parquet")
    assert record_tokens([tmp_path / "a.parquet", tmp_path / "b.parquet"]) == (40, 405)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(row) for row in (
        {"step": 1, "tokens": 300, "loss": 1.0}, {"step": 2, "tokens": 200, "loss": 0.9},
        {"epoch": 0, "val_loss": 1.2}, {"summary": True})) + "\n")
    assert training_tokens(metrics) == 500


def test_the_ledger_reads_every_source_and_the_summary_prints_what_this_invocation_wrote(tmp_path):
    start = 2_000_000.0
    (tmp_path / "start").write_text(f"{start}\n")
    pq.write_table(pa.table({"prompt_tokens": pa.array([7], pa.int32()),
                             "completion_tokens": pa.array([70], pa.int32())}), tmp_path / "t.parquet")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "tokens": 64}) + "\n")
    (tmp_path / "stats.json").write_text(json.dumps({"funnel": {"kept": 7}}))
    (tmp_path / "eval.json").write_text(json.dumps({"comparisons": []}))
    jobs = [Job("teacher", "teacher 00000", benchmark(tmp_path / "t.tsv", 7, 14, 1, mtime=start + 1)),
            Job("curate", "curate", benchmark(tmp_path / "c.tsv", 1, 1, 1, mtime=start - 1)),
            Job("train", "train sft", benchmark(tmp_path / "tr.tsv", 3, 3, 1, mtime=start + 2))]
    ledger = build_ledger(jobs, [str(tmp_path / "t.parquet")], [], [str(tmp_path / "metrics.jsonl")],
                          str(tmp_path / "stats.json"), str(tmp_path / "eval.json"), tmp_path / "start")
    assert ledger["invocation_started_at"] == "1970-01-24T03:33:20Z"
    assert ledger["per_kept_trajectory"]["kept"] == 7
    assert [stage["tokens_in"] for stage in ledger["stages"]] == [7, None, 64]
    assert ledger["totals"]["this_invocation"]["job_count"] == 2
    # No start file (--no-hooks): nothing counts as this invocation's.
    ledger = build_ledger(jobs, [], [], [], None, None, tmp_path / "no-such-file")
    assert ledger["invocation_started_at"] is None and ledger["totals"]["this_invocation"]["job_count"] == 0

    cost_path = tmp_path / "cost.json"
    cost_path.write_text(json.dumps(ledger))
    out = io.StringIO()
    print_run_summary(tmp_path / "missing-eval.json", cost_path, started_at=cost_path.stat().st_mtime - 1, file=out)
    assert "cost per stage" in out.getvalue() and "total (what is here)" in out.getvalue()
    out = io.StringIO()
    print_run_summary(tmp_path / "missing-eval.json", cost_path, started_at=cost_path.stat().st_mtime + 1, file=out)
    assert out.getvalue() == ""  # written by an earlier invocation: not this run's summary


def test_the_run_summary_tells_what_the_teacher_cap_cost_when_this_invocation_curated(tmp_path):
    stats_path = tmp_path / "stats.json"
    stats_path.write_text(json.dumps({"teacher_lengths": {"max_tokens": [3584], "bin_edges": [], "by_source": {
        "aime": {"samples": 64, "cut": 16, "counts": [], "problems": 8, "problems_all_cut": 1,
                 "problems_all_cut_ids": ["a"]}}}}))
    out = io.StringIO()
    print_run_summary(tmp_path / "no-eval.json", tmp_path / "no-cost.json", stats_path.stat().st_mtime - 1, file=out,
                      stats_path=stats_path)
    assert out.getvalue() == ("\nteacher traces cut at max_tokens (3584), which curation drops:\n"
                              "  aime: 16 of 64 (25.0%); 1 of 8 problems lost every trace\n")
    out = io.StringIO()
    print_run_summary(tmp_path / "no-eval.json", tmp_path / "no-cost.json", stats_path.stat().st_mtime + 1, file=out,
                      stats_path=stats_path)
    assert out.getvalue() == ""
