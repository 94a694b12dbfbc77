"""End to end on a reduced config with the real models, vLLM servers, math-verify, DuckDB and DeepSpeed;
then the rerun table of DESIGN.md, one dry run per config edit against the finished run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import TINY
from helpers.processes import vllm_servers
from helpers.workflow import checkout, edited_config, planned_outputs, ran_jobs, snakemake

pytestmark = pytest.mark.e2e
# finished_run (conftest.py): the tiny config run to the end once per session; tests/test_slurm.py runs it
# again through SLURM and compares.


def test_pipeline_writes_eval_json_with_sane_metrics_for_both_students(finished_run):
    workdir, result = finished_run
    document = json.loads((workdir / "results" / "eval.json").read_text())
    assert document["schema_version"] == 3 and len(document["config_hash"]) == 16
    assert set(document["models"]) == {"student", "sft", "teacher"}
    for model in document["models"].values():
        assert set(model["benchmarks"]) == {"chain_sum", "basic_arithmetic"}
        for metrics in model["benchmarks"].values():
            assert (metrics["problems"], metrics["samples_per_problem"]) == (3, 2)
            assert 0.0 <= metrics["pass@1"] <= 1.0 and 0.0 <= metrics["pass@1_stderr"] <= 0.5
            assert metrics["pass@1"] <= metrics["pass@2"] <= 1.0
            assert 0 < metrics["mean_response_tokens"] <= 160
    assert "pass@1" in result.stdout + result.stderr  # the terminal summary table


def test_eval_json_compares_sft_and_teacher_with_the_student_and_sft_with_the_teacher(finished_run):
    workdir, result = finished_run
    document = json.loads((workdir / "results" / "eval.json").read_text())
    pairs = {(c["model"], c["baseline"], c["benchmark"]): c for c in document["comparisons"]}
    assert set(pairs) == {(model, baseline, bench) for model, baseline in
                          (("sft", "student"), ("sft", "teacher"), ("teacher", "student"))
                          for bench in ("chain_sum", "basic_arithmetic")}
    for (model, baseline, bench), comparison in pairs.items():
        metrics = document["models"]
        assert comparison["problems"] == 3
        assert comparison["pass@1_delta"] == pytest.approx(metrics[model]["benchmarks"][bench]["pass@1"]
                                                           - metrics[baseline]["benchmarks"][bench]["pass@1"])
        low, high = comparison["ci95"]
        assert low <= comparison["pass@1_delta"] <= high and 0 < comparison["p_value"] <= 1
        # The SFT model against the student says how much of the teacher's gain it recovered (None: no gain).
        assert ("fraction_of_teacher_gain" in comparison) == ((model, baseline) == ("sft", "student"))
    assert "paired comparisons" in result.stdout + result.stderr


def _stage(ledger: dict, name: str) -> dict:
    return next(stage for stage in ledger["stages"] if stage["stage"] == name)


def test_the_cost_ledger_counts_every_job_of_the_run_and_the_summary_prints_it(finished_run):
    workdir, result = finished_run
    ledger = json.loads((workdir / "results" / "cost.json").read_text())
    assert [stage["stage"] for stage in ledger["stages"]] == [
        "models", "data", "teacher", "reward", "curate", "train", "evaluate", "eval_scoring", "summary"]
    # The fixture links converted models in: no prepare_model job ran, and the ledger says so.
    assert _stage(ledger, "models")["unmeasured_jobs"] == _stage(ledger, "models")["job_count"] == 2
    ran = [job for stage in ledger["stages"][1:] for job in stage["jobs"]]
    assert len(ran) == 1 + 2 + 2 + 1 + 1 + 3 + 3 + 1
    assert all(job["measured"] and job["this_invocation"] and job["wall_s"] > 0 and job["gpus"] == 0 for job in ran)
    assert all(job["device_s"] == job["cpu_s"] for job in ran)  # no GPU asked: CPU-seconds
    assert ledger["totals"]["this_invocation"] == ledger["totals"]["to_make_what_is_here"] | {"job_count": len(ran),
                                                                                            "unmeasured_jobs": 0}
    teacher_rows = pq.read_table(workdir / "results" / "teacher" / "00000.parquet").num_rows
    assert _stage(ledger, "teacher")["tokens_out"] > teacher_rows  # every sample has completion tokens
    steps = [json.loads(line) for line in (workdir / "results/train/sft/metrics.jsonl").read_text().splitlines()]
    assert _stage(ledger, "train")["tokens_in"] == sum(row["tokens"] for row in steps if "tokens" in row)
    kept = json.loads((workdir / "results" / "sft" / "stats.json").read_text())["funnel"]["kept"]
    assert ledger["per_kept_trajectory"]["kept"] == kept
    assert _stage(ledger, "teacher")["max_rss_mb"] > 1000  # the job's process tree holds the vLLM server
    assert "cost per stage" in result.stdout and "total (what is here)" in result.stdout
    assert 'id="cost-table"' in (workdir / "results" / "report.html").read_text()
    # What the teacher's cap cost, as curation counted it, is told too.
    lengths = json.loads((workdir / "results" / "sft" / "stats.json").read_text())["teacher_lengths"]
    generated = sum(pq.read_table(path).num_rows for path in (workdir / "results" / "teacher").glob("*.parquet"))
    assert sum(entry["samples"] for entry in lengths["by_source"].values()) == generated
    assert "teacher traces cut at max_tokens (160), which curation drops:" in result.stdout
    assert planned_outputs(workdir, TINY, target="results/cost.json") == {}


def test_every_teacher_sample_is_a_real_response_with_provenance(finished_run):
    workdir, _ = finished_run
    rows = [r for path in sorted((workdir / "results" / "teacher").glob("*.parquet")) for r in pq.read_table(path).to_pylist()]
    assert len(rows) == 8 * 2  # 8 problems x 2 samples, none failed
    assert len({(r["problem_id"], r["sample_index"]) for r in rows}) == len(rows)
    assert all(r["finish_reason"] in ("stop", "length") and r["response"] for r in rows)
    # The model id is what the managed server loaded; it serves under that same name, so no alias is recorded.
    assert all(r["completion_tokens"] <= 160 and r["model"] == "results/base_models/qwen2.5-coder-0.5b-instruct"
               and r["served_model_name"] is None and r["prompt_template"] == "boxed_cot_v1" for r in rows)
    assert len({r["seed"] for r in rows}) == len(rows)


def test_curated_set_has_only_correct_finished_traces_and_a_consistent_funnel(finished_run):
    workdir, _ = finished_run
    stats = json.loads((workdir / "results" / "sft" / "stats.json").read_text())
    funnel = stats["funnel"]
    assert funnel["generated"] == 16
    assert funnel["generated"] >= funnel["correct"] >= funnel["finished"] >= funnel["kept"] > 0
    train = pq.read_table(workdir / "results" / "sft" / "train.parquet").to_pylist()
    assert train and all(r["reward"] == 1.0 and r["finish_reason"] == "stop" for r in train)


def test_fine_tuned_model_stops_on_im_end_and_its_training_is_logged(finished_run):
    workdir, _ = finished_run
    model = workdir / "results" / "models" / "sft"
    assert json.loads((model / "generation_config.json").read_text())["eos_token_id"] == 2
    assert json.loads((model / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    steps = [json.loads(line) for line in (workdir / "results" / "train" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert steps and all(s["loss"] > 0 and s["grad_norm"] > 0 for s in steps if "loss" in s)


def test_no_vllm_server_outlives_the_run(finished_run):
    workdir, _ = finished_run
    assert vllm_servers(workdir) == []  # none of the run's servers (their logs are under logs/) is left



def test_the_servers_of_a_venv_under_a_spaced_path_preload_their_openmp_runtime(finished_run):
    """vLLM's CPU build preloads torch's libgomp; from this checkout's .venv (a path with a space) the loader refused
    it in every server process until the managed server gave it a link (mathsft.openmp_preload)."""
    workdir, _ = finished_run
    logs = sorted((workdir / "logs").rglob("*.server.log"))
    assert len(logs) == 5 and " " in str(checkout())  # 2 teacher shards and 3 evaluated models, from the spaced venv
    refused = [path.name for path in logs if "cannot be preloaded" in path.read_text()]
    assert refused == []


def test_the_newcomers_run_compiled_nothing_into_its_empty_caches(finished_run):
    """A first run on a new machine builds no native code: DeepSpeed's shared-memory op (only inference collectives
    use it) is skipped, AdamW is torch's, vLLM runs eager on the CPU, and nothing else calls torch.compile or Triton."""
    workdir, _ = finished_run
    caches = workdir.parent / "a user's caches"
    assert (caches / "xdg").is_dir()  # the fixture's empty caches: the run could write here, and wrote no build
    compiled = [path for folder in ("xdg/torch_extensions", "triton", "inductor", "xdg/vllm/torch_compile_cache")
                for path in (caches / folder).rglob("*") if path.is_file()]
    assert compiled == []
    assert "Building extension module" not in (workdir / "logs" / "train" / "sft.log").read_text()


