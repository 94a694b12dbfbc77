# mathsft: distil math reasoning from a teacher LLM into a student LLM.
#   snakemake -n results/eval.json                        what would run, and why
#   snakemake --profile profiles/local results/eval.json    the embedded default on this machine
#   snakemake --profile profiles/local                      the same, and results/report.html
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="config/config.schema.yaml")


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/teacher.smk"
include: "rules/reward.smk"
include: "rules/curate.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/cost.smk"


# One handler each: Snakemake keeps only the last one a Snakefile declares.
onstart:
    record_invocation_start()
    watch_slurm_jobs()


onsuccess:
    print_run_summary()


rule all:
    input:
        "results/eval.json",
        "results/cost.json",
        "results/report.html",
    default_target: True
