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

    Each job that loads a hub model (teacher, train, evaluate) takes its folder as an input, ancient() and through
    this checkpoint. Snakemake weighs no params of a job downstream of one that runs: with a plain rule, a moved
    teacher.revision would refetch, and the teacher's samples of the old revision would stay until the next
    invocation. Once a checkpoint has run, Snakemake decides the jobs after it again, on their own params and
    files: a moved revision samples again, and a refetch of the same revision (the folder deleted) reruns nothing
    else. One folder per hub id, whatever the revision: a job's inputs stay the same when a pin moves."""
    output:
        directory(MODEL_STORE + "/{hub_model}"),
    params:
        options=fetch_model_options,
    localrule: True
    conda:
        CONDA_ENV
    log:
        "logs/hub_models/{hub_model}.log",
    benchmark:
        "benchmarks/hub_models/{hub_model}.tsv"
    shell:
        "python {SCRIPTS:q}/fetch_model.py {params.options:q} --output {output:q} > {log:q} 2>&1"
