# Helpers shared by the rules. Nothing here imports torch, vLLM or transformers: a dry run stays fast.
import functools
import hashlib
import json
import os
import shlex

from mathsft.data import SHARD_NAME_PATTERN, shard_count, shard_name, shard_range
from mathsft.hub_models import STORE_ENV, is_hub_id, store_folder
from mathsft.io import file_sha256
from mathsft.length_fit import length_errors
from mathsft.models import EMBEDDED_PREFIX as EMBEDDED
from mathsft.serve import check_server_settings
from mathsft.sources import check_datasets, check_source, dataset_entry, read_catalog

SCRIPTS = os.path.join(workflow.basedir, "scripts")
LIBRARY = os.path.join(workflow.basedir, "mathsft")
# For cluster runs with --sdm conda; local runs use the venv from setup.sh. Relative to rules/.
CONDA_ENV = "../envs/mathsft.yaml"
# The run's model store: each hub model the config loads, fetched once by the local fetch_model rule. Its jobs
# (and every process they start) find the store through the environment, and run with the hub's offline switches
# on (mathsft.hub_models). Not a param nor a word of a command: where the weights are read decides nothing they
# compute, and a command or params that changed would rerun every finished run.
MODEL_STORE = "results/hub_models"
os.environ[STORE_ENV] = os.path.abspath(MODEL_STORE)


wildcard_constraints:
    shard=SHARD_NAME_PATTERN,
    hub_model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    name=r"[A-Za-z0-9_-][A-Za-z0-9_.-]*",
    model=r"[A-Za-z0-9_-][A-Za-z0-9_.-]*",


def shard_ids():
    """Static shards (mathsft.data.shard_bounds): shard k holds problems [k*S, (k+1)*S) of the seeded order."""
    return [shard_name(k) for k in range(shard_count(config["data"]["num_samples"], config["data"]["shard_size"]))]


def shard_rows(wildcards):
    """Problems in one shard. A teacher param: the last shard reruns when it grows, full shards do not."""
    start, stop = shard_range(int(wildcards.shard), config["data"]["num_samples"], config["data"]["shard_size"])
    return stop - start


# The data settings of each source, in the order prepare_math_data.py takes them: config key, option, and which
# identity param holds the key. Every key is passed (data_options). "count": neither (it decides only how many
# shards there are); "shards": the teacher's (data_identity); "bench": the teacher's and evaluation's
# (bench_identity). `datasets` stands for the datasets in use: their specs as options; their specs and file
# contents as identity, the evaluated ones' for the evaluation sets. The third column is the params' text that
# finished runs recorded: moving a key to another column reruns every teacher shard or evaluation.
DATA_SETTINGS = {
    "reasoning_gym": (
        ("source", "--source", "bench"),
        ("num_samples", "--num_samples", "count"),
        ("shard_size", "--shard_size", "shards"),
        ("seed", "--seed", "shards"),
        ("decontamination_ngram", "--ngram", "shards"),
        ("benchmarks", "--benchmarks", "bench"),
        ("tasks", "--tasks", "shards"),
        ("eval_problems", "--eval_problems", "bench"),
        ("eval_seed", "--eval_seed", "bench"),
        ("task_options", "--task_options", "bench"),
    ),
    "datasets": (  # hub and files
        ("source", "--source", "shards"),
        ("num_samples", "--num_samples", "count"),
        ("shard_size", "--shard_size", "shards"),
        ("seed", "--seed", "shards"),
        ("decontamination_ngram", "--ngram", "shards"),
        ("benchmarks", "--benchmarks", "shards"),
        ("train_sets", "--train_sets", "shards"),
        ("max_problem_chars", "--max_problem_chars", "shards"),
        ("datasets", "--datasets", "bench"),
    ),
}


def data_settings(decides=None):
    """DATA_SETTINGS of the configured source, all of them or those whose key decides `decides`."""
    settings = DATA_SETTINGS["reasoning_gym" if config["data"]["source"] == "reasoning_gym" else "datasets"]
    return [setting for setting in settings if decides is None or setting[2] in decides]


