# Helpers shared by the rules. Nothing here imports torch, vLLM or transformers: a dry run stays fast.
import hashlib
import json
import math
import os

SCRIPTS = os.path.join(workflow.basedir, "scripts")
LIBRARY = os.path.join(workflow.basedir, "mathsft")
EMBEDDED = "embedded:"
# For cluster runs with --sdm conda; local runs use the venv from setup.sh. Relative to rules/.
CONDA_ENV = "../envs/mathsft.yaml"


wildcard_constraints:
    shard=r"\d{5}",
    name=r"[A-Za-z0-9_.-]+",
    model=r"[A-Za-z0-9_.-]+",


def shard_ids():
    """Static shards: shard k holds problems [k*S, (k+1)*S) of the seeded order."""
    count = math.ceil(config["data"]["num_samples"] / config["data"]["shard_size"])
    return [f"{k:05d}" for k in range(count)]


def shard_rows(wildcards):
    """Problems in one shard. A teacher param: the last shard reruns when it grows, full shards do not."""
    start = int(wildcards.shard) * config["data"]["shard_size"]
    return min(config["data"]["shard_size"], config["data"]["num_samples"] - start)


def data_identity():
    """The data settings that decide what a shard holds (not how many shards there are). Teacher jobs take
    their shard as ancient() and these as a param, so raising data.num_samples, which rewrites the shard
    files with the same rows, never regenerates existing shards."""
    return canonical(config["data"], ("source", "tasks", "benchmarks", "seed", "eval_seed", "eval_problems",
                                      "shard_size", "decontamination_ngram", "task_options"))


def bench_identity():
    """The data settings that decide what the evaluation sets hold."""
    return canonical(config["data"], ("source", "benchmarks", "eval_seed", "eval_problems", "task_options"))


def canonical(section, keys):
    """Some keys of a config section as sorted JSON: Snakemake compares params as text, so reordering
    keys in a YAML file must not read as a change."""
    return json.dumps({key: section[key] for key in keys}, sort_keys=True)


def model_path(spec):
    """Where a model spec is loaded from: embedded models are converted under results/base_models/."""
    if spec.startswith(EMBEDDED):
        return f"results/base_models/{spec[len(EMBEDDED):]}"
    return spec


def model_inputs(spec):
    """The rule input a model spec needs: the converted folder for embedded models, nothing for hub ids."""
    return [model_path(spec)] if spec.startswith(EMBEDDED) else []


def sft_model_dir():
    return f"results/models/{config['train']['run_name']}"


def eval_model_spec(label):
    """What evaluation label `label` serves: the student before SFT, the SFT run, or the teacher."""
    if label == "student":
        return model_path(config["train"]["model"])
    if label == config["train"]["run_name"] or label == "sft":
        return sft_model_dir()
    if label == "teacher":
        return model_path(config["teacher"]["model"])
    raise ValueError(f"eval.models: unknown model {label!r}")


def eval_model_param(wildcards):
    return eval_model_spec(wildcards.model)


def eval_labels():
    return [config["train"]["run_name"] if label == "sft" else label for label in config["eval"]["models"]]


def eval_model_input(wildcards):
    spec = eval_model_spec(wildcards.model)
    return [spec] if spec.startswith("results/") else []


def server_options(section):
    """Options for the managed vLLM server of a sampling script. A param: server arguments such as --dtype
    change what is generated. With several GPUs per job the model is split across them (tensor parallel)."""
    parts = [f"--server_arg={arg}" for arg in config["server"]["args"]]
    if config[section]["gpus"] > 1:
        parts.append(f"--server_arg=--tensor-parallel-size={config[section]['gpus']}")
    parts += [f"--server_env={key}={value}" for key, value in sorted(config["server"]["env"].items())]
    return " ".join(parts)


def endpoint_options(section):
    """--endpoint and --api_key_env for a server the user runs; empty when the job manages its own. A
    resource, not a param: where the model is served does not change what it samples (the model id does).
    The key itself is read from the environment at run time, never written to the command line or logs."""
    endpoint = config[section].get("endpoint")
    if not endpoint:
        return ""
    key_env = config[section].get("api_key_env")
    return f"--endpoint={endpoint}" + (f" --api_key_env={key_env}" if key_env else "")


def api_options(section):
    """--api (and --tokenizer) of a sampling job: a param, since who applies the chat template can change
    the prompt the model sees."""
    options = f"--api {config[section]['api']}"
    if config[section]["tokenizer"]:
        options += f" --tokenizer {config[section]['tokenizer']}"
    return options


def job_gpus(section):
    """GPUs a sampling job asks for: none when it only talks to an external endpoint."""
    return 0 if config[section].get("endpoint") else config[section]["gpus"]


def repo_file(path):
    """A config path: as given when it exists from the working directory, else inside the workflow."""
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(workflow.basedir, path)


def config_hash():
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
