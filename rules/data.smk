rule prepare_data:
    """Training problems (normalised, de-duplicated, decontaminated), eval sets and static shards."""
    output:
        problems="results/data/problems.parquet",
        bench=expand("results/data/bench/{bench}.parquet", bench=config["data"]["benchmarks"]),
        shards=expand("results/data/shards/{shard}.parquet", shard=shard_ids()),
        report="results/data/report.json",
    params:
        source=config["data"]["source"],
        tasks=config["data"]["tasks"],
        benchmarks=config["data"]["benchmarks"],
        num_samples=config["data"]["num_samples"],
        shard_size=config["data"]["shard_size"],
        eval_problems=config["data"]["eval_problems"],
        seed=config["data"]["seed"],
        eval_seed=config["data"]["eval_seed"],
        ngram=config["data"]["decontamination_ngram"],
        task_options=json.dumps(config["data"]["task_options"], sort_keys=True),
    conda:
        CONDA_ENV
    log:
        "logs/data/prepare.log",
    shell:
        "python {SCRIPTS}/prepare_math_data.py --source {params.source} --tasks {params.tasks}"
        " --benchmarks {params.benchmarks} --num_samples {params.num_samples} --shard_size {params.shard_size}"
        " --eval_problems {params.eval_problems} --seed {params.seed} --eval_seed {params.eval_seed}"
        " --ngram {params.ngram} --task_options {params.task_options:q} --output_dir results/data > {log} 2>&1"
