rule train:
    """Fine-tune the student with DeepSpeed; exports a Hugging Face folder that vLLM loads."""
    input:
        train="results/sft/train.parquet",
        val="results/sft/val.parquet",
        model=model_inputs(config["train"]["model"]),
        deepspeed=repo_file(config["train"]["deepspeed"]),
    output:
        model=directory("results/models/{run}"),
        metrics="results/train/{run}/metrics.jsonl",
        summary="results/train/{run}/summary.json",
    params:
        model=model_path(config["train"]["model"]),
        epochs=config["train"]["epochs"],
        learning_rate=config["train"]["learning_rate"],
        warmup_ratio=config["train"]["warmup_ratio"],
        weight_decay=config["train"]["weight_decay"],
        max_grad_norm=config["train"]["max_grad_norm"],
        global_batch_size=config["train"]["global_batch_size"],
        micro_batch_size_per_device=config["train"]["micro_batch_size_per_device"],
        max_length=config["train"]["max_length"],
        gradient_checkpointing="--gradient_checkpointing" if config["train"]["gradient_checkpointing"] else "",
        seed=config["train"]["seed"],
    resources:
        gpu=config["train"]["gpus"],
    threads: 8
    conda:
        CONDA_ENV
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    shell:
        "python {SCRIPTS}/train_sft.py --model {params.model} --train_files {input.train}"
        " --val_files {input.val} --output_dir {output.model} --metrics {output.metrics}"
        " --summary {output.summary} --deepspeed {input.deepspeed} --epochs {params.epochs}"
        " --learning_rate {params.learning_rate} --warmup_ratio {params.warmup_ratio}"
        " --weight_decay {params.weight_decay} --max_grad_norm {params.max_grad_norm}"
        " --global_batch_size {params.global_batch_size}"
        " --micro_batch_size_per_device {params.micro_batch_size_per_device}"
        " --max_length {params.max_length} {params.gradient_checkpointing} --seed {params.seed}"
        " --threads {threads} > {log} 2>&1"
