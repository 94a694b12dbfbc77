"""Paired comparisons of two models' pass@1 on the same benchmark problems: the mean per-problem difference, its
standard error, a paired bootstrap 95% interval and a sign-flip permutation p-value.

With a dozen problems per benchmark two models' own standard errors overlap whatever they do; pairing by problem
removes the variance the problems share (an easy problem is easy for both), so the difference is measured
against the noise of the differences alone."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

# The models others are measured against: the student before SFT and, when evaluated, the teacher.
BASELINES = ("student", "teacher")
BOOTSTRAP_RESAMPLES = 10_000
PERMUTATION_RESAMPLES = 10_000
# Up to 2**16 sign vectors are enumerated (exact p-value); more non-zero differences are sampled.
EXACT_MAX_NONZERO_PROBLEMS = 16
# Resamples drawn at once, bounding memory to about CHUNK x problems numbers whatever the benchmark's size.
CHUNK = 1_000
# Sign-flipped sums equal to the observed one in exact arithmetic may differ from it in the last bits.
SUM_TOLERANCE = 1e-9


def problem_pass1(rows: Iterable[dict]) -> dict[str, dict[str, float]]:
    """benchmark -> problem_id -> fraction of that problem's samples that are correct (reward >= 1), from
    per-sample eval rows. Problems may have different sample counts."""
    outcomes: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        outcomes[row["benchmark"]][row["problem_id"]].append(row["reward"] >= 1.0)
    return {bench: {pid: sum(correct) / len(correct) for pid, correct in problems.items()}
            for bench, problems in outcomes.items()}


def delta_stderr(differences: np.ndarray) -> float:
    """Standard error of the mean difference: sample standard deviation (ddof=1) / sqrt(problems); 0 for one
    problem, as for pass@1's own stderr."""
    if len(differences) < 2:
        return 0.0
    return float(np.std(differences, ddof=1) / np.sqrt(len(differences)))