def test_a_deepspeed_json_that_needs_a_built_op_stops_at_once_under_the_newcomers_venv(finished_run, tmp_path):
    """The checkout's own .venv lies under a path with a space and a quote, where PyTorch's extension builder cannot
    link: a DeepSpeed JSON that makes DeepSpeed build an op (AdamW without torch_adam: FusedAdam) stops before the
    compiler runs, naming the op and the fix."""
    from helpers.caches import fresh_user_caches
    from helpers.sftdata import write_sft_set

    workdir, _ = finished_run
    fused_adam = json.loads((checkout() / "config" / "deepspeed" / "zero2.json").read_text())
    del fused_adam["optimizer"]["params"]["torch_adam"]
    (tmp_path / "fused_adam.json").write_text(json.dumps(fused_adam))
    write_sft_set(tmp_path / "train.parquet", 4)
    caches = fresh_user_caches(tmp_path / "caches")
    python = checkout() / ".venv" / "bin" / "python"
    result = subprocess.run(
        [str(python), str(checkout() / "scripts" / "train_sft.py"), "--model",
         str(workdir / "results" / "base_models" / "smollm2-135m-instruct"), "--train_files",
         str(tmp_path / "train.parquet"), "--val_files", str(tmp_path / "val.parquet"), "--output_dir",
         str(tmp_path / "run" / "model"), "--metrics", str(tmp_path / "run" / "metrics.jsonl"), "--summary",
         str(tmp_path / "run" / "summary.json"), "--deepspeed", str(tmp_path / "fused_adam.json"),
         "--global_batch_size", "2", "--max_length", "256"],
        capture_output=True, text=True, timeout=600, env=os.environ | caches)
    assert result.returncode != 0
    assert "error: DeepSpeed would build its fused_adam op now" in result.stderr, result.stderr[-3000:]
    assert f"({python.parent.parent}/lib/" in result.stderr and "torch_adam: true" in result.stderr
    assert not any(Path(caches["TORCH_EXTENSIONS_DIR"]).rglob("*.o")) and not (tmp_path / "run" / "model").exists()


