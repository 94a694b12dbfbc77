rule teacher:
    """Sample teacher trajectories for one shard from a vLLM server (managed by the job, or external).

    Sampling settings are params (an edit regenerates); concurrency and timeouts are resources, which never
    trigger a rerun: they change how fast generation goes, not what it produces."""
    input:
        shard=ancient("results/data/shards/{shard}.parquet"),
        model=model_inputs(config["teacher"]["model"]),
    output:
        "results/teacher/{shard}.parquet",
    params:
        model=model_path(config["teacher"]["model"]),
        samples_per_problem=config["teacher"]["samples_per_problem"],
        temperature=config["teacher"]["temperature"],
        top_p=config["teacher"]["top_p"],
        max_tokens=config["teacher"]["max_tokens"],
        seed=config["teacher"]["seed"],
        prompt_template=config["prompt"]["template"],
        server=server_options("teacher"),
        api=api_options("teacher"),
        data=data_identity(),
        rows=shard_rows,
    resources:
        gpu=job_gpus("teacher"),
        endpoint=endpoint_options("teacher"),
        concurrency=config["teacher"]["concurrency"],
        request_timeout_s=config["teacher"]["request_timeout_s"],
        max_attempts=config["teacher"]["max_attempts"],
        max_failed_fraction=str(config["teacher"]["max_failed_fraction"]),
        health_timeout_s=config["server"]["health_timeout_s"],
    threads: 8
    conda:
        CONDA_ENV
    log:
        "logs/teacher/{shard}.log",
    benchmark:
        "benchmarks/teacher/{shard}.tsv"
    shell:
        "python {SCRIPTS}/generate_sft_data.py --shard {input.shard} --output {output}"
        " --model {params.model} --served_model_name teacher"
        " --samples_per_problem {params.samples_per_problem} --temperature {params.temperature}"
        " --top_p {params.top_p} --max_tokens {params.max_tokens} --seed {params.seed}"
        " --prompt_template {params.prompt_template} {params.api} --concurrency {resources.concurrency}"
        " --request_timeout_s {resources.request_timeout_s} --max_attempts {resources.max_attempts}"
        " --max_failed_fraction {resources.max_failed_fraction} {params.server} {resources.endpoint} --health_timeout_s {resources.health_timeout_s}"
        " --server_log logs/teacher/{wildcards.shard}.server.log > {log} 2>&1"
