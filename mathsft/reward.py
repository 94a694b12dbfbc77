"""Reward: math-verify on each response against its gold answer, gold parsed first, every check bounded in
time by a worker process that the parent kills when it runs over (math-verify's own timeouts use signals,
which fail off the main thread and cannot stop a hung sympy call from outside)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Iterable

log = logging.getLogger(__name__)

CORRECT, WRONG, NO_ANSWER, TIMEOUT, ERROR = "correct", "wrong", "no_answer", "timeout", "error"


@dataclass(frozen=True)
class Score:
    extracted_answer: str | None
    reward: float
    verifier_status: str


def score_response(response: str, gold: str) -> Score:
    """math-verify one response against its gold answer, in this process, with no time bound."""
    from math_verify import parse, verify

    gold_parsed = parse(gold, parsing_timeout=None)
    if not gold_parsed:
        return Score(None, 0.0, ERROR)  # a gold answer math-verify cannot read: counted, never rewarded
    predicted = parse(response, parsing_timeout=None)
    if not predicted:
        return Score(None, 0.0, NO_ANSWER)
    extracted = str(predicted[-1])  # parse gives [sympy value, its source string]
    correct = verify(gold_parsed, predicted, timeout_seconds=None)
    return Score(extracted, 1.0 if correct else 0.0, CORRECT if correct else WRONG)


def _worker(conn) -> None:
    # The time bound is ours (the parent kills the worker); math-verify warns on every call without its own.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    while True:
        item = conn.recv()
        if item is None:
            return
        response, gold = item
        try:
            conn.send(score_response(response, gold))
        except Exception as exc:  # counted as an error row by the parent, with its type in the log
            conn.send(Score(None, 0.0, f"{ERROR}:{type(exc).__name__}"))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.started = 0.0

    def submit(self, index: int, item: tuple[str, str]) -> None:
        self.index, self.started = index, time.monotonic()
        self.conn.send(item)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


def score_all(items: Iterable[tuple[str, str]], workers: int, timeout_s: float) -> list[Score]:
    """Score (response, gold) pairs in `workers` processes; a check running past `timeout_s` is killed
    with its worker (a fresh one takes its place) and scored as a timeout. Order is kept."""
    items = list(items)
    results: list[Score | None] = [None] * len(items)
    # forkserver: workers start from a clean process that has math-verify imported, not a fork of this one.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["math_verify"])
    pool = [_Worker(ctx) for _ in range(max(1, min(workers, len(items))))]
    next_item = 0
    try:
        for worker in pool:
            if next_item < len(items):
                worker.submit(next_item, items[next_item])
                next_item += 1
        while any(worker.index is not None for worker in pool):
            busy = [w for w in pool if w.index is not None]
            oldest = min(w.started for w in busy)
            ready = wait([w.conn for w in busy], timeout=max(0.0, oldest + timeout_s - time.monotonic()))
            now = time.monotonic()
            for i, worker in enumerate(pool):
                if worker.index is None:
                    continue
                if worker.conn in ready:
                    try:
                        results[worker.index] = worker.conn.recv()
                    except EOFError:  # the worker died (e.g. out of memory): count it, replace it
                        results[worker.index] = Score(None, 0.0, ERROR + ":worker_died")
                        worker.kill()
                        pool[i] = worker = _Worker(ctx)
                elif now - worker.started >= timeout_s:
                    results[worker.index] = Score(None, 0.0, TIMEOUT)
                    worker.kill()
                    pool[i] = worker = _Worker(ctx)
                else:
                    continue
                worker.index = None
                if next_item < len(items):
                    worker.submit(next_item, items[next_item])
                    next_item += 1
    finally:
        for worker in pool:
            if worker.index is None and worker.proc.is_alive():
                worker.conn.send(None)
            worker.proc.join(timeout=1)
            if worker.proc.is_alive():
                worker.kill()
    return results  # type: ignore[return-value]


def status_counts(scores: list[Score]) -> dict[str, int]:
    return dict(Counter(score.verifier_status for score in scores))


def score_rows(rows: list[dict], workers: int, timeout_s: float) -> list[Score]:
    """Score rows with `response` and gold `answer` in place (extracted_answer, reward, verifier_status)."""
    scores = score_all(((row["response"], row["answer"]) for row in rows), workers, timeout_s)
    for row, score in zip(rows, scores, strict=True):
        row.update(extracted_answer=score.extracted_answer, reward=score.reward, verifier_status=score.verifier_status)
    return scores
