"""Reward: math-verify on each response against its gold answer, gold parsed first, every check bounded in
time by a worker process that the parent kills when it runs over (math-verify's own timeouts use signals,
which fail off the main thread and cannot stop a hung sympy call from outside)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Iterable

from mathsft.turns import answer_of

log = logging.getLogger(__name__)

# The only values verifier_status takes (mathsft.io's scored schemas store it as a string).
CORRECT, WRONG, NO_ANSWER, TIMEOUT, PARSE_ERROR = "correct", "wrong", "no_answer", "timeout", "parse_error"
STATUSES = (CORRECT, WRONG, NO_ANSWER, TIMEOUT, PARSE_ERROR)

# Items sent to a worker at once. A check of an 8-20 KB response takes a few milliseconds, and with one item
# per message the worker waits for the parent to wake up after each: on 2 shared cores the pool then got
# about 0.8 of what 2 independent math-verify processes get, against about 1.0 with 16 (bench/scoring.py
# --batch_size 1 and 16, 4 runs each). Batches also keep a problem's samples together (math-verify caches
# its last parses, the gold among them), and they shrink at the end of a shard to keep the workers level.
BATCH_SIZE = 16

# Starting a worker takes well under a second; this only catches a broken start, it never times a check.
WORKER_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class RewardSettings:
    """How scoring runs; the scores do not depend on `workers`. The defaults are config.schema.yaml's (reward.*)."""

    timeout_s: float = field(
        default=10.0, metadata={"help": "per-check time bound in seconds; a check past it is killed and scored 'timeout'"})
    workers: int = field(default=2, metadata={"help": "scoring processes"})


@dataclass(frozen=True)
class Score:
    extracted_answer: str | None
    reward: float
    verifier_status: str
    detail: str | None = field(default=None, compare=False)  # why a parse_error: logged with its row, not stored


def score_response(response: str, gold: str) -> Score:
    """math-verify one response against its gold answer, in this process, with no time bound."""
    from math_verify import parse, verify

    try:
        # raise_on_error: a parse that fails inside math-verify is a parse_error, not an empty answer. (Each
        # candidate expression that does not parse is still skipped inside parse, as math-verify intends.)
        gold_parsed = parse(gold, parsing_timeout=None, raise_on_error=True)
        if not gold_parsed:
            return Score(None, 0.0, PARSE_ERROR, "gold unreadable")  # counted, never rewarded
        predicted = parse(response, parsing_timeout=None, raise_on_error=True)
        if not predicted:
            return Score(None, 0.0, NO_ANSWER)
        extracted = str(predicted[-1])  # parse gives [sympy value, its source string]
        correct = verify(gold_parsed, predicted, timeout_seconds=None)
    except Exception as exc:  # the type only: printing sympy values from a failed check can hang
        return Score(None, 0.0, PARSE_ERROR, f"math-verify raised {type(exc).__name__}")
    return Score(extracted, 1.0 if correct else 0.0, CORRECT if correct else WRONG)


def _serve(conn) -> None:
    """Worker loop: score each batch of (index, response, gold), one reply per item as soon as it is done."""
    # The time bound is ours (the parent kills the worker); math-verify warns on every call without its own.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send("ready")
    while True:  # until the parent kills it
        for index, response, gold in conn.recv():
            score = score_response(response, gold)
            # The moment this item ended is the moment the next one of the batch began: the parent times that
            # one from here (one monotonic clock for all processes of the machine), not from when it reads this.
            conn.send((index, score, time.monotonic()))


class _Worker:
    """One scoring process, the indices it holds (the first one is running) and when that one started."""

    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.pending: deque[int] = deque()
        self.started = 0.0

    def wait_ready(self) -> None:
        # A loaded machine can take seconds to start a process: the first check is timed from when the worker
        # can run it, not from when it was asked to start.
        if not self.conn.poll(WORKER_START_TIMEOUT_S):
            raise RuntimeError(f"a scoring worker did not start within {WORKER_START_TIMEOUT_S} s")
        try:
            self.conn.recv()
        except (EOFError, OSError):
            self.proc.join()
            raise RuntimeError(f"a scoring worker exited while starting (exit code {self.proc.exitcode}); "
                               "its error is above") from None

    def submit(self, indices: list[int], items: list[tuple[str, str]]) -> None:
        # Only ever called on an idle worker, which is blocked reading: the send cannot block on a hung one.
        self.pending.extend(indices)
        self.started = time.monotonic()
        try:
            self.conn.send([(index, *items[index]) for index in indices])
        except OSError:  # it died while idle (killed from outside): the parent reads its end of file next and
            pass  # handles it as any dead worker, the batch's first item counted as a parse_error

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