SFT_DOWNSTREAM = {"results/sft/train.parquet", "results/models/sft", "results/eval/generations/sft/all.parquet",
                  "results/eval/sft.parquet", "results/eval/sft.sha256", "results/eval.json"}


def _outputs(planned):
    return set().union(*planned.values()) if planned else set()


def test_an_unchanged_config_plans_nothing(finished_run):
    workdir, _ = finished_run
    assert planned_outputs(workdir, TINY) == {}


def test_raising_reward_threshold_reruns_only_curate_and_downstream(finished_run, tmp_path):
    workdir, _ = finished_run
    planned = planned_outputs(workdir, edited_config(TINY, tmp_path / "c.yaml", **{"curate.reward_threshold": 0.5}))
    assert set(planned) == {"curate", "train", "evaluate", "score_eval", "eval_summary"}
    assert SFT_DOWNSTREAM <= _outputs(planned)
    assert "results/eval/generations/student/all.parquet" not in _outputs(planned)


def test_teacher_sampling_edits_regenerate_but_never_reprepare_data(finished_run, tmp_path):
    workdir, _ = finished_run
    for key, value in (("teacher.temperature", 0.7), ("teacher.samples_per_problem", 3)):
        planned = planned_outputs(workdir, edited_config(TINY, tmp_path / "c.yaml", **{key: value}))
        assert set(planned) == {"teacher", "reward", "curate", "train", "evaluate", "score_eval", "eval_summary"}, key
        assert {"results/teacher/00000.parquet", "results/teacher/00001.parquet"} <= planned["teacher"]
        assert "results/eval/generations/student/all.parquet" not in _outputs(planned)


def test_raising_num_samples_generates_only_the_new_shard(finished_run, tmp_path):
    workdir, _ = finished_run
    planned = planned_outputs(workdir, edited_config(TINY, tmp_path / "c.yaml", **{"data.num_samples": 12}))
    assert planned["teacher"] == {"results/teacher/00002.parquet"}
    assert planned["reward"] == {"results/scored/00002.parquet"}
    assert SFT_DOWNSTREAM <= _outputs(planned)
    assert "results/eval/generations/student/all.parquet" not in _outputs(planned)


