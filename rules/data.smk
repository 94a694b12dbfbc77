rule fetch_dataset:
    """One split of a hub dataset, all columns, to a local parquet file. A local rule: compute nodes often
    have no internet. Pin `revision` in the dataset's spec for a reproducible run."""
    output:
        "results/data/raw/{name}.parquet",
    params:
        options=fetch_options,
    localrule: True
    conda:
        CONDA_ENV
    log:
        "logs/data/fetch_{name}.log",
    benchmark:
        "benchmarks/data/fetch_{name}.tsv"
    shell:
        "python {SCRIPTS:q}/fetch_dataset.py --name {wildcards.name} {params.options:q}"
        " --output {output:q} > {log:q} 2>&1"


rule prepare_data:
    """Training problems (normalised, de-duplicated, decontaminated), eval sets and static shards.

    It waits for the fetched hub models, which it does not read: every job that loads one comes after it (the
    teacher shards, the evaluation sets). Those jobs name the model by hub id and revision, and find it in the
    store (common.smk), so that a run made before the store existed reruns only this job (the same bytes: its
    outputs are ancient() inputs with their identity as params). See fetch_model for how the edge is made."""
    input:
        data_inputs(),
        **fetched_models(),
    output:
        problems="results/data/problems.parquet",
        bench=expand("results/data/bench/{bench}.parquet", bench=config["data"]["benchmarks"]),
        shards=expand("results/data/shards/{shard}.parquet", shard=shard_ids()),
        report="results/data/report.json",
    params:
        options=data_options(),
    conda:
        CONDA_ENV
    log:
        "logs/data/prepare.log",
    benchmark:
        "benchmarks/data/prepare.tsv"
    shell:
        "python {SCRIPTS:q}/prepare_math_data.py {params.options:q} --output_dir results/data > {log:q} 2>&1"