def data_identity():
    """The data settings that decide what a shard holds (not how many shards there are). Teacher jobs take
    their shard as ancient() and these as a param, so raising data.num_samples, which rewrites the shard
    files with the same rows, never regenerates existing shards. The evaluation sets count too: training
    problems that overlap them are removed."""
    identities = {"datasets": dataset_identities(datasets_in_use())}
    return canonical(config["data"] | identities, [key for key, _, _ in data_settings(("shards", "bench"))])


def bench_identity(benchmarks):
    """The data settings that decide what the evaluation sets `benchmarks` hold: each is drawn or read on its own,
    so another benchmark added or removed is no change to them."""
    evaluated = benchmarks if config["data"]["source"] != "reasoning_gym" else []
    identities = {"datasets": dataset_identities(evaluated), "benchmarks": benchmarks}
    return canonical(config["data"] | identities, [key for key, _, _ in data_settings(("bench",))])


def eval_benchmarks():
    """The benchmarks evaluated: eval.benchmarks, or every prepared one (data.benchmarks) when unset."""
    chosen = config["eval"]["benchmarks"]
    if chosen is None:
        return config["data"]["benchmarks"]
    unknown = [name for name in chosen if name not in config["data"]["benchmarks"]]
    if unknown:
        raise ValueError(f"eval.benchmarks: {', '.join(unknown)} not in data.benchmarks "
                         f"({', '.join(config['data']['benchmarks'])}); prepare them there first")
    return chosen


# The evaluation part that holds every benchmark (eval.jobs: per_model); the schema keeps it from naming one.
EVERY_BENCHMARK = "all"


def eval_parts():
    """The parts of each model's evaluation, one job each: every benchmark in one (eval.jobs: per_model: one server
    start per model) or one per benchmark (per_benchmark: a cluster samples them side by side, and a benchmark
    added is a job added)."""
    return [EVERY_BENCHMARK] if config["eval"]["jobs"] == "per_model" else eval_benchmarks()


def eval_part_benchmarks(wildcards):
    """The benchmarks an evaluation part samples."""
    if wildcards.part == EVERY_BENCHMARK:
        return eval_benchmarks()
    if wildcards.part not in eval_benchmarks():
        raise ValueError(f"results/eval/generations/{wildcards.model}/{wildcards.part}.parquet: {wildcards.part} "
                         f"is not an evaluated benchmark ({', '.join(eval_benchmarks())})")
    return [wildcards.part]


def eval_generations(label):
    """A model's evaluation samples, one file per part (eval_parts), in benchmark order."""
    return expand("results/eval/generations/{model}/{part}.parquet", model=label, part=eval_parts())


# Every dataset the config can name (hub or files sources): config/datasets.yaml, overridden and extended by
# data.datasets, checked once here against schemas/datasets.schema.json, as a workflow checks its sample sheet.
DATASETS = check_datasets(read_catalog(os.path.join(workflow.basedir, "config", "datasets.yaml"))
                          | config["data"]["datasets"])


def dataset_spec(name):
    """The spec of one dataset in use (checked below)."""
    return dataset_entry(name, DATASETS)


def datasets_in_use():
    """The datasets of data.train_sets and data.benchmarks, each once (none for reasoning_gym)."""
    if config["data"]["source"] == "reasoning_gym":
        return []
    return list(dict.fromkeys(config["data"]["train_sets"] + config["data"]["benchmarks"]))


# Each dataset in use is known, and a hub dataset only with source: hub; checked once, before any job.
check_source(config["data"]["source"], {name: dataset_spec(name).get("hub") for name in datasets_in_use()})


@functools.cache
def local_file_sha256(path):
    """A local dataset file's sha256, hashed once per Snakemake run (both identity params name it)."""
    return file_sha256(path)


def dataset_identities(names):
    """What decides a dataset's rows: its spec, and for a local file its content hash (editing the file in
    place is a change; touching it is not)."""
    identities = {}
    for name in names:
        spec = dataset_spec(name)
        identities[name] = dict(spec)
        if spec.get("path") and os.path.exists(spec["path"]):
            identities[name]["sha256"] = local_file_sha256(spec["path"])
    return identities


def hub_datasets():
    """Datasets fetched from the hub by the local fetch_dataset rule (none for other sources)."""
    return [name for name in datasets_in_use() if dataset_spec(name).get("hub")]