def test_train_edits_rerun_only_training_and_the_sft_models_eval(finished_run, tmp_path):
    workdir, _ = finished_run
    for key, value in (("train.learning_rate", 3.0e-5), ("train.epochs", 2)):
        planned = planned_outputs(workdir, edited_config(TINY, tmp_path / "c.yaml", **{key: value}))
        assert set(planned) == {"train", "evaluate", "score_eval", "eval_summary"}, key
        assert _outputs(planned) == SFT_DOWNSTREAM - {"results/sft/train.parquet"} | {
            "results/train/sft/metrics.jsonl", "results/train/sft/summary.json"}


def test_eval_edits_rerun_only_evaluation(finished_run, tmp_path):
    workdir, _ = finished_run
    for key, value in (("eval.samples_per_problem", 3), ("eval.benchmarks", ["chain_sum"])):
        planned = planned_outputs(workdir, edited_config(TINY, tmp_path / "c.yaml", **{key: value}))
        assert set(planned) == {"evaluate", "score_eval", "eval_summary"}, key
        assert planned["evaluate"] == {"results/eval/generations/student/all.parquet",
                                       "results/eval/generations/sft/all.parquet",
                                       "results/eval/generations/teacher/all.parquet"}, key


def test_reward_edits_rescore_but_never_regenerate(finished_run, tmp_path):
    workdir, _ = finished_run
    planned = planned_outputs(workdir, edited_config(TINY, tmp_path / "c.yaml", **{"reward.timeout_s": 20}))
    assert set(planned) == {"reward", "curate", "train", "evaluate", "score_eval", "eval_summary"}
    assert "teacher" not in planned
    # The student's samples are rescored, not resampled; the SFT model is retrained, so it is resampled.
    assert planned["evaluate"] == {"results/eval/generations/sft/all.parquet"}
    assert {"results/eval/student.parquet", "results/eval/sft.parquet"} <= planned["score_eval"]


def test_speed_only_keys_rerun_nothing_eval_summary_and_the_report_included(finished_run, tmp_path):
    workdir, _ = finished_run
    for key, value in (("teacher.concurrency", 3), ("teacher.request_timeout_s", 99), ("teacher.max_attempts", 2),
                       ("teacher.max_failed_fraction", 0.5), ("eval.concurrency", 3), ("eval.request_timeout_s", 99),
                       ("eval.max_attempts", 2), ("server.health_timeout_s", 77), ("train.checkpoint_every", 1),
                       ("train.report_to", "tensorboard"), ("train.recompute_elementwise", False)):
        edited = edited_config(TINY, tmp_path / "c.yaml", **{key: value})
        assert planned_outputs(workdir, edited, target="results/report.html") == {}, key


def _copy_of(workdir, tmp_path):
    """A copy of the finished run, Snakemake's records included, to run jobs in: the models linked, the rest
    copied, so the finished run stays as it is."""
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, symlinks=True, ignore=shutil.ignore_patterns("base_models", "models"))
    for folder in ("base_models", "models"):
        shutil.copytree(workdir / "results" / folder, copy / "results" / folder, copy_function=os.link)
    return copy


