checkpoint curate:
    """One DuckDB query over every scored shard: the SFT train/val sets and the funnel in stats.json.

    A checkpoint, with the train/val sets' sha256 in sha256sums: a curation that keeps the same traces (after a
    rescoring that changed no score, or a curate edit that keeps the same set) retrains nothing (common.smk)."""
    input:
        scored=expand("results/scored/{shard}.parquet", shard=shard_ids()),
        sql=os.path.join(LIBRARY, "sql", "curate.sql"),
    output:
        # First: the file a job after the checkpoint names while it is pending. Not the data files, which those
        # jobs take as ancient(): a dry run would then not list them.
        sha256sums="results/sft/sha256sums",
        train="results/sft/train.parquet",
        val="results/sft/val.parquet",
        stats=report("results/sft/stats.json", category="Curation", labels={"file": "stats.json"}),
    params:
        reward_threshold=config["curate"]["reward_threshold"],
        max_traces_per_problem=config["curate"]["max_traces_per_problem"],
        val_fraction=config["curate"]["val_fraction"],
        selection=config["curate"]["selection"],
        seed=config["curate"]["seed"],
        # Traces longer than training takes are dropped here (counted), never truncated.
        max_length=config["train"]["max_length"],
    conda:
        CONDA_ENV
    log:
        "logs/curate.log",
    benchmark:
        "benchmarks/curate.tsv"
    shell:
        "python {SCRIPTS:q}/curate_sft.py --inputs {input.scored:q} --train {output.train:q} --val {output.val:q}"
        " --stats {output.stats:q} --sha256sums {output.sha256sums:q} --reward_threshold {params.reward_threshold}"
        " --max_traces_per_problem {params.max_traces_per_problem} --val_fraction {params.val_fraction}"
        " --selection {params.selection} --seed {params.seed} --max_length {params.max_length}"
        " > {log:q} 2>&1"