def data_inputs():
    """Files the data stage reads: fetched hub splits and local dataset files."""
    return [f"results/data/raw/{name}.parquet" if dataset_spec(name).get("hub") else dataset_spec(name)["path"]
            for name in datasets_in_use()]


def data_options():
    """prepare_math_data.py options for the configured source (DATA_SETTINGS), as argv words (a param: all of them
    decide the data; the rule quotes each word): lists as one word each, mappings as sorted JSON, and for hub
    datasets where their fetched copy lies."""
    values = config["data"] | {"datasets": {name: dataset_spec(name) for name in datasets_in_use()}}
    words = []
    for key, option, _ in data_settings():
        words += [option, *option_values(values[key])]
    return words + [f"--dataset_file={name}=results/data/raw/{name}.parquet" for name in hub_datasets()]


def option_values(value):
    """The argv words after an option: a list's items, a mapping as sorted JSON, else the value itself."""
    if isinstance(value, list):
        return value
    return [json.dumps(value, sort_keys=True) if isinstance(value, dict) else value]


def fetch_options(wildcards):
    """fetch_dataset.py options of one hub dataset, as argv words: its id and the split, subset and revision given.
    A param, and the only one: these decide what is fetched (all columns), so editing them refetches; the column
    mapping is applied later (prepare_data) and editing it does not."""
    spec = dataset_spec(wildcards.name)
    words = ["--hub", spec["hub"]]
    for key in ("split", "subset", "revision"):
        if spec.get(key):
            words += [f"--{key}", spec[key]]
    return words


def canonical(section, keys):
    """Some keys of a config section as sorted JSON: Snakemake compares params as text, so reordering
    keys in a YAML file must not read as a change."""
    return json.dumps({key: section[key] for key in keys}, sort_keys=True)


def model_path(spec):
    """Where a model spec is loaded from: embedded models are converted under results/base_models/."""
    if spec.startswith(EMBEDDED):
        return f"results/base_models/{spec[len(EMBEDDED):]}"
    return spec


def hub_models():
    """The hub models the run loads, as {store folder: (hub id, revision)}: the teacher (unless the user serves
    it) and the student, each at its pinned revision (one per hub id: check_config)."""
    models = {}
    for section in ("teacher", "train"):
        spec, revision = config[section]["model"], config[section]["revision"]
        if not (section == "teacher" and config["teacher"]["endpoint"]) and is_hub_id(spec):
            models[str(store_folder(MODEL_STORE, spec))] = (spec, revision)
    return models


def fetch_model_options(wildcards):
    """fetch_model.py's --hub and --revision for one store folder (a param: they decide what is fetched)."""
    folder, models = f"{MODEL_STORE}/{wildcards.hub_model}", hub_models()
    if folder not in models:
        raise ValueError(f"{folder}: no model of this config is kept there ({', '.join(models) or 'none'})")
    hub, revision = models[folder]
    return ["--hub", hub] + (["--revision", revision] if revision else [])


def model_input(spec):
    """What a job that loads the model spec `spec` takes as input (in an input function): an embedded model's
    converted folder; a hub model's folder in the store, through the fetch_model checkpoint and as ancient()
    (rules/models.smk says why both); nothing for a local folder."""
    if spec.startswith(EMBEDDED):
        return [model_path(spec)]
    if is_hub_id(spec):
        return [ancient(checkpoints.fetch_model.get(hub_model=store_folder(MODEL_STORE, spec).name).output[0])]
    return []


def train_model_input(wildcards):
    return model_input(config["train"]["model"])


def sft_model_dir():
    return f"results/models/{config['train']['run_name']}"


# Evaluation labels with a fixed meaning; eval.endpoints adds labels of its own.
EVAL_LABELS = ("student", "sft", "teacher")


def eval_model_spec(label):
    """What evaluation label `label` serves: the student before SFT, the SFT run, or the teacher."""
    if label == "student":
        return model_path(config["train"]["model"])
    if label == config["train"]["run_name"] or label == "sft":
        return sft_model_dir()
    if label == "teacher":
        return model_path(config["teacher"]["model"])
    raise ValueError(f"eval.models: unknown model {label!r}")