def test_fewer_teacher_samples_per_problem_request_nothing_through_snakemake(finished_run, tmp_path):
    """The sample store survives Snakemake deleting the teacher's outputs before the rerun (in a copy of the run)."""
    workdir, _ = finished_run
    copy = _copy_of(workdir, tmp_path)
    edited = edited_config(TINY, tmp_path / "c.yaml", **{"teacher.samples_per_problem": 1})
    result = snakemake(copy, edited, "--until", "teacher", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for shard in ("00000", "00001"):
        log = (copy / "logs" / "teacher" / f"{shard}.log").read_text()
        assert "no server needed" in log and "starting vLLM" not in log
        kept = pq.read_table(copy / "results" / "teacher" / f"{shard}.parquet").to_pylist()
        before = pq.read_table(workdir / "results" / "teacher" / f"{shard}.parquet").to_pylist()
        assert kept == [row for row in before if row["sample_index"] == 0]


# Early cutoff: reruns whose outputs come out the same, run for real in a copy of the finished run. The dry runs
# above list what would run if every output changed; these show what does run.

# Rewritten by the rerun, with the same bytes: the curated set and the scores.
REMADE_THE_SAME = ("results/sft/train.parquet", "results/sft/val.parquet", "results/sft/sha256sums",
                   "results/eval/student.parquet", "results/eval/sft.parquet")
# Never rewritten: what training and evaluation made.
UNTOUCHED_BY_CUTOFF = ("results/models/sft/model.safetensors", "results/train/sft/metrics.jsonl",
                       "results/eval/generations/student/all.parquet", "results/eval/generations/sft/all.parquet")
# The report is remade after any job ran: it shows the cost ledger, which changed.
SUMMARY = ("results/eval.json",)


def _run_for_real(copy, configfile, untouched=UNTOUCHED_BY_CUTOFF + SUMMARY):
    """Run the workflow in `copy` after an edit whose reruns make the same bytes; the jobs it ran."""
    before = {name: (copy / name).read_bytes() for name in REMADE_THE_SAME}
    times = {name: (copy / name).stat().st_mtime_ns for name in untouched}
    metrics = json.loads((copy / "results" / "eval.json").read_text())["models"]
    result = snakemake(copy, configfile, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {name: (copy / name).read_bytes() for name in REMADE_THE_SAME} == before
    assert {name: (copy / name).stat().st_mtime_ns for name in untouched} == times
    assert json.loads((copy / "results" / "eval.json").read_text())["models"] == metrics
    assert planned_outputs(copy, configfile, target="results/report.html") == {}
    return ran_jobs(result)


def test_a_reward_code_edit_that_changes_no_score_retrains_and_resamples_nothing(finished_run, tmp_path):
    """The row 'reward code edited without changing any score': rescoring and the curation rerun, nothing else."""
    workdir, _ = finished_run
    copy = _copy_of(workdir, tmp_path)
    reward = checkout() / "mathsft" / "reward.py"
    original, times = reward.read_bytes(), reward.stat()
    try:
        reward.write_bytes(original + b"\n# An edit that changes no score.\n")
        ran = _run_for_real(copy, TINY)
    finally:
        reward.write_bytes(original)
        os.utime(reward, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert ran == {"reward": 2, "curate": 1, "score_eval": 3, "cost": 1, "report": 1}
    # The ledger: the reruns are this invocation's; training keeps the cost of the run that made the model.
    before = json.loads((workdir / "results" / "cost.json").read_text())
    after = json.loads((copy / "results" / "cost.json").read_text())
    now = {job["name"].split()[0] for stage in after["stages"] for job in stage["jobs"] if job["this_invocation"]}
    assert now == {"reward", "curate", "score_eval"}
    assert _stage(after, "train") == _stage(before, "train") | {"jobs": [
        job | {"this_invocation": False} for job in _stage(before, "train")["jobs"]]}


def test_raising_reward_timeout_when_nothing_timed_out_retrains_nothing(finished_run, tmp_path):
    """eval.json records the config hash, which covers reward.timeout_s (it decides scores when a check times
    out): eval.json and the report are remade with the same metrics; nothing is retrained or resampled."""
    workdir, _ = finished_run
    copy = _copy_of(workdir, tmp_path)
    ran = _run_for_real(copy, edited_config(TINY, tmp_path / "c.yaml", **{"reward.timeout_s": 20}),
                        untouched=UNTOUCHED_BY_CUTOFF)
    assert ran == {"reward": 2, "curate": 1, "score_eval": 3, "eval_summary": 1, "cost": 1, "report": 1}


def test_a_curate_edit_that_keeps_the_same_set_retrains_nothing(finished_run, tmp_path):
    """Rewards are 0 or 1: a threshold of 0.5 keeps the same traces. The SFT model's samples are rescored to the
    same bytes (see after_curate in common.smk); eval.json (its config hash) and the report are remade with the
    same metrics; nothing is retrained or resampled."""
    workdir, _ = finished_run
    copy = _copy_of(workdir, tmp_path)
    edited = edited_config(TINY, tmp_path / "c.yaml", **{"curate.reward_threshold": 0.5})
    ran = _run_for_real(copy, edited, untouched=UNTOUCHED_BY_CUTOFF)
    assert ran == {"curate": 1, "score_eval": 1, "eval_summary": 1, "cost": 1, "report": 1}
    assert json.loads((copy / "results" / "sft" / "stats.json").read_text())["params"]["reward_threshold"] == 0.5


def test_a_curate_edit_that_changes_the_set_retrains(finished_run, tmp_path):
    """The other side of the cutoff: a curated set that changes is trained on (checked as a dry run after the
    curation has run, so that the checkpoint has decided)."""
    workdir, _ = finished_run
    copy = _copy_of(workdir, tmp_path)
    edited = edited_config(TINY, tmp_path / "c.yaml", **{"curate.val_fraction": 0.5})
    result = snakemake(copy, edited, "--until", "curate", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (copy / "results/sft/train.parquet").read_bytes() != (workdir / "results/sft/train.parquet").read_bytes()
    planned = planned_outputs(copy, edited, target="results/report.html")
    assert set(planned) == {"train", "evaluate", "score_eval", "eval_summary", "cost", "report"}
    assert planned["evaluate"] == {"results/eval/generations/sft/all.parquet"}


def test_rerunning_data_preparation_that_yields_the_same_shards_makes_nothing_stale(finished_run):
    """Last in this file: it rewrites the finished run's data files (with the same rows)."""
    workdir, _ = finished_run
    before = {p.name: p.read_bytes() for p in (workdir / "results" / "data" / "shards").glob("*.parquet")}
    result = snakemake(workdir, TINY, "--forcerun", "prepare_data", "--until", "prepare_data", "results/eval.json",
                       timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    after = {p.name: p.read_bytes() for p in (workdir / "results" / "data" / "shards").glob("*.parquet")}
    assert after == before  # the same rows, byte for byte, in newer files
    assert planned_outputs(workdir, TINY) == {}
    # The data stage's cost changed: the ledger and the report that shows it are remade, nothing else.
    result = snakemake(workdir, TINY, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran_jobs(result) == {"cost": 1, "report": 1}
    assert planned_outputs(workdir, TINY, target="results/report.html") == {}


# The report and the eval.json schema.


def test_eval_json_follows_its_versioned_schema(finished_run):
    from mathsft.metrics import EVAL_JSON_VERSION, schema_errors

    workdir, _ = finished_run
    document = json.loads((workdir / "results" / "eval.json").read_text())
    assert document["schema_version"] == EVAL_JSON_VERSION
    assert schema_errors(document) == []
    for model in document["models"].values():
        assert model["sampling"]["seed"] == 0 and model["sampling"]["api"] == "chat"
        for metrics in model["benchmarks"].values():
            assert 0.0 <= metrics["maj@2"] <= 1.0
            assert sum(metrics["verifier_status"].values()) == metrics["problems"] * metrics["samples_per_problem"]


def test_report_html_embeds_its_plots_and_renders_them_in_chromium(finished_run, tmp_path):
    from test_report import PLOTS, render_in_chromium

    workdir, _ = finished_run
    report = workdir / "results" / "report.html"
    assert report.is_file(), "results/report.html missing: the finished_run fixture must target it (or rule all)"
    page = report.read_text()
    assert all(f'<figure class="plot" id="{plot}">\n<svg' in page for plot in PLOTS)
    seen = render_in_chromium(report, tmp_path)
    assert [f["id"] for f in seen["figures"]] == list(PLOTS)
    assert all(f["width"] > 200 and f["height"] > 100 and f["drawn"] > 20 for f in seen["figures"]), seen
    assert seen["requests"] == []


def test_snakemakes_own_report_collects_the_marked_outputs(finished_run, tmp_path):
    workdir, _ = finished_run
    result = snakemake(workdir, TINY, "--report", str(tmp_path / "snakemake_report.html"), timeout=300)
    log = result.stdout + result.stderr
    # --report exits 0 even when it fails: check what it says it added and that the file is there.
    assert result.returncode == 0 and "Report created" in log, log[-3000:]
    assert all(f"Adding {name}" in log for name in ("eval.json", "metrics.jsonl", "report.html")), log[-3000:]
    assert (tmp_path / "snakemake_report.html").stat().st_size > 0


def _report_reasons(workdir, configfile) -> str | None:
    """The reason a dry run of results/report.html gives for remaking it (None: not planned)."""
    result = snakemake(workdir, configfile, "-n", "results/report.html", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.strip() in ("rule report:", "localrule report:"):
            return next(l.strip() for l in lines[i:] if l.strip().startswith("reason:"))
    return None


def test_the_report_is_remade_only_through_its_inputs(finished_run, tmp_path):
    workdir, _ = finished_run
    assert _report_reasons(workdir, TINY) is None
    edited = edited_config(TINY, tmp_path / "c.yaml", **{"eval.samples_per_problem": 3})
    planned = planned_outputs(workdir, edited, target="results/report.html")
    assert set(planned) == {"evaluate", "score_eval", "eval_summary", "cost", "report"}
    reason = _report_reasons(workdir, edited)
    assert "Input files updated by another job" in reason and "Params" not in reason and "Code" not in reason
