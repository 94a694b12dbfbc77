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
    """Training problems (normalised, de-duplicated, decontaminated), eval sets and static shards."""
    input:
        data_inputs(),
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