def eval_endpoint(label):
    """The server a label is sampled from when the user runs it: {endpoint, model (its name there), api_key_env},
    or None when the evaluation job serves the model itself."""
    if label in config["eval"]["endpoints"]:
        return config["eval"]["endpoints"][label]
    if label == "teacher" and config["teacher"]["endpoint"]:
        teacher = config["teacher"]
        return {"endpoint": teacher["endpoint"], "model": teacher["model"], "api_key_env": teacher["api_key_env"]}
    return None


def eval_model_param(wildcards):
    """--model of an evaluation job: the name at the user's server, else the path or id the job serves."""
    external = eval_endpoint(wildcards.model)
    return external["model"] if external else eval_model_spec(wildcards.model)


def eval_labels():
    return [config["train"]["run_name"] if label == "sft" else label for label in config["eval"]["models"]]


def eval_model_input(wildcards):
    if eval_endpoint(wildcards.model):
        return []
    if wildcards.model in ("student", "teacher"):
        return model_input(config["train" if wildcards.model == "student" else "teacher"]["model"])
    return [eval_model_spec(wildcards.model)]  # the SFT model


def eval_job_gpus(wildcards):
    """GPUs an evaluation job asks for: none when it only talks to the user's server."""
    return 0 if eval_endpoint(wildcards.model) else config["eval"]["gpus"]


def eval_endpoint_options(wildcards):
    """--endpoint and --api_key_env of an evaluation job, quoted (a resource, as for the teacher)."""
    return endpoint_words(eval_endpoint(wildcards.model))


def server_options(section):
    """Options for the managed vLLM server of a sampling script, as argv words. A param: server arguments such
    as --dtype change what is generated. With several GPUs per job the model is split across them (tensor
    parallel)."""
    words = [f"--server_arg={arg}" for arg in config["server"]["args"]]
    if config[section]["gpus"] > 1:
        words.append(f"--server_arg=--tensor-parallel-size={config[section]['gpus']}")
    return words + [f"--server_env={key}={value}" for key, value in sorted(config["server"]["env"].items())]


def endpoint_words(external):
    """--endpoint and --api_key_env for a server the user runs, as one quoted string (resources hold text, not
    lists); empty when the job manages its own. The key itself is read from the environment at run time, never
    written to the command line or logs."""
    if not external:
        return ""
    words = [f"--endpoint={external['endpoint']}"]
    if external.get("api_key_env"):
        words.append(f"--api_key_env={external['api_key_env']}")
    return shlex.join(words)


def teacher_endpoint_options():
    """A resource, not a param: where the model is served does not change what it samples (the model does)."""
    teacher = config["teacher"]
    return endpoint_words(teacher if teacher["endpoint"] else None)


def revision_words(section):
    """--revision of a model's jobs (teacher or train), as argv words: [] when unset. Sampling jobs pass it with
    their server options (a managed server's, and a param: the pin decides the weights), which are unchanged
    when it is unset, so that adding the setting reran no existing run."""
    revision = config[section]["revision"]
    return ["--revision", revision] if revision else []


def eval_server_options(wildcards):
    """server_options("eval") and the pin of the evaluated model: the student's (train.revision) or the
    managed teacher's; the SFT model and models at a user's server have none."""
    section = None if eval_endpoint(wildcards.model) else {"student": "train", "teacher": "teacher"}.get(wildcards.model)
    return server_options("eval") + (revision_words(section) if section else [])


def teacher_model():
    """--model of the teacher jobs: the name at the user's server (teacher.endpoint), else what the job serves."""
    return config["teacher"]["model"] if config["teacher"]["endpoint"] else model_path(config["teacher"]["model"])


def teacher_model_input(wildcards):
    return [] if config["teacher"]["endpoint"] else model_input(config["teacher"]["model"])


def api_options(section):
    """--api (and --tokenizer) of a sampling job, as argv words: a param, since who applies the chat template can
    change the prompt the model sees."""
    words = ["--api", config[section]["api"]]
    if config[section]["tokenizer"]:
        words += ["--tokenizer", config[section]["tokenizer"]]
    return words


