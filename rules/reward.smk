rule reward:
    """Score one shard with math-verify. The reward code is an input: editing it rescores, never regenerates."""
    input:
        trajectories="results/teacher/{shard}.parquet",
        code=os.path.join(LIBRARY, "reward.py"),
    output:
        "results/scored/{shard}.parquet",
    params:
        timeout_s=config["reward"]["timeout_s"],
    # math-verify workers; capped at --cores locally, cpus-per-task on a cluster.
    threads: 8
    conda:
        CONDA_ENV
    log:
        "logs/reward/{shard}.log",
    benchmark:
        "benchmarks/reward/{shard}.tsv"
    shell:
        "python {SCRIPTS:q}/score_trajectories.py --kind teacher --input {input.trajectories:q} --output {output:q}"
        " --timeout_s {params.timeout_s} --workers {threads} > {log:q} 2>&1"
