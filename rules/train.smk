rule train:
    """Fine-tune the student with DeepSpeed; exports a Hugging Face folder that vLLM loads."""
    input:
        # The curated set's content decides, through its sums (early cutoff, common.smk), not its files' times.
        train=ancient("results/sft/train.parquet"),
        val=ancient("results/sft/val.parquet"),
        sha256sums=curated_sums,
        model=train_model_input,
        deepspeed=repo_file(config["train"]["deepspeed"]),
    output:
        model=directory("results/models/{run}"),
        metrics=report("results/train/{run}/metrics.jsonl", category="Training",
                       labels={"run": "{run}", "file": "metrics.jsonl"}),
        summary=report("results/train/{run}/summary.json", category="Training",
                       labels={"run": "{run}", "file": "summary.json"}),
    params:
        model=model_path(config["train"]["model"]),
        revision=revision_words("train"),
        epochs=config["train"]["epochs"],
        learning_rate=config["train"]["learning_rate"],
        warmup_ratio=config["train"]["warmup_ratio"],
        weight_decay=config["train"]["weight_decay"],
        max_grad_norm=config["train"]["max_grad_norm"],
        global_batch_size=config["train"]["global_batch_size"],
        micro_batch_size_per_device=config["train"]["micro_batch_size_per_device"],
        max_length=config["train"]["max_length"],
        gradient_checkpointing="--gradient_checkpointing" if config["train"]["gradient_checkpointing"] else "",
        liger_kernel="--liger_kernel" if config["train"]["liger_kernel"] else "",
        seed=config["train"]["seed"],
        packing="--packing" if config["train"]["packing"] else "--no-packing",
        lora=["--lora_rank", config["train"]["lora_rank"], "--lora_alpha", config["train"]["lora_alpha"],
              "--lora_dropout", config["train"]["lora_dropout"]],
    resources:
        # GPUs (train.gpus per node) and nodes: see train_cluster_resources() in common.smk.
        **train_cluster_resources(),
        # python, torchrun, or srun + torchrun across nodes: see train_launch() in common.smk.
        launch=train_launch(),
        # How often states are saved, experiment tracking (none, tensorboard) and which activations are
        # recomputed do not change the result.
        **speed_only_resources("train", ("checkpoint_every", "report_to", "recompute_elementwise")),
    threads: 8
    conda:
        CONDA_ENV
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    shell:
        "{resources.launch} {SCRIPTS:q}/train_sft.py --model {params.model:q} {params.revision:q} --train_files {input.train:q}"
        " --val_files {input.val:q} --output_dir {output.model:q} --metrics {output.metrics:q}"
        " --summary {output.summary:q} --deepspeed {input.deepspeed:q} --epochs {params.epochs}"
        " --learning_rate {params.learning_rate} --warmup_ratio {params.warmup_ratio}"
        " --weight_decay {params.weight_decay} --max_grad_norm {params.max_grad_norm}"
        " --global_batch_size {params.global_batch_size}"
        " --micro_batch_size_per_device {params.micro_batch_size_per_device}"
        " --max_length {params.max_length} {params.gradient_checkpointing} {resources.recompute_elementwise}"
        " {params.liger_kernel} --seed {params.seed}"
        " {params.packing} {params.lora:q} --checkpoint_every {resources.checkpoint_every}"
        " --report_to {resources.report_to} --tracking_dir results/train/{wildcards.run}/tensorboard"
        " --checkpoint_dir results/train/{wildcards.run}/checkpoints"
        " --threads {threads} > {log:q} 2>&1"
