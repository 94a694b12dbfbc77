"""Training problems and evaluation sets: generation, normalisation, decontamination and static shards."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterator

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalise_text(text: str) -> str:
    """Unicode NFKC, whitespace collapsed, stripped: the text the problem id is hashed from."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def problem_id(problem: str) -> str:
    """Content hash of a problem: the same text gives the same id in every run and every source."""
    return hashlib.sha256(normalise_text(problem).encode("utf-8")).hexdigest()[:16]


def wrap_answer(answer: str) -> str:
    """Wrap a bare gold answer in $...$ so math-verify's LaTeX extraction finds it (it parses only inside
    delimiters); answers already in $, \\( or \\boxed are kept."""
    answer = answer.strip()
    if answer.startswith(("$", "\\(", "\\[")) or "\\boxed" in answer:
        return answer
    return f"${answer}$"


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of `text`; a text shorter than n gives one gram of all its words."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class Decontaminator:
    """Finds training problems that overlap any evaluation problem.

    With `ngram` set, overlap is a shared word n-gram (s1 / open-r1 use 8). With `ngram` None, only the
    same normalised text counts: procedurally generated problems share their template's wording, so any
    n-gram test would flag all of them.
    """

    ngram: int | None
    _texts: dict[str, str] = field(default_factory=dict)  # normalised text -> benchmark
    _grams: dict[tuple[str, ...], str] = field(default_factory=dict)  # n-gram -> benchmark

    def add(self, benchmark: str, problem: str) -> None:
        self._texts.setdefault(normalise_text(problem).lower(), benchmark)
        if self.ngram:
            for gram in ngrams(problem, self.ngram):
                self._grams.setdefault(gram, benchmark)

    def match(self, problem: str) -> str | None:
        """The benchmark `problem` overlaps, or None."""
        hit = self._texts.get(normalise_text(problem).lower())
        if hit or not self.ngram:
            return hit
        for gram in ngrams(problem, self.ngram):
            if gram in self._grams:
                return self._grams[gram]
        return None


def reasoning_gym_problems(tasks: list[str], seed: int, task_options: dict[str, dict] | None = None
                           ) -> Iterator[dict[str, str]]:
    """An endless, seeded, prefix-stable stream of problems, round-robin over reasoning-gym tasks
    (`task_options[task]` goes to that task's generator, e.g. max_terms for chain_sum).

    Item i of a task depends only on (task, options, seed, i), so asking for more problems only appends.
    """
    import reasoning_gym

    task_options = task_options or {}
    datasets = {}
    for task in tasks:
        try:
            # reasoning-gym generates items lazily from seed + index; size only bounds the index.
            datasets[task] = reasoning_gym.create_dataset(task, seed=seed, size=10**7, **task_options.get(task, {}))
        except (TypeError, ValueError, AssertionError) as exc:
            raise ValueError(f"data.task_options.{task}: {exc}") from exc
    index = 0
    while True:
        for task in tasks:
            item = datasets[task][index]
            yield {"source": task, "problem": str(item["question"]), "answer": str(item["answer"])}
        index += 1


@dataclass
class Counts:
    """What normalisation dropped, for the data report."""

    no_answer: int = 0
    duplicate: int = 0
    contaminated: dict[str, int] = field(default_factory=dict)


def take_problems(stream, count: int, counts: Counts, seen: set[str], decontaminator: Decontaminator | None = None):
    """Normalise rows from `stream` until `count` are kept: drop rows with no answer, duplicates (ids in
    `seen`) and rows that overlap an evaluation set; each drop is counted in `counts`."""
    kept = []
    for row in stream:
        if len(kept) == count:
            break
        if row["answer"] is None or not str(row["answer"]).strip():
            counts.no_answer += 1
            continue
        pid = problem_id(row["problem"])
        if pid in seen:
            counts.duplicate += 1
            continue
        seen.add(pid)
        if decontaminator is not None:
            bench = decontaminator.match(row["problem"])
            if bench is not None:
                counts.contaminated[bench] = counts.contaminated.get(bench, 0) + 1
                continue
        kept.append(
            {"problem_id": pid, "source": row["source"], "problem": row["problem"], "answer": wrap_answer(str(row["answer"]))}
        )
    if len(kept) < count:
        raise ValueError(f"only {len(kept)} usable problems, {count} asked for (dropped: {counts})")
    return kept


def shard_bounds(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """Row ranges of the static shards: shard k is rows [k*S, min((k+1)*S, N))."""
    return [(start, min(start + shard_size, num_samples)) for start in range(0, num_samples, shard_size)]


def prepare_reasoning_gym(
    tasks: list[str],
    benchmarks: list[str],
    num_samples: int,
    eval_problems: int,
    seed: int,
    eval_seed: int,
    ngram: int | None,
    task_options: dict[str, dict] | None = None,
) -> tuple[list[dict], dict[str, list[dict]], dict]:
    """Training problems, evaluation sets (one per benchmark task, drawn with `eval_seed`) and a report of
    what was dropped. Training problems that overlap an evaluation problem are removed."""
    if seed == eval_seed:
        raise ValueError("data.seed and data.eval_seed are equal: train and eval problems would be the same draws")
    decontaminator = Decontaminator(ngram)
    bench_sets, bench_counts = {}, {}
    for bench in benchmarks:
        counts = Counts()
        bench_sets[bench] = take_problems(reasoning_gym_problems([bench], eval_seed, task_options), eval_problems, counts, set())
        bench_counts[bench] = counts.__dict__
        for row in bench_sets[bench]:
            decontaminator.add(bench, row["problem"])
    counts = Counts()
    train = take_problems(reasoning_gym_problems(tasks, seed, task_options), num_samples, counts, set(), decontaminator)
    report = {"train": {"kept": len(train), "dropped": counts.__dict__}, "benchmarks": bench_counts, "ngram": ngram}
    return train, bench_sets, report