def score_all(items: Iterable[tuple[str, str]], workers: int, timeout_s: float,
              batch_size: int = BATCH_SIZE) -> list[Score]:
    """Score (response, gold) pairs in `workers` processes, `batch_size` items per message, results in input
    order. A check running past `timeout_s` is killed with its worker and scored as a timeout; the rest of its
    batch goes to a fresh worker. A worker that dies costs its running item a parse_error, the same way."""
    items = list(items)
    if not items:
        return []
    results: list[Score | None] = [None] * len(items)
    todo = deque(range(len(items)))
    # forkserver: workers start from a clean process that has math-verify imported, not a fork of this one.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["math_verify"])
    pool: list[_Worker] = []

    def replace_worker(slot: int, worker: _Worker, status: str, why: str) -> None:
        # The running item gets `status`; the items behind it never started and go back to the front of the line.
        index = worker.pending.popleft()
        results[index] = Score(None, 0.0, status, why)
        log.warning("row %d: %s (%s); worker replaced", index, status, why)
        worker.kill()
        todo.extendleft(reversed(worker.pending))
        pool[slot] = _Worker(ctx)
        pool[slot].wait_ready()

    try:
        pool += [_Worker(ctx) for _ in range(max(1, min(workers, len(items))))]
        for worker in pool:  # started together, then waited for
            worker.wait_ready()
        while todo or any(worker.pending for worker in pool):
            for worker in pool:
                if not worker.pending and todo:
                    # Shrink batches at the end so that no worker is left alone with a long one.
                    size = max(1, min(batch_size, len(todo) // len(pool)))
                    worker.submit([todo.popleft() for _ in range(min(size, len(todo)))], items)
            busy = [worker for worker in pool if worker.pending]
            deadline = min(worker.started for worker in busy) + timeout_s
            ready = wait([worker.conn for worker in busy], timeout=max(0.0, deadline - time.monotonic()))
            for slot, worker in enumerate(pool):
                if not worker.pending:
                    continue
                if worker.conn in ready:
                    try:
                        index, score, finished_at = worker.conn.recv()
                    except (EOFError, OSError):  # the worker died (e.g. killed for memory)
                        worker.proc.join()
                        replace_worker(slot, worker, PARSE_ERROR, f"worker died, exit code {worker.proc.exitcode}")
                        continue
                    worker.pending.popleft()  # replies come in the order of the batch: this is `index`
                    results[index], worker.started = score, finished_at
                    if score.verifier_status == PARSE_ERROR:
                        log.warning("row %d: %s (%s)", index, PARSE_ERROR, score.detail)
                elif time.monotonic() - worker.started >= timeout_s:
                    replace_worker(slot, worker, TIMEOUT, f"still running after {timeout_s:g} s")
    finally:
        # Idle, or busy when an error or SIGTERM (as SystemExit: scripts call mathsft.serve.exit_on_sigterm) got us
        # here; an idle one would end at the end of its pipe, a busy one only when its check does. Every worker
        # is signalled before any is waited for, so a second signal arriving here cannot leave one running.
        for worker in pool:
            worker.proc.kill()
        for worker in pool:
            worker.kill()  # a kill cannot hang
    return results  # type: ignore[return-value]


def status_counts(scores: list[Score]) -> dict[str, int]:
    """How many scores have each verifier status, every status listed (zeros included)."""
    counts = Counter(score.verifier_status for score in scores)
    return {status: counts[status] for status in STATUSES}


def score_rows(rows: list[dict], workers: int, timeout_s: float) -> list[Score]:
    """Score rows in place (extracted_answer, reward, verifier_status): the answer of each `response` (after a
    reasoning model's thought, never inside it: mathsft.turns) against the gold `answer`."""
    scores = score_all(((answer_of(row), row["answer"]) for row in rows), workers, timeout_s)
    for row, score in zip(rows, scores, strict=True):
        row.update(extracted_answer=score.extracted_answer, reward=score.reward, verifier_status=score.verifier_status)
    return scores