def job_gpus(section):
    """GPUs a sampling job asks for: none when it only talks to an external endpoint."""
    return 0 if config[section].get("endpoint") else config[section]["gpus"]


def report_training_metrics():
    """The SFT run's training metrics, when the SFT model is evaluated: the report never asks for a training
    run that the evaluation does not."""
    if "sft" not in config["eval"]["models"]:
        return []
    return [f"results/train/{config['train']['run_name']}/metrics.jsonl"]


def report_curation_stats():
    """The curation funnel, under the same condition as the training metrics."""
    return ["results/sft/stats.json"] if report_training_metrics() else []


# Early cutoff: a rerun whose output comes out byte for byte the same reruns nothing after it. curate and
# score_eval are checkpoints that also write the sha256 of what they made (sha256sums, a few bytes). Every job
# after one lists that file among its inputs through the checkpoint (the functions below), and takes the data
# files themselves as ancient(). Snakemake then decides whether those jobs run only once the checkpoint job has
# run, and a sums file that is newer but has the checksum Snakemake recorded when the job last ran is no reason
# to run. Each later job names every checkpoint before it, not only the nearest: Snakemake re-decides only the
# jobs that depend on the checkpoint that just finished (Snakemake 9.27). One exception: the SFT model's
# score_eval does not name curate. A checkpoint that curate would re-decide as "no need to run" never finishes,
# and the jobs waiting on it (eval_summary, the report) would never be re-decided: so after a curation it
# rescores the SFT model's samples (seconds), and the jobs after it are decided on what it wrote. A dry run
# cannot know what a rerun will make, so it lists the jobs that would run if every output changed.
def curated_sums(wildcards=None):
    """The curated set's sha256sums, through the curate checkpoint."""
    return checkpoints.curate.get().output.sha256sums


def scored_eval_sums(label):
    """An input function: label's scored evaluation samples' sha256sums, through the score_eval checkpoint.
    One function per label, so that a dry run shows every label's jobs, not those of the first one pending."""
    return lambda wildcards: checkpoints.score_eval.get(model=label).output.sha256sums


def after_curate(wildcards):
    """For the SFT model's evaluation: the curated set's sums, else nothing."""
    return curated_sums() if wildcards.model == config["train"]["run_name"] else []


def after_scored_eval():
    """The inputs a job after every evaluation names: one sums file per evaluated label, and the curated set's
    when the SFT model is one of them."""
    sums = {f"scored_{index}": scored_eval_sums(label) for index, label in enumerate(eval_labels())}
    return sums | ({"curated": curated_sums} if config["train"]["run_name"] in eval_labels() else {})


def repo_file(path):
    """A config path: as given when it exists from the working directory, else inside the workflow."""
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(workflow.basedir, path)


# Keys that decide how fast or where a stage runs, never what it produces. The rules pass them as resources, not
# params, and eval.json's config_hash leaves them out, so editing one reruns nothing.
SPEED_ONLY_KEYS = {
    "server": ("health_timeout_s",),
    "teacher": ("endpoint", "api_key_env", "concurrency", "request_timeout_s", "max_attempts", "max_failed_fraction"),
    # eval.jobs splits the same samples into other files: it reruns evaluation jobs (no request) but is no result.
    "eval": ("concurrency", "request_timeout_s", "max_attempts", "jobs"),
    # recompute_elementwise: the same gradients to the bit (mathsft.recompute).
    "train": ("checkpoint_every", "launcher", "report_to", "recompute_elementwise"),
}

# Per eval.endpoints entry: where the model is served and its key's variable; the model's name there decides.
SPEED_ONLY_ENDPOINT_KEYS = ("endpoint", "api_key_env")


def speed_only_resources(section, keys):
    """Settings of `section` that decide how fast a job runs, never what it makes (SPEED_ONLY_KEYS), as the
    rule's resources: unlike a param, a resource never triggers a rerun, so editing one reruns nothing.
    Snakemake takes whole numbers and text as resources: a true/false setting goes as its script option
    (--KEY or --no-KEY), other values as text."""
    unknown = [key for key in keys if key not in SPEED_ONLY_KEYS.get(section, ())]
    if unknown:
        raise ValueError(f"{section}.{', '.join(unknown)}: not speed-only (SPEED_ONLY_KEYS); pass it as a param")
    resources = {}
    for key in keys:
        value = config[section][key]
        if type(value) is bool:
            resources[key] = f"--{key}" if value else f"--no-{key}"
        else:
            resources[key] = value if type(value) is int else str(value)
    return resources


