rule teacher:
    """Sample teacher trajectories for one shard from a vLLM server (managed by the job, or the user's own at
    teacher.endpoint, where requests name teacher.model).

    Sampling settings are params (an edit regenerates); concurrency, timeouts and the endpoint are resources,
    which never trigger a rerun: they change how fast generation goes, not what it produces."""
    input:
        shard=ancient("results/data/shards/{shard}.parquet"),
        model=teacher_model_input,
    output:
        "results/teacher/{shard}.parquet",
    params:
        model=teacher_model(),
        samples_per_problem=config["teacher"]["samples_per_problem"],
        temperature=config["teacher"]["temperature"],
        top_p=config["teacher"]["top_p"],
        max_tokens=config["teacher"]["max_tokens"],
        seed=config["teacher"]["seed"],
        prompt_template=config["prompt"]["template"],
        server=server_options("teacher") + revision_words("teacher"),
        api=api_options("teacher"),
        data=data_identity(),
        rows=shard_rows,
    resources:
        gpu=job_gpus("teacher"),
        endpoint=teacher_endpoint_options(),
        **speed_only_resources("teacher", ("concurrency", "request_timeout_s", "max_attempts", "max_failed_fraction")),
        **speed_only_resources("server", ("health_timeout_s",)),
    threads: 8
    conda:
        CONDA_ENV
    log:
        "logs/teacher/{shard}.log",
    benchmark:
        "benchmarks/teacher/{shard}.tsv"
    shell:
        "python {SCRIPTS:q}/generate_sft_data.py --shard {input.shard:q} --output {output:q}"
        " --model {params.model:q}"
        " --samples_per_problem {params.samples_per_problem} --temperature {params.temperature}"
        " --top_p {params.top_p} --max_tokens {params.max_tokens} --seed {params.seed}"
        " --prompt_template {params.prompt_template:q} {params.api:q} --concurrency {resources.concurrency}"
        " --request_timeout_s {resources.request_timeout_s} --max_attempts {resources.max_attempts}"
        " --max_failed_fraction {resources.max_failed_fraction} {params.server:q} {resources.endpoint}"
        " --health_timeout_s {resources.health_timeout_s}"
        " --server_log logs/teacher/{wildcards.shard}.server.log > {log:q} 2>&1"
