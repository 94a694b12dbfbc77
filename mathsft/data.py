"""Training problems and evaluation sets: generation, normalisation, decontamination and static shards."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from mathsft.io import METADATA_COLUMNS, PROBLEM_SCHEMA

log = logging.getLogger(__name__)
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

    no_problem: int = 0
    no_answer: int = 0
    unusable_answer: int = 0  # a mapping, boolean, NaN or infinity: answer_text
    too_long: int = 0
    duplicate: int = 0
    contaminated: dict[str, int] = field(default_factory=dict)


class UnusableAnswer(ValueError):
    """A stored answer that is no answer: a mapping, a boolean, NaN or an infinity (the row is dropped, counted)."""


def answer_text(value) -> str | None:
    """A gold answer as text: numbers without a spurious `.0`, a list of answers as one comma-separated
    answer (OlympiadBench stores lists), None for a missing or empty answer. A value no grader could compare
    against (a mapping, a boolean, NaN, an infinity, or a list holding one) raises UnusableAnswer: it would
    otherwise become `${'a': 1}$` or `$nan$`."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [answer_text(v) for v in value]
        parts = [p.strip().strip("$").strip() for p in parts if p]
        return ", ".join(parts) if parts else None
    if isinstance(value, (bool, dict)) or (isinstance(value, float) and not math.isfinite(value)):
        raise UnusableAnswer(f"{type(value).__name__} {str(value)[:40]}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def label_text(value) -> str | None:
    """A problem's level or subject as text: numbers without a spurious `.0` (MATH-500 stores level 1-5 as an
    integer), a list as its items joined by commas, None for a missing or empty value."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [label_text(v) for v in value]
        return ", ".join(p for p in parts if p) or None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def clean_problems(stream, counts: Counts, seen: set[str], decontaminator: Decontaminator | None = None,
                   max_chars: int | None = None) -> Iterator[dict[str, str | None]]:
    """Normalise rows from `stream`, dropping (and counting in `counts`) rows with no problem or answer,
    over-long ones, duplicates (ids in `seen`) and rows that overlap an evaluation set. A row's level and subject,
    where it has them, are kept as text (label_text); they are None where it has not."""
    for row in stream:
        problem = row["problem"].strip() if isinstance(row["problem"], str) else None
        if not problem:
            counts.no_problem += 1
            continue
        try:
            answer = answer_text(row["answer"])
        except UnusableAnswer as exc:
            counts.unusable_answer += 1
            log.warning("%s: answer %s is no answer a grader can compare; row dropped", row.get("where", "a row"), exc)
            continue
        if answer is None:
            counts.no_answer += 1
            continue
        if max_chars is not None and len(problem) + len(answer) > max_chars:
            counts.too_long += 1
            continue
        pid = problem_id(problem)
        if pid in seen:
            counts.duplicate += 1
            continue
        seen.add(pid)
        if decontaminator is not None:
            bench = decontaminator.match(problem)
            if bench is not None:
                counts.contaminated[bench] = counts.contaminated.get(bench, 0) + 1
                continue
        yield {"problem_id": pid, "source": row["source"], "problem": problem, "answer": wrap_answer(answer),
               "level": label_text(row.get("level")), "subject": label_text(row.get("subject"))}


def take_problems(stream, count: int, counts: Counts, seen: set[str], decontaminator: Decontaminator | None = None,
                  max_chars: int | None = None) -> list[dict[str, str | None]]:
    """The first `count` rows of `stream` that survive clean_problems."""
    kept = []
    for row in clean_problems(stream, counts, seen, decontaminator, max_chars):
        kept.append(row)
        if len(kept) == count:
            return kept
    raise ValueError(f"only {len(kept)} usable problems, {count} asked for (dropped: {counts.__dict__})")


def seeded_order(rows: list[dict], seed: int) -> list[dict]:
    """Rows in an order decided by (seed, problem id) alone: the position of a problem does not depend on
    the file's row order or on which other problems are present, so a prefix of it is stable."""
    def key(row):
        return hashlib.sha256(f"{seed}:{row['problem_id']}".encode()).hexdigest()

    return sorted(rows, key=key)


# Shard k of the static shards is results/data/shards/{shard_name(k)}.parquet; the rules constrain the {shard}
# wildcard to SHARD_NAME_PATTERN.
SHARD_NAME_PATTERN = r"\d{5}"


def shard_name(index: int) -> str:
    """The name of shard `index`: five digits."""
    return f"{index:05d}"


def shard_count(num_samples: int, shard_size: int) -> int:
    """How many static shards hold `num_samples` problems, `shard_size` each (the last may hold fewer)."""
    return -(-num_samples // shard_size)


def shard_range(index: int, num_samples: int, shard_size: int) -> tuple[int, int]:
    """Row range of static shard `index`: rows [k*S, min((k+1)*S, N)) of the seeded order."""
    start = index * shard_size
    return start, min(start + shard_size, num_samples)


def shard_bounds(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """Row ranges of every static shard (shard_range)."""
    return [shard_range(index, num_samples, shard_size) for index in range(shard_count(num_samples, shard_size))]


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
    report = {"train": {"kept": len(train), "dropped": counts.__dict__,
                        "contaminated_by_benchmark": counts.contaminated},
              "benchmarks": bench_counts, "ngram": ngram, "seed": seed}
    return train, bench_sets, report


def prepare_datasets(
    train_sets: dict[str, Iterable[dict]],
    benchmarks: dict[str, Iterable[dict]],
    num_samples: int | None,
    seed: int,
    ngram: int | None,
    max_chars: int | None = None,
) -> tuple[list[dict], dict[str, list[dict]], dict]:
    """Training problems from datasets (hub or files) and the evaluation sets, with a report of what was
    dropped. All usable training rows are put in seeded_order and the first `num_samples` kept (all of them
    when None), so raising num_samples only appends. Evaluation sets are kept whole (only rows with no answer or duplicates go)."""
    decontaminator = Decontaminator(ngram)
    bench_sets, bench_counts = {}, {}
    for name, rows in benchmarks.items():
        counts = Counts()
        bench_sets[name] = list(clean_problems(rows, counts, set()))
        if not bench_sets[name]:
            raise ValueError(f"benchmark {name!r} has no usable problems (dropped: {counts.__dict__})")
        bench_counts[name] = {"kept": len(bench_sets[name]), "dropped": counts.__dict__}
        for row in bench_sets[name]:
            decontaminator.add(name, row["problem"])
    pool, per_source, seen = [], {}, set()
    for name, rows in train_sets.items():
        counts = Counts()
        before = len(pool)
        pool.extend(clean_problems(rows, counts, seen, decontaminator, max_chars))
        per_source[name] = {"usable": len(pool) - before, "dropped": counts.__dict__}
    if num_samples is None:
        num_samples = len(pool)
    if len(pool) < num_samples:
        raise ValueError(f"data.num_samples is {num_samples} but the training sets hold only {len(pool)} usable "
                         f"problems (per set: {per_source}); lower data.num_samples")
    train = seeded_order(pool, seed)[:num_samples]
    contaminated = {}
    for source in per_source.values():
        for bench, count in source["dropped"]["contaminated"].items():
            contaminated[bench] = contaminated.get(bench, 0) + count
    report = {"train": {"kept": len(train), "usable": len(pool), "sources": per_source,
                        "contaminated_by_benchmark": contaminated},
              "benchmarks": bench_counts, "ngram": ngram, "seed": seed}
    return train, bench_sets, report


def benchmark_problems(benchmarks: list[tuple[str, list[dict]]]
                       ) -> tuple[list[dict], dict[tuple[str, str], dict[str, str | None]]]:
    """From (benchmark name, its rows) pairs: the problems evaluation samples, each its own fields
    (PROBLEM_SCHEMA) and its benchmark's name, and the metadata (level, subject) by (benchmark, problem id), to
    put back on the samples. Metadata stays out of what is sampled: the sample store digests those rows
    (mathsft.generate.journal_fingerprint), so metadata added to a benchmark never resamples it."""
    problems, metadata = [], {}
    for benchmark, rows in benchmarks:
        for row in rows:
            problems.append({name: row[name] for name in PROBLEM_SCHEMA.names} | {"benchmark": benchmark})
            metadata[benchmark, row["problem_id"]] = {name: row.get(name) for name in METADATA_COLUMNS}
    return problems, metadata
