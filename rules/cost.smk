# The cost ledger, results/cost.json (mathsft/cost.py), from each job's benchmark file. Those that exist are its
# inputs: a job that ran rewrote its benchmark (new timings: never the same bytes), so the ledger is rewritten
# whenever any job ran, even one whose output came out the same (early cutoff). One that does not exist yet is
# read if it appears but not named: a job made before its rule kept one would otherwise run again.
import time
import types

INVOCATION_START_FILE = ".snakemake/mathsft/invocation_start"


def cost_stages_sft():
    """Whether the run makes an SFT model: the teacher, reward, curate and train stages are in the ledger."""
    return config["train"]["run_name"] in eval_labels()


def cost_model_names():
    """The embedded models the run converts (prepare_model jobs)."""
    sections = [{"student": "train", "teacher": "teacher"}.get(label) for label in eval_labels()
                if not eval_endpoint(label)]
    if cost_stages_sft():
        sections += ([] if config["teacher"]["endpoint"] else ["teacher"]) + ["train"]
    specs = [config[section]["model"] for section in dict.fromkeys(sections) if section]
    return list(dict.fromkeys(spec[len(EMBEDDED):] for spec in specs if spec.startswith(EMBEDDED)))


def cost_jobs():
    """Every job whose cost the ledger counts, as STAGE:NAME:GPUS:BENCHMARK (scripts/write_cost.py --job)."""
    jobs = [f"models:prepare_model {name}:0:benchmarks/models/{name}.tsv" for name in cost_model_names()]
    for folder, (hub, _) in hub_models().items():
        jobs.append(f"models:fetch_model {hub}:0:benchmarks/hub_models/{os.path.basename(folder)}.tsv")
    jobs += [f"data:fetch_dataset {name}:0:benchmarks/data/fetch_{name}.tsv" for name in hub_datasets()]
    jobs.append("data:prepare_data:0:benchmarks/data/prepare.tsv")
    if cost_stages_sft():
        gpus = job_gpus("teacher")
        jobs += [f"teacher:teacher {shard}:{gpus}:benchmarks/teacher/{shard}.tsv" for shard in shard_ids()]
        jobs += [f"reward:reward {shard}:0:benchmarks/reward/{shard}.tsv" for shard in shard_ids()]
        jobs.append("curate:curate:0:benchmarks/curate.tsv")
        run = config["train"]["run_name"]
        jobs.append(f"train:train {run}:{config['train']['gpus'] * config['train']['nodes']}:benchmarks/train/{run}.tsv")
    for label in eval_labels():
        gpus = eval_job_gpus(types.SimpleNamespace(model=label))
        jobs += [f"evaluate:evaluate {label}/{part}:{gpus}:benchmarks/eval/{label}/{part}.tsv" for part in eval_parts()]
        jobs.append(f"eval_scoring:score_eval {label}:0:benchmarks/eval_scoring/{label}.tsv")
    jobs.append("summary:eval_summary:0:benchmarks/summary.tsv")
    return jobs


def cost_benchmarks(wildcards):
    """The benchmark files of the ledger's jobs that exist, once every checkpoint before the ledger has run (this
    input function waits for them, so that it lists the files of the jobs that ran before). Not the summary's:
    eval_summary runs after the last checkpoint, and its file appearing then would change this list between the
    run that wrote the ledger and the next one, which would then rewrite it."""
    for label in eval_labels():
        checkpoints.score_eval.get(model=label)
    if cost_stages_sft():
        checkpoints.curate.get()
    from mathsft.cost import Job

    jobs = [Job.parse(job) for job in cost_jobs()]
    return [job.benchmark for job in jobs if job.stage != "summary" and os.path.exists(job.benchmark)]


def cost_inputs():
    """The files the ledger reads besides the benchmarks: the samples (tokens), the training metrics, the
    curation funnel (kept trajectories) and eval.json (the comparisons)."""
    inputs = {"eval_samples": [path for label in eval_labels() for path in eval_generations(label)],
              "eval": "results/eval.json",
              "code": os.path.join(LIBRARY, "cost.py")}
    if cost_stages_sft():
        inputs |= {"teacher": expand("results/teacher/{shard}.parquet", shard=shard_ids()),
                   "stats": "results/sft/stats.json",
                   "train_metrics": f"results/train/{config['train']['run_name']}/metrics.jsonl"}
    return inputs


def cost_options():
    """write_cost.py's source files beyond the benchmarks, as argv words."""
    inputs = cost_inputs()
    words = ["--eval_samples", *inputs["eval_samples"], "--eval_json", inputs["eval"]]
    if cost_stages_sft():
        words += ["--teacher_samples", *inputs["teacher"], "--train_metrics", inputs["train_metrics"],
                  "--curate_stats", inputs["stats"]]
    return words


def record_invocation_start():
    """onstart: when this invocation began, for the ledger's "this invocation" totals (jobs re-read nothing here:
    a cluster job's own Snakemake runs with --no-hooks)."""
    os.makedirs(os.path.dirname(INVOCATION_START_FILE), exist_ok=True)
    with open(INVOCATION_START_FILE, "w") as handle:
        handle.write(f"{time.time():.3f}\n")


def print_run_summary():
    """onsuccess: the end-of-run summary (what the teacher's max_tokens cost; pass@1, every metric, the paired
    comparisons; the cost ledger) from the stats.json, eval.json and cost.json this invocation wrote."""
    from mathsft.cost import read_invocation_start
    from mathsft.summary import print_run_summary as print_summary

    print_summary("results/eval.json", "results/cost.json", read_invocation_start(INVOCATION_START_FILE),
                  stats_path="results/sft/stats.json")


rule cost:
    """results/cost.json: the cost ledger (mathsft/cost.py), checked against schemas/cost.schema.json."""
    input:
        **cost_inputs(),
        benchmarks=cost_benchmarks,
        # After every checkpoint before it (early cutoff, common.smk).
        **after_scored_eval(),
    output:
        report("results/cost.json", category="Evaluation", labels={"file": "cost.json"}),
    params:
        jobs=cost_jobs(),
        options=cost_options(),
    localrule: True
    conda:
        CONDA_ENV
    log:
        "logs/cost.log",
    benchmark:
        "benchmarks/cost.tsv"
    shell:
        "python {SCRIPTS:q}/write_cost.py --job {params.jobs:q} {params.options:q}"
        " --invocation_start_file {INVOCATION_START_FILE:q} --output {output:q} > {log:q} 2>&1"
