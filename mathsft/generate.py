"""Sampling from an OpenAI-compatible server: an async client with bounded concurrency, per-request seeds,
retries with backoff on transient failures. Shared by teacher generation and evaluation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mathsft.io import folder_digest
from mathsft.prompts import build_messages

if TYPE_CHECKING:
    from mathsft.journal import Journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """What is sampled: these values change the outputs, so they are stored with every record. The defaults are
    config.schema.yaml's (teacher.* and eval.* alike; tests/test_settings.py checks them)."""

    samples_per_problem: int = field(default=4, metadata={"help": "answers sampled per problem"})
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = field(default=8192, metadata={"help": "most tokens of one answer"})
    # The base seed (its option is --seed); each request's seed derives from it (derive_request_seed).
    seed: int = field(default=0, metadata={"help": "base seed; each request gets one derived from it"})
    ignore_eos: bool = False  # benchmarks only: every answer runs to max_tokens


@dataclass(frozen=True)
class ClientSettings:
    """How requests are made: these change speed and robustness, not the outputs."""

    concurrency: int = field(default=64, metadata={"help": "requests in flight"})
    request_timeout_s: float = field(default=1800.0, metadata={"help": "seconds one request may take"})
    max_attempts: int = field(default=5, metadata={"help": "tries per sample on transient failures"})
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_failed_fraction: float = field(
        default=0.0, metadata={"help": "a job fails when more than this fraction of its samples failed"})


class GenerationFailed(RuntimeError):
    """More samples failed than the configured fraction allows."""


def derive_request_seed(base_seed: int, problem_id: str, sample_index: int) -> int:
    """A per-request seed from (base seed, problem, sample): stable under resumption and reordering."""
    digest = hashlib.sha256(f"{base_seed}:{problem_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    # A reply that does not parse as the API's JSON is a transient server fault, not a response.
    return isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError))


async def _request(client, served_model_name, messages, render, sampling, request_seed, settings
                   ) -> tuple[str, Any, Any]:
    """One chat completion, or one text completion of the locally rendered prompt when `render` is given;
    returns (text, finish_reason, usage)."""
    common = dict(model=served_model_name, temperature=sampling.temperature, top_p=sampling.top_p,
                  max_tokens=sampling.max_tokens, seed=request_seed, n=1, timeout=settings.request_timeout_s,
                  extra_body={"ignore_eos": True} if sampling.ignore_eos else None)
    if render is None:
        reply = await client.chat.completions.create(messages=messages, **common)
        text = reply.choices[0].message.content
    else:
        reply = await client.completions.create(prompt=render(messages), **common)
        text = reply.choices[0].text
    if text is None or reply.usage is None:
        raise ValueError("reply has no text or no usage")
    return text, reply.choices[0].finish_reason, reply.usage


async def _sample_one(client, semaphore, served_model_name: str, model_id: str, row_index: int, row: dict,
                      sample_index: int, prompt_template: str, sampling: Sampling, settings: ClientSettings,
                      render) -> dict[str, Any]:
    messages = build_messages(row["problem"], prompt_template)
    request_seed = derive_request_seed(sampling.seed, row["problem_id"], sample_index)
    record = dict(row) | {
        "row_index": row_index, "sample_index": sample_index, "messages": json.dumps(messages),
        "model": model_id, "served_model_name": served_model_name if served_model_name != model_id else None,
        "prompt_template": prompt_template, "api": "chat" if render is None else "completions",
        "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
        "seed": request_seed,  # stored under the API's name (mathsft.io)
    }
    async with semaphore:
        for attempt in range(1, settings.max_attempts + 1):
            started = time.monotonic()
            try:
                text, finish_reason, usage = await _request(client, served_model_name, messages, render, sampling,
                                                            request_seed, settings)
                return record | {
                    "response": text, "finish_reason": finish_reason,
                    "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                    "latency_s": time.monotonic() - started, "error": None,
                }
            except Exception as exc:  # classified below; never stored as a response
                if not _is_transient(exc) or attempt == settings.max_attempts:
                    log.warning("sample %s/%d failed after %d attempt(s): %r", row["problem_id"], sample_index, attempt, exc)
                    return record | {"error": f"{type(exc).__name__}: {exc}"}
                delay = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter spreads retries of a burst
    raise AssertionError("unreachable")


