#!/usr/bin/env python
"""Reward-stage throughput: bare math-verify in one process vs mathsft.reward.score_all's pool, and the worst
case (adversarial answers that hang sympy, mixed with normal ones) under a per-item timeout.

    .venv/bin/python bench/scoring.py                      # defaults: about 1.5 minutes on 2 idle cores
    .venv/bin/python bench/scoring.py --items 4000 --workers 2 --timeout_s 2 --seed 1 --rounds 3

The (response, gold) pairs are synthetic but shaped like DeepScaleR teacher traces: 8-20 KB of reasoning
with inline and display LaTeX, a </think> and a summary ending in \\boxed{...} (or cut off before it), against
golds of the forms DeepScaleR has (integers, fractions, roots, multiples of pi, intervals, tuples,
polynomials), wrapped in $...$ as mathsft.data.wrap_answer does.

Figures, each throughput run in a fresh process: (a) score_response in a loop, one process; (a') the same loop
in `workers` processes at once, each on its share (what this machine gives independent CPU-bound processes:
the ceiling for any pool); (b) score_all with `workers` workers. It prints pool / (workers x bare) against the
0.9 target, and pool / (a'). (c) times the normal items of the worst case alone, then mixed with adversarial
ones, and checks that the mix costs about adversarial x timeout / workers more.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import random
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from mathsft.reward import BATCH_SIZE, TIMEOUT, score_all, score_response

# ---------------------------------------------------------------------------------------------------------
# Synthetic DeepScaleR-like pairs


def _gold_and_answers(rng: random.Random) -> tuple[str, str, str]:
    """One gold answer (bare LaTeX), an equivalent answer as a model might write it, and a wrong one."""
    a, b = rng.randint(1, 40), rng.randint(2, 19)
    # The weights are a guess at DeepScaleR's mix (AIME's answers are integers, AMC and Omni-MATH add the rest).
    # Intervals and tuples are the slowest golds to parse: math-verify's LaTeX grammar is ambiguous on them
    # (about 100 ms for "(26, 9)" in a fresh process here, against 1-2 ms for an integer).
    form = rng.choices(["integer", "fraction", "sqrt", "pi", "interval", "tuple", "expression"],
                       weights=[50, 15, 8, 5, 5, 5, 12])[0]
    if form == "integer":
        n = rng.randint(-50, 2025)
        return f"{n}", f"{n}", f"{n + rng.choice([-2, -1, 1, 3, 10])}"
    if form == "fraction":
        a = a if a % b else a + 1
        return f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{a + 1}}}{{{b}}}"
    if form == "sqrt":
        k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
        return f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{k * k * m}}}", f"{k + 1}\\sqrt{{{m}}}"
    if form == "pi":
        return f"\\frac{{{a}\\pi}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}\\pi", f"\\frac{{{a}\\pi}}{{{b + 1}}}"
    if form == "interval":
        lo, hi = -a, a + b
        return f"[{lo}, {hi})", f"[{lo},{hi})", f"({lo}, {hi}]"
    if form == "tuple":
        return f"({a}, {b})", f"\\left({a},{b}\\right)", f"({b}, {a + 1})"
    return (f"x^2 + {a + b}x + {a * b}", f"(x+{a})(x+{b})", f"x^2 + {a + b + 1}x + {a * b}")


_STEPS = [
    "Let me start by writing down what we know. We have $x + y = {a}$ and $xy = {b}$, so "
    "$x^2 + y^2 = (x+y)^2 - 2xy = {a}^2 - 2 \\cdot {b}$.",
    "Wait, let me double-check that step. If $f(x) = {a}x^2 - {b}x + {c}$, then $f'(x) = {a2}x - {b}$, "
    "which vanishes at $x = \\frac{{{b}}}{{{a2}}}$.",
    "Hmm, so the discriminant is\n\\[\n\\Delta = b^2 - 4ac = {b}^2 - 4 \\cdot {a} \\cdot {c},\n\\]\nand the "
    "roots are $x = \\frac{{-b \\pm \\sqrt{{\\Delta}}}}{{2a}}$.",
    "Alternatively, I could use the identity $\\sin^2\\theta + \\cos^2\\theta = 1$ with "
    "$\\theta = \\frac{{\\pi}}{{{a}}}$, which gives $\\cos\\theta = \\sqrt{{1 - \\sin^2\\theta}}$.",
    "Now sum over all terms:\n\\[\n\\sum_{{k=1}}^{{{a}}} k = \\frac{{{a}({a}+1)}}{{2}}.\n\\]\nThat seems right, "
    "since for small cases like $n = 3$ it gives $6$.",
    "So the area of the triangle is $\\frac{{1}}{{2}} \\cdot {a} \\cdot {b} \\sin C$, and by the law of cosines "
    "$c^2 = a^2 + b^2 - 2ab\\cos C$.",
    "Let me consider the case where $n \\equiv {c} \\pmod{{{b}}}$. Then $n^2 \\equiv {c}^2 \\pmod{{{b}}}$, "
    "which is not a quadratic residue, so this case gives no solutions.",
    "Okay, so I think I need to compute $\\binom{{{a}}}{{{c}}}$ next. That equals "
    "$\\frac{{{a}!}}{{{c}!({a}-{c})!}}$, a fairly large number, but we only need it modulo ${b}$.",
    "I'm getting confused; let me re-read the problem. It asks for the value, not the count, so the "
    "previous computation of the number of cases was not needed after all.",
    "Substituting back, $y = {a} - x$, so the expression becomes ${b}x - x^2$, which is maximised at "
    "$x = \\frac{{{b}}}{{2}}$ with value $\\frac{{{b}^2}}{{4}}$.",
]


def _reasoning(rng: random.Random, length: int) -> str:
    parts, size = ["<think>\n"], 0
    while size < length:
        a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(1, 9)
        step = rng.choice(_STEPS).format(a=a, b=b, c=c, a2=2 * a)
        parts.append(step + "\n\n")
        size += len(step) + 2
    return "".join(parts)


_LOOP = "Wait, I think I made a mistake somewhere. Let me go back and reconsider the problem from the start.\n\n"


def synthetic_pairs(count: int, seed: int, samples_per_problem: int = 4) -> list[tuple[str, str]]:
    """`count` (response, gold) pairs, the same for the same seed, in runs of `samples_per_problem` sharing
    a gold (as in a teacher shard): about 55% correct, 35% wrong, 10% with no final answer (traces that hit
    max_tokens: 6% cut off mid-reasoning, 4% stuck repeating one sentence)."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        if index % samples_per_problem == 0:
            gold, equivalent, wrong = _gold_and_answers(rng)
        body = _reasoning(rng, rng.randint(8_000, 20_000))
        kind = rng.choices(["correct", "wrong", "cut_off", "loop"], weights=[55, 35, 6, 4])[0]
        if kind == "cut_off":  # mid-sentence, no </think>, no box: math-verify still takes its last formula
            response = body[: rng.randint(8_000, len(body))]
        elif kind == "loop":  # a small model repeating itself until max_tokens: nothing to extract
            response = "<think>\n" + _LOOP * (len(body) // len(_LOOP))
        else:
            answer = equivalent if kind == "correct" else wrong
            response = f"{body}</think>\n\nPutting it together, the final answer is $\\boxed{{{answer}}}$."
        pairs.append((response, f"${gold}$"))
    return pairs


# Answers that keep sympy busy far past any sane bound (each ran more than 10 s alone here, in under 100 MB):
# math-verify evaluates them while parsing or comparing, and its own signal-based timeouts are off in workers.
ADVERSARIAL_ANSWERS = [
    "9^{9^{9^{9^{9^{9}}}}}",  # a tower of exponents
    "3^{3^{3^{3}}}",
    "(10^{10})!",  # a giant factorial
    "\\frac{1}{1+" * 40 + "1" + "}" * 40,  # a continued fraction 40 deep
]


def adversarial_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` pairs whose answer hangs sympy, each after a normal-looking reasoning trace."""
    rng = random.Random(seed + 1)
    return [(_reasoning(rng, 8_000) + f"</think>\n\nThe answer is $\\boxed{{{ADVERSARIAL_ANSWERS[n % 4]}}}$.", "$3$")
            for n in range(count)]


# ---------------------------------------------------------------------------------------------------------
# Measurements. Each throughput run is a fresh process, as each shard's reward job is: math-verify's parser
# gets faster as it fills its prediction tables (about 2x over the first hundred checks), and the pool's
# workers start cold, so a warm single process would not be a fair baseline.


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once that its own timeouts are off


def _bare_run(items: int, seed: int, part: int = 0, parts: int = 1, start_at: float = 0.0):
    """score_response in a loop over the `part`-th of `parts` contiguous slices of the pairs, no pool, no time
    bound: (started, finished, statuses), started at wall-clock `start_at` at the earliest (math-verify
    imported before)."""
    _quiet()
    import math_verify  # noqa: F401

    pairs = synthetic_pairs(items, seed)[part * items // parts: (part + 1) * items // parts]
    time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    statuses = Counter(score_response(response, gold).verifier_status for response, gold in pairs)
    return started, time.time(), statuses


def bare_rate(items: int, seed: int) -> tuple[float, Counter]:
    """(a) checks/s of bare math-verify in one fresh process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as executor:
        started, finished, statuses = executor.submit(_bare_run, items, seed).result()
    return items / (finished - started), statuses


def parallel_bare_rate(items: int, seed: int, processes: int) -> float:
    """(a') checks/s of `processes` bare loops at once, each on its share: what this machine gives for
    `processes` independent CPU-bound processes, the ceiling for any pool."""
    start_at = time.time() + 3.0  # every process started and imported by then, so they run side by side
    with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn")) as executor:
        runs = [executor.submit(_bare_run, items, seed, part, processes, start_at) for part in range(processes)]
        spans = [run.result()[:2] for run in runs]
    return items / (max(end for _, end in spans) - min(begin for begin, _ in spans))


def _pool_run(items: int, seed: int, workers: int, timeout_s: float, batch_size: int) -> tuple[float, Counter]:
    _quiet()
    pairs = synthetic_pairs(items, seed)
    started = time.perf_counter()
    statuses = Counter(score.verifier_status for score in score_all(pairs, workers, timeout_s, batch_size))
    return len(pairs) / (time.perf_counter() - started), statuses


def pool_rate(items: int, seed: int, workers: int, timeout_s: float, batch_size: int) -> tuple[float, Counter]:
    """(b) checks/s of score_all in a fresh process, all a reward job pays counted (math-verify's import in
    the fork server, worker start-up)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as executor:
        return executor.submit(_pool_run, items, seed, workers, timeout_s, batch_size).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1600, help="synthetic pairs for the throughput runs")
    parser.add_argument("--timeout_s", type=float, default=2.0, help="per-item bound in the worst case (c)")
    parser.add_argument("--throughput_timeout_s", type=float, default=10.0,
                        help="per-item bound in (b): the reward stage's default (a wall-clock bound, so a tight "
                             "one times out normal checks on a loaded machine)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="pool size (default: cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="items per message to a worker")
    parser.add_argument("--rounds", type=int, default=2, help="runs of (a), (a') and (b), alternated")
    parser.add_argument("--adversarial", type=int, default=4, help="hanging items in the worst-case batch")
    parser.add_argument("--normal", type=int, default=200, help="normal items in the worst-case batch")
    args = parser.parse_args()
    _quiet()
    workers = args.workers

    print("command:", " ".join(shlex.quote(part) for part in [sys.executable, *sys.argv]))
    print(f"cores={os.cpu_count()} workers={workers} items={args.items} timeout_s={args.timeout_s:g} "
          f"throughput_timeout_s={args.throughput_timeout_s:g} batch_size={args.batch_size} seed={args.seed} "
          f"rounds={args.rounds}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    sizes = sorted(len(response) for response, _ in synthetic_pairs(args.items, args.seed))
    print(f"responses: median {sizes[len(sizes) // 2] / 1000:.1f} KB, "
          f"{sizes[0] / 1000:.1f}-{sizes[-1] / 1000:.1f} KB")

    bare_rates, ceiling_rates, pool_rates = [], [], []
    for round_ in range(1, args.rounds + 1):
        bare, bare_statuses = bare_rate(args.items, args.seed)
        ceiling = parallel_bare_rate(args.items, args.seed, workers)
        pooled, pool_statuses = pool_rate(args.items, args.seed, workers, args.throughput_timeout_s,
                                          args.batch_size)
        bare_rates.append(bare)
        ceiling_rates.append(ceiling)
        pool_rates.append(pooled)
        print(f"round {round_}: (a) bare, 1 process {bare:6.1f}/s   (a') bare, {workers} process(es) at once "
              f"{ceiling:6.1f}/s   (b) score_all, {workers} workers {pooled:6.1f}/s   "
              f"pool / ({workers} x bare) = {pooled / (workers * bare):.3f}   pool / (a') = {pooled / ceiling:.3f}")
        if pool_statuses != bare_statuses:
            print(f"    WARNING: statuses differ: bare {dict(bare_statuses)}, pool {dict(pool_statuses)}")
    print(f"statuses: {dict(sorted(pool_statuses.items()))}")

    def mean(rates: list[float]) -> float:
        return sum(rates) / len(rates)

    bare, ceiling, pooled = mean(bare_rates), mean(ceiling_rates), mean(pool_rates)
    ratio = pooled / (workers * bare)
    print(f"mean of rounds, checks/s: (a) {bare:.1f}   (a') {ceiling:.1f}   (b) {pooled:.1f}")
    print(f"pool / ({workers} x bare) = {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT MET'});   "
          f"this machine's own ceiling (a') / ({workers} x bare) = {ceiling / (workers * bare):.3f};   "
          f"pool / ceiling = {pooled / ceiling:.3f}")

    # (c) Worst case: hanging items mixed in. Each holds one worker for the whole bound and then costs a fresh
    # worker, so the mix should take about adversarial x timeout / workers longer than the normal items alone.
    normal = synthetic_pairs(args.normal, args.seed + 7)
    mixed = normal + adversarial_pairs(args.adversarial, args.seed)
    random.Random(args.seed).shuffle(mixed)
    score_all(normal[:1], workers, args.timeout_s)  # start the fork server, so that neither timing has it
    walls, statuses = [], Counter()
    for batch in (normal, mixed):
        started = time.perf_counter()
        scores = score_all(batch, workers, args.timeout_s, args.batch_size)
        walls.append(time.perf_counter() - started)
        statuses = Counter(score.verifier_status for score in scores)
    expected = walls[0] + args.adversarial * args.timeout_s / workers
    print(f"(c) worst case, timeout {args.timeout_s:g} s, {workers} workers: {args.normal} normal items alone "
          f"{walls[0]:.1f} s; with {args.adversarial} adversarial ones mixed in {walls[1]:.1f} s, "
          f"timed out {statuses[TIMEOUT]}, {dict(sorted(statuses.items()))}")
    bounded = walls[1] < expected + args.timeout_s  # one timeout of slack: the last hang can leave a worker idle
    print(f"    expected about {walls[0]:.1f} + {args.adversarial} x {args.timeout_s:g} / {workers} = "
          f"{expected:.1f} s: {'bounded' if bounded else 'NOT BOUNDED'} (within one timeout of it)")


if __name__ == "__main__":
    main()
