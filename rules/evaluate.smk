rule evaluate:
    """Serve one model the way the teacher is served (or reach it at the user's server: eval.endpoints, or
    teacher.endpoint for the teacher) and sample n answers per problem of one part of its evaluation: every
    benchmark, or one (eval.jobs). It only samples: score_eval scores the samples and eval_summary computes the
    metrics (mathsft/metrics.py). The name is the stage's, which profiles and --until/-R name; run_sft_model.py does
    all three for one model by hand.

    Samples are found by problem in the stage's sample store (results/eval/generations/.samples), whichever part
    or layout drew them: a benchmark added samples only its problems, and switching eval.jobs requests nothing.
    Benchmarks are ancient() inputs with the data settings that decide their content as a param: adding training
    problems rewrites the data files but never resamples an evaluation."""
    input:
        model=eval_model_input,
        bench=lambda wildcards: ancient(expand("results/data/bench/{bench}.parquet",
                                               bench=eval_part_benchmarks(wildcards))),
        # The SFT model's evaluation comes after the curate checkpoint (early cutoff, common.smk).
        curated=after_curate,
    output:
        "results/eval/generations/{model}/{part}.parquet",
    params:
        model=eval_model_param,
        samples_per_problem=config["eval"]["samples_per_problem"],
        temperature=config["eval"]["temperature"],
        top_p=config["eval"]["top_p"],
        max_tokens=config["eval"]["max_tokens"],
        seed=config["eval"]["seed"],
        prompt_template=config["prompt"]["template"],
        server=eval_server_options,
        api=api_options("eval"),
        data=lambda wildcards: bench_identity(eval_part_benchmarks(wildcards)),
    wildcard_constraints:
        model="[^/]+",
        part="[^/]+",
    resources:
        gpu=eval_job_gpus,
        endpoint=eval_endpoint_options,
        **speed_only_resources("eval", ("concurrency", "request_timeout_s", "max_attempts")),
        **speed_only_resources("server", ("health_timeout_s",)),
    threads: 8
    conda:
        CONDA_ENV
    log:
        "logs/eval/{model}/{part}.log",
    benchmark:
        "benchmarks/eval/{model}/{part}.tsv"
    shell:
        "python {SCRIPTS:q}/run_sft_model.py --no-score --model {params.model:q} --label {wildcards.model}"
        " --benchmarks {input.bench:q} --output {output:q} --sample_store results/eval/generations/.samples"
        " --samples_per_problem {params.samples_per_problem} --temperature {params.temperature}"
        " --top_p {params.top_p} --max_tokens {params.max_tokens} --seed {params.seed}"
        " --prompt_template {params.prompt_template:q} {params.api:q} --concurrency {resources.concurrency}"
        " --request_timeout_s {resources.request_timeout_s} --max_attempts {resources.max_attempts}"
        " {params.server:q} {resources.endpoint} --health_timeout_s {resources.health_timeout_s}"
        " --server_log logs/eval/{wildcards.model}/{wildcards.part}.server.log > {log:q} 2>&1"


checkpoint score_eval:
    """Score one model's evaluation samples, its parts in benchmark order, with math-verify (the same reward code
    as the teacher's): the same rows whichever eval.jobs drew them.

    A checkpoint, with the scores' sha256 in sha256sums: a rescoring that changes no score remakes neither
    eval.json nor the report (common.smk)."""
    input:
        samples=lambda wildcards: eval_generations(wildcards.model),
        code=os.path.join(LIBRARY, "reward.py"),
    output:
        # First: what a job after it names while the checkpoint is pending (see curate).
        sha256sums="results/eval/{model}.sha256",
        scored="results/eval/{model}.parquet",
    params:
        timeout_s=config["reward"]["timeout_s"],
    # math-verify workers; capped at --cores locally, cpus-per-task on a cluster.
    threads: 8
    conda:
        CONDA_ENV
    log:
        "logs/eval/{model}.score.log",
    benchmark:
        "benchmarks/eval_scoring/{model}.tsv"
    shell:
        "python {SCRIPTS:q}/score_trajectories.py --kind eval --input {input.samples:q} --output {output.scored:q}"
        " --sha256sums {output.sha256sums:q}"
        " --timeout_s {params.timeout_s} --workers {threads} > {log:q} 2>&1"


rule eval_summary:
    """results/eval.json: metrics per model x benchmark, with provenance, checked against
    schemas/eval.schema.json, and the paired comparisons of each model with the student and the teacher (v3).
    Its log holds the tables the run prints at its end (the onsuccess handler, rules/cost.smk)."""
    input:
        scored=ancient(expand("results/eval/{model}.parquet", model=eval_labels())),
        # The metrics' and comparisons' code: editing it remakes eval.json.
        code=[os.path.join(LIBRARY, "metrics.py"), os.path.join(LIBRARY, "compare.py")],
        # Their content decides, through each one's sums (early cutoff, common.smk), not their files' times.
        **after_scored_eval(),
    output:
        report("results/eval.json", category="Evaluation", labels={"file": "eval.json"}),
    params:
        pass_k=config["eval"]["pass_k"],
        seed=config["eval"]["seed"],
        config_hash=config_hash(),
    conda:
        CONDA_ENV
    log:
        "logs/eval/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    shell:
        "python {SCRIPTS:q}/summarize_eval.py --inputs {input.scored:q} --output {output:q}"
        " --pass_k {params.pass_k} --seed {params.seed} --config_hash {params.config_hash} > {log:q} 2>&1"