async def _sample_all(base_url, api_key, served_model_name, model_id, rows, todo, prompt_template, sampling, settings,
                      check_alive, progress, render):
    import openai

    # Our own retry loop counts failures; the client's built-in retries would hide them.
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0,
                                timeout=settings.request_timeout_s)
    semaphore = asyncio.Semaphore(settings.concurrency)
    tasks = [
        asyncio.ensure_future(_sample_one(client, semaphore, served_model_name, model_id, i, rows[i], k,
                                          prompt_template, sampling, settings, render))
        for i, k in todo
    ]
    results = []
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                results.append(task.result())
                progress(results[-1])
            if check_alive is not None:
                check_alive()  # a server that died mid-shard fails the job now, with its log, not after timeouts
    finally:
        for task in tasks:
            task.cancel()
        await client.close()
    return results


def journal_fingerprint(rows: list[dict], model_id: str, prompt_template: str, sampling: Sampling, api: str = "chat",
                        server_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """What a stored sample depends on: the model id (for a local folder, its files' digest too: a retrained model
    keeps its path), prompt template, API, sampling settings, server arguments, seed and rows. samples_per_problem is
    left out: more samples only add indices, fewer keep indices < n. Whole rows are digested, not only the
    problem texts: a stored record brings back its row's other fields (the gold answer, the benchmark) too."""
    rows_digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    # The keys name the store's files (mathsft.journal.store_path): renaming one would orphan every stored sample.
    return {"model": model_id, "model_files": folder_digest(model_id) if os.path.isdir(model_id) else None,
            "template": prompt_template, "api": api, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens, "seed": sampling.seed, "ignore_eos": sampling.ignore_eos,
            "server_args": list(server_args), "rows": rows_digest}


def sample(rows: list[dict], base_url: str, served_model_name: str, prompt_template: str, sampling: Sampling,
           settings: ClientSettings, api_key: str | None = None,
           check_alive: Callable[[], None] | None = None,
           journal: "Journal | None" = None,
           render: Callable[[list[dict]], str] | None = None,
           model_id: str | None = None,
           stored: dict[tuple[int, int], dict] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Sample `samples_per_problem` responses for each problem row from `served_model_name` (the name requests
    use; records keep `model_id`, the weights behind it, default the served name, with the served name beside it
    where the two differ). Returns the successful records (each row's own fields + the sample's), ordered by
    (row, sample index), and a summary; raises GenerationFailed when more than `max_failed_fraction` of the
    samples failed. With a journal, samples it already holds are not requested again and each new one is
    appended as it finishes. With `render` (messages -> prompt text, e.g. a chat template), the
    text-completions API is used instead of chat."""
    from tqdm import tqdm

    # `stored`: what the caller already loaded from the journal (it decided from it whether a server is needed).
    done = stored if stored is not None else journal.load() if journal is not None else {}
    wanted = [(i, k) for i in range(len(rows)) for k in range(sampling.samples_per_problem)]
    todo = [key for key in wanted if key not in done]
    total = len(wanted)
    started = time.monotonic()
    bar = tqdm(total=total, initial=total - len(todo), desc="samples", unit="req", mininterval=5.0)
    tokens = 0

    def progress(record):
        nonlocal tokens
        tokens += record.get("completion_tokens") or 0
        if journal is not None and record["error"] is None:
            journal.append({k: v for k, v in record.items() if k != "error"})
        bar.update(1)
        bar.set_postfix(tok_s=f"{tokens / max(time.monotonic() - started, 1e-9):.1f}", refresh=False)

    try:
        results = asyncio.run(
            _sample_all(base_url, api_key, served_model_name, model_id or served_model_name, rows, todo,
                        prompt_template, sampling, settings, check_alive, progress, render)
        ) if todo else []
    finally:
        bar.close()
        if journal is not None:
            journal.close()
    results += [done[key] | {"error": None} for key in wanted if key in done]
    results.sort(key=lambda r: (r["row_index"], r["sample_index"]))
    failed = [r for r in results if r["error"] is not None]
    ok = [{k: v for k, v in r.items() if k not in ("error", "row_index")} for r in results if r["error"] is None]
    elapsed = time.monotonic() - started
    summary = {
        "requested": total, "resumed": total - len(todo), "succeeded": len(ok), "failed": len(failed),
        "elapsed_s": round(elapsed, 2),
        "completion_tokens": tokens, "output_tokens_per_s": round(tokens / max(elapsed, 1e-9), 2),
        "finish_length": sum(r["finish_reason"] == "length" for r in ok),
    }
    if total and len(failed) / total > settings.max_failed_fraction:
        raise GenerationFailed(
            f"{len(failed)} of {total} samples failed (max_failed_fraction {settings.max_failed_fraction}); "
            f"first error: {failed[0]['error']}"
        )
    return ok, summary