def bootstrap_ci95(differences: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile 95% interval (2.5th and 97.5th percentiles, linear interpolation) of the mean difference over
    `resamples` resamples of the problems with replacement; the same seed gives the same interval."""
    rng = np.random.default_rng(seed)
    count = len(differences)
    means = np.concatenate([differences[rng.integers(0, count, size=(size, count))].mean(axis=1)
                            for size in _chunk_sizes(resamples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def sign_flip_p_value(differences: np.ndarray, seed: int,
                      resamples: int = PERMUTATION_RESAMPLES) -> tuple[float, bool]:
    """Two-sided p-value of a paired sign-flip permutation test of mean difference 0, and whether it is exact.

    Under the null each problem's difference is as likely negated. A problem with difference 0 is the same
    under either sign, so only the m non-zero ones are flipped: with m <= EXACT_MAX_NONZERO_PROBLEMS all 2**m
    sign vectors are enumerated (p = share with |sum| >= observed, the same as over all 2**problems vectors);
    else `resamples` random sign vectors from `seed` give p = (hits + 1) / (resamples + 1)."""
    nonzero = differences[differences != 0]
    observed = abs(float(nonzero.sum())) - SUM_TOLERANCE
    if len(nonzero) <= EXACT_MAX_NONZERO_PROBLEMS:
        signs = 1 - 2 * ((np.arange(2 ** len(nonzero))[:, None] >> np.arange(len(nonzero))) & 1)
        return float(np.mean(np.abs(signs @ nonzero) >= observed)), True
    rng = np.random.default_rng(seed)
    hits = sum(int(np.sum(np.abs(rng.choice((-1.0, 1.0), size=(size, len(nonzero))) @ nonzero) >= observed))
               for size in _chunk_sizes(resamples))
    return (hits + 1) / (resamples + 1), False


def paired_comparison(model_pass1: dict[str, float], baseline_pass1: dict[str, float], seed: int) -> dict:
    """The comparison of two models on one benchmark, over the problems both were evaluated on (matched by
    problem id): per-problem pass@1 differences (model - baseline), their mean, its stderr, ci95, p_value."""
    shared = sorted(model_pass1.keys() & baseline_pass1.keys())
    if not shared:
        raise ValueError("the two models have no problem in common")
    differences = np.array([model_pass1[pid] - baseline_pass1[pid] for pid in shared])
    p_value, exact = sign_flip_p_value(differences, seed)
    low, high = bootstrap_ci95(differences, seed)
    return {
        "problems": len(shared),
        "model_pass@1": float(np.mean([model_pass1[pid] for pid in shared])),
        "baseline_pass@1": float(np.mean([baseline_pass1[pid] for pid in shared])),
        "pass@1_delta": float(differences.mean()),
        "pass@1_delta_stderr": delta_stderr(differences),
        "ci95": [low, high],
        "p_value": p_value,
        "p_value_exact": exact,
    }


def compare_models(model: str, model_rows: Iterable[dict], baseline: str, baseline_rows: Iterable[dict],
                   seed: int) -> list[dict]:
    """`model` against `baseline` on each benchmark both were evaluated on, from their per-sample eval rows; a
    benchmark without a problem in common is refused."""
    return _compare_pass1(model, problem_pass1(model_rows), baseline, problem_pass1(baseline_rows), seed)


def _compare_pass1(model: str, model_by_bench: dict, baseline: str, baseline_by_bench: dict, seed: int) -> list[dict]:
    """compare_models on per-problem pass@1 already computed (problem_pass1)."""
    comparisons = []
    for bench in sorted(model_by_bench.keys() & baseline_by_bench.keys()):
        try:
            stats = paired_comparison(model_by_bench[bench], baseline_by_bench[bench], seed)
        except ValueError as exc:
            raise ValueError(f"cannot compare model {model} with {baseline} on benchmark {bench}: {exc} (were they "
                             "evaluated on different versions of its data? Evaluate both on the same problems)"
                             ) from exc
        comparisons.append({"model": model, "baseline": baseline, "benchmark": bench} | stats)
    return comparisons


def comparison_pairs(labels: Iterable[str]) -> list[tuple[str, str]]:
    """(model, baseline) pairs among evaluated labels: every other model against each evaluated baseline, and
    the teacher against the student when both are there."""
    labels = list(labels)
    baselines = [b for b in BASELINES if b in labels]
    pairs = [(label, baseline) for label in labels if label not in BASELINES for baseline in baselines]
    if {"student", "teacher"} <= set(labels):
        pairs.append(("teacher", "student"))
    return pairs


def document_comparisons(rows_by_model: dict[str, list[dict]], seed: int) -> list[dict]:
    """Every comparison of eval.json: each pair of comparison_pairs on each benchmark both models share; a model
    compared with the student also gets its fraction of the teacher's gain where the teacher was evaluated."""
    pass1 = {label: problem_pass1(rows) for label, rows in rows_by_model.items()}  # once per model, not per pair
    comparisons = [comparison for model, baseline in comparison_pairs(rows_by_model)
                   for comparison in _compare_pass1(model, pass1[model], baseline, pass1[baseline], seed)]
    teacher_gain = {c["benchmark"]: c for c in comparisons if (c["model"], c["baseline"]) == ("teacher", "student")}
    for comparison in comparisons:
        reference = teacher_gain.get(comparison["benchmark"])
        if comparison["baseline"] == "student" and comparison["model"] != "teacher" and reference:
            comparison["fraction_of_teacher_gain"] = fraction_of_gain(comparison, reference)
    return comparisons


def fraction_of_gain(comparison: dict, teacher: dict) -> float | None:
    """How much of the teacher's pass@1 gain over the student a model recovers on one benchmark: its own gain
    over the student divided by the teacher's (1: as good as the teacher; above 1: better; negative: worse than
    the student). Both gains are the comparisons' pass@1 deltas. None when the teacher is no better than the
    student there: there is no gain to recover."""
    if teacher["pass@1_delta"] <= 0:
        return None
    return comparison["pass@1_delta"] / teacher["pass@1_delta"]


def comparison_methods(seed: int) -> dict:
    """How the comparisons were computed, for eval.json's readers."""
    return {
        "pairing": "problems matched by problem_id within a benchmark; only problems both models were evaluated on",
        "pass@1_delta": "mean over problems of (model - baseline) per-problem pass@1, each the fraction of that "
                        "problem's samples that are correct",
        "pass@1_delta_stderr": "sample standard deviation (ddof=1) of the per-problem differences / sqrt(problems); "
                               "0 for one problem",
        "ci95": f"paired bootstrap over problems, {BOOTSTRAP_RESAMPLES} resamples, seed {seed}, percentile interval "
                "(2.5th and 97.5th percentiles, linear interpolation)",
        "p_value": "sign-flip permutation test of mean difference 0, two-sided (|sum| >= observed); exact over all "
                   f"2^m sign vectors of the m problems with a non-zero difference when m <= "
                   f"{EXACT_MAX_NONZERO_PROBLEMS}, else {PERMUTATION_RESAMPLES} random sign vectors with seed {seed} "
                   "and p = (hits + 1) / (resamples + 1)",
        "seed": seed,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "permutation_resamples": PERMUTATION_RESAMPLES,
        "exact_max_nonzero_problems": EXACT_MAX_NONZERO_PROBLEMS,
    }


def _chunk_sizes(total: int) -> list[int]:
    return [min(CHUNK, total - start) for start in range(0, total, CHUNK)]