def config_hash():
    """A digest of the settings that decide results (all but SPEED_ONLY_KEYS), for eval.json's provenance."""
    decisive = {section: {key: value for key, value in values.items() if key not in SPEED_ONLY_KEYS.get(section, ())}
                for section, values in config.items()}
    decisive["eval"]["endpoints"] = {label: {key: value for key, value in entry.items()
                                             if key not in SPEED_ONLY_ENDPOINT_KEYS}
                                     for label, entry in config["eval"]["endpoints"].items()}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def train_launch():
    """How the train job starts train_sft.py (train.launcher; a resource: how many processes share the work
    does not change what is trained). `python`: one process (CPU or one GPU). `torchrun`: one process per GPU
    of one node. `srun`: in a SLURM allocation, one torchrun per node (srun), meeting through c10d rendezvous
    on the allocation's first node, on a port derived from the job id (two jobs sharing a node do not clash).
    `auto` picks srun for train.nodes > 1, torchrun for train.gpus > 1, else python."""
    train = config["train"]
    nodes, gpus, launcher = train["nodes"], train["gpus"], train["launcher"]
    if launcher == "auto":
        launcher = "srun" if nodes > 1 else "torchrun" if gpus > 1 else "python"
    if nodes > 1 and launcher != "srun":
        raise ValueError(f"train.launcher: {launcher} starts one node; train.nodes: {nodes} needs srun (or auto)")
    if launcher == "python":
        return "python"
    per_node = max(gpus, 1)
    if launcher == "torchrun":
        return f"torchrun --standalone --nnodes=1 --nproc_per_node={per_node}"
    # Runs inside the job's own step (the SLURM executor's srun): --overlap shares that step's CPUs and GPUs.
    # That step is one task on the first node, started with the SLURM_* variables removed, so in it
    # SLURM_JOB_NODELIST names that node alone and srun refuses a second ("Only allocated 1 nodes asked for 2",
    # seen on the two-node test cluster): the job's nodes are asked of the controller first.
    # Outside an allocation, ${SLURM_JOB_ID:?...} stops the job with that message before anything starts.
    return ("export SLURM_JOB_NODELIST=$(squeue --noheader --format=%N --jobs="
            "${SLURM_JOB_ID:?train.launcher srun runs in a SLURM job: use --profile profiles/slurm}); "
            f"srun --overlap --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1"
            f" torchrun --nnodes={nodes} --nproc_per_node={per_node} --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID"
            ' --rdzv_endpoint=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):$((29500 + SLURM_JOB_ID % 1000))')


def train_cluster_resources():
    """GPUs and nodes of the train job. One node: the portable `gpu` count (the SLURM plugin submits --gpus=N).
    Several nodes: train.gpus per node, as the plugin's `gres` (--gres=gpu:N is per node; its --gpus would be
    per job, and the plugin's own job step could not hold them on one node) with --nodes=train.nodes."""
    train = config["train"]
    if train["nodes"] == 1:
        return {"gpu": train["gpus"], "nodes": 1}
    if train["gpus"] == 0:
        return {"nodes": train["nodes"]}  # CPU nodes: one process per node (gloo)
    return {"gres": f"gpu:{train['gpus']}", "nodes": train["nodes"]}


