rule prepare_model:
    """Join an embedded model's GGUF parts, check the sha256, convert once to a float32 HF folder."""
    output:
        directory("results/base_models/{name}"),
    conda:
        CONDA_ENV
    log:
        "logs/models/{name}.log",
    benchmark:
        "benchmarks/models/{name}.tsv"
    resources:
        mem_mb=8000,
    shell:
        "python {SCRIPTS:q}/prepare_model.py --name {wildcards.name} --output {output:q} > {log:q} 2>&1"
