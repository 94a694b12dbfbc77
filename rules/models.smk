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


checkpoint fetch_model:
    """One hub model at its revision, into the run's model store: safetensors weights, config, tokenizer and
    generation config, checked complete against the hub's sha256, with a manifest. A local rule: compute nodes
    often have no internet, and their jobs read this folder offline. A gated model's token comes from the
    environment (HF_TOKEN) and is written nowhere.

    prepare_data waits for it (an input it does not read), so every job that loads a model comes after it. Two
    things keep that edge from hiding or causing reruns. Snakemake never weighs the params of a job downstream of
    one that runs, and skips it where all the files between are ancient(): moving teacher.revision would refetch
    and leave the teacher's samples stale until the next invocation. As a checkpoint, once it has run Snakemake
    decides the jobs after it again, on their own params. And the folder is one per hub id, an ancient() input:
    prepare_data's inputs stay the same whatever the revision, so it never reruns for a fetch."""
    output:
        directory(MODEL_STORE + "/{hub_model}"),
    params:
        options=fetch_model_options,
    localrule: True
    conda:
        CONDA_ENV
    log:
        "logs/models/fetch_{hub_model}.log",
    benchmark:
        "benchmarks/models/fetch_{hub_model}.tsv"
    shell:
        "python {SCRIPTS:q}/fetch_model.py {params.options:q} --output {output:q} > {log:q} 2>&1"