def check_config():
    """Rules across keys that the JSON schema cannot state, checked before any job runs; each error names the key."""
    labels = config["eval"]["endpoints"]
    for label in labels:
        if label in EVAL_LABELS or label == config["train"]["run_name"]:
            raise ValueError(f"eval.endpoints.{label}: {label!r} already names a model this workflow evaluates; "
                             "choose another label")
    unknown = [label for label in config["eval"]["models"] if label not in EVAL_LABELS and label not in labels]
    if unknown:
        raise ValueError(f"eval.models: {', '.join(unknown)} is neither student, sft, teacher nor a label of "
                         "eval.endpoints")
    too_big = [k for k in config["eval"]["pass_k"] if k > config["eval"]["samples_per_problem"]]
    if too_big:
        raise ValueError(f"eval.pass_k: {too_big} above eval.samples_per_problem "
                         f"({config['eval']['samples_per_problem']}); pass@k needs at least k samples per problem")
    for section in ("teacher", "train"):
        model, revision = config[section]["model"], config[section]["revision"]
        if revision and (model.startswith(EMBEDDED) or os.path.isdir(model)):
            raise ValueError(f"{section}.revision: {model!r} is not a Hugging Face id; a revision pins a hub model")

    teacher, student = config["teacher"], config["train"]
    if (not teacher["endpoint"] and teacher["model"] == student["model"] and is_hub_id(student["model"])
            and teacher["revision"] != student["revision"]):
        raise ValueError(f"teacher.revision, train.revision: {student['model']} at two revisions "
                         f"({teacher['revision'] or 'main'}, {student['revision'] or 'main'}); the model store holds "
                         "one revision of a hub model: pin both to the same one")
    if config["teacher"]["endpoint"] and config["teacher"]["revision"]:
        raise ValueError("teacher.revision: the server at teacher.endpoint decides what it loaded; pin it there")
    if config["teacher"]["endpoint"] and config["teacher"]["model"].startswith(EMBEDDED):
        raise ValueError(f"teacher.model: {config['teacher']['model']!r} is an embedded model, which only a managed "
                         "server loads; with teacher.endpoint set, give the name that server serves")
    check_server_settings(config["server"]["args"], config["server"]["env"], "server.args/server.env")
    thinking_parser = [arg for arg in config["server"]["args"] if arg.split("=", 1)[0] == "--reasoning-parser"]
    not_teacher = [label for label in config["eval"]["models"] if label in ("student", "sft")]
    if thinking_parser and not_teacher:
        raise ValueError(f"server.args: --reasoning-parser reaches every managed server, and eval.models has "
                         f"{', '.join(not_teacher)}: a model that does not think would have its whole answer read as "
                         "an unfinished thought and scored as no answer. Leave it out: thoughts are read from the "
                         "reply's text without it, the same way (mathsft/turns.py); a server you run for the "
                         "teacher (teacher.endpoint) may have it")
    for section in ("teacher", "train"):
        model = config[section]["model"]
        if (section == "teacher" and config["teacher"]["endpoint"]) or model.startswith(EMBEDDED):
            continue
        # A path (not a hub id such as Qwen/Qwen2.5-Math-1.5B) must hold a model now, not after a server's
        # health timeout or a queue wait.
        if model.startswith(("/", ".", "~")) or os.path.isdir(model):
            folder = os.path.expanduser(model)
            if not os.path.isfile(os.path.join(folder, "config.json")):
                what = "has no config.json" if os.path.isdir(folder) else "does not exist"
                raise ValueError(f"{section}.model: the folder {model!r} {what}; give a folder that holds a Hugging "
                                 "Face model (config.json, weights, tokenizer) or a hub id such as Qwen/Qwen2.5-Math-1.5B")
    # Lengths that cannot fit the student: refused now, not after the teacher's GPU-hours (mathsft/length_fit.py).
    student, revision = config["train"]["model"], config["train"]["revision"]
    fetched = store_folder(MODEL_STORE, student) if is_hub_id(student) else None
    errors = length_errors(config, model_path(student), fetched)
    if errors:
        raise ValueError("\n".join(errors))


check_config()


def watch_slurm_jobs():
    """onstart: under SLURM, a job whose state a status check could not read stays followed (mathsft/slurm_status.py:
    the plugin forgets it, and the run waits forever); a job no node can take (pending with reason PartitionConfig,
    PartitionNodeLimit, ...) is reported with that reason and cancelled, instead of the run waiting without a word
    (mathsft/slurm.py)."""
    from mathsft.slurm import watch_pending_jobs_of
    from mathsft.slurm_status import keep_unread_jobs_of

    keep_unread_jobs_of(workflow)
    watch_pending_jobs_of(workflow)
