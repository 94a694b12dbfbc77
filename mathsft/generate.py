"""Sampling from an OpenAI-compatible server: an async client with bounded concurrency, per-request seeds,
retries with backoff on transient failures. Shared by teacher generation and evaluation. A server's reply is
outside input: each is bounded in time (request_timeout_s, for the whole request) and size (by the max_tokens
asked for), and checked for shape, encoding and consistency before it becomes a sample (read_reply)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mathsft.io import folder_digest
from mathsft.prompts import build_messages

if TYPE_CHECKING:
    from mathsft.journal import SampleStore

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


class MalformedReply(ValueError):
    """A reply that is not a completion of what was asked (too large, not UTF-8 JSON, no single choice, no text
    or usage, a text longer than its tokens can be...): never stored, and retried like a transient fault."""


# The most bytes one generated token may take in a reply's JSON: twice the longest token of the embedded models'
# vocabularies (Qwen2's, 128 bytes), so escapes fit too. A reply may hold max_tokens of them, plus its envelope.
REPLY_BYTES_PER_TOKEN = 256
REPLY_ENVELOPE_BYTES = 64 * 1024
FINISH_REASONS = ("stop", "length")


def reply_byte_limit(max_tokens: int) -> int:
    """The largest reply body read for a request of `max_tokens`: a larger one is cut off as malformed, so memory
    stays within concurrency x this, whatever a server sends."""
    return REPLY_ENVELOPE_BYTES + max_tokens * REPLY_BYTES_PER_TOKEN


@dataclass(frozen=True)
class Reply:
    text: str  # the content ("" where a server that split off the thought sent null: a thought cut short)
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reasoning: str | None = None  # the thought, where the server's reasoning parser split it off (mathsft.turns)


# Where servers put the thought they split off: vLLM 0.32's reasoning parsers, then earlier vLLM and other servers.
REASONING_FIELDS = ("reasoning", "reasoning_content")


def _count(usage: dict, key: str) -> int:
    value = usage.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedReply(f"usage.{key} is {value!r}, not a count")
    return value


def turn_bytes(content: str, reasoning: str | None) -> int:
    """The UTF-8 bytes of a turn's text, content and thought together (UnicodeEncodeError on a lone surrogate)."""
    return len(content.encode("utf-8")) + len((reasoning or "").encode("utf-8"))


def token_count_problem(text_bytes: int, completion_tokens: int, max_tokens: int | None) -> str | None:
    """Why a text of `text_bytes` bytes cannot be `completion_tokens` tokens of an answer capped at `max_tokens`,
    or None: the check a reply (read_reply) and a stored sample (mathsft.journal) both pass."""
    if max_tokens is not None and completion_tokens > max_tokens:
        return f"reports {completion_tokens} completion tokens; {max_tokens} were asked for"
    if text_bytes > completion_tokens * REPLY_BYTES_PER_TOKEN:
        return f"text ({text_bytes} bytes) is longer than its {completion_tokens} completion tokens can be"
    return None


def read_reply(body: bytes, api: str, max_tokens: int) -> Reply:
    """The completion in a reply body (a chat or text completion with n=1), or MalformedReply saying what is
    wrong with it."""
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MalformedReply(f"reply is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError):
        raise MalformedReply(f"reply is not JSON: {body[:60]!r}") from None
    choices = document.get("choices") if isinstance(document, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise MalformedReply(f"reply has {len(choices) if isinstance(choices, list) else 'no'} choices, not one")
    choice = choices[0]
    reasoning = None
    if api == "chat":
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        reasoning = _reasoning(message) if isinstance(message, dict) else None
        if text is None and reasoning is not None:
            text = ""  # the thought never ended: a parser sends no content
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise MalformedReply(f"reply's choice has no text ({'message.content' if api == 'chat' else 'text'} is "
                             f"{type(text).__name__})")
    try:
        size = turn_bytes(text, reasoning)
    except UnicodeEncodeError:
        raise MalformedReply("reply's text holds a lone surrogate (\\ud800-\\udfff): no UTF-8 text") from None
    if choice.get("finish_reason") not in FINISH_REASONS:
        raise MalformedReply(f"reply's finish_reason is {choice.get('finish_reason')!r}, not one of {FINISH_REASONS}")
    usage = document.get("usage")
    if not isinstance(usage, dict):
        raise MalformedReply("reply has no usage")
    prompt_tokens, completion_tokens = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    problem = token_count_problem(size, completion_tokens, max_tokens)
    if problem:
        raise MalformedReply(f"reply {problem}")
    return Reply(text, choice["finish_reason"], prompt_tokens, completion_tokens, reasoning)


def _reasoning(message: dict) -> str | None:
    """The thought a server split off into a field of its own, or None; two fields that disagree are refused."""
    values = [message[key] for key in REASONING_FIELDS if message.get(key) is not None]
    if any(not isinstance(value, str) for value in values):
        raise MalformedReply(f"reply's reasoning is {type(values[0]).__name__}, not text")
    if len(set(values)) > 1:
        raise MalformedReply(f"reply's {' and '.join(REASONING_FIELDS)} differ")
    return values[0] if values else None


def _bounded_http_client(limit: int):
    """The openai client's default HTTP client, reading at most `limit` bytes of any reply (error replies too):
    past that, the body raises MalformedReply."""
    import httpx2 as httpx  # the HTTP library the locked openai client is built on
    import openai
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    class BoundedBody(httpx.AsyncByteStream):
        def __init__(self, stream):
            self._stream = stream

        async def __aiter__(self):
            received = 0
            async for chunk in self._stream:
                received += len(chunk)
                if received > limit:
                    raise MalformedReply(f"reply is larger than {limit} bytes, the most a reply of the max_tokens "
                                         f"asked for can be")
                yield chunk

        async def aclose(self) -> None:
            await self._stream.aclose()

    class BoundedTransport(httpx.AsyncBaseTransport):
        def __init__(self):
            self._inner = httpx.AsyncHTTPTransport(limits=DEFAULT_CONNECTION_LIMITS)

        async def handle_async_request(self, request):
            response = await self._inner.handle_async_request(request)
            return httpx.Response(response.status_code, headers=response.headers, stream=BoundedBody(response.stream),
                                  extensions=response.extensions)

        async def aclose(self) -> None:
            await self._inner.aclose()

    return openai.DefaultAsyncHttpxClient(transport=BoundedTransport())


def derive_request_seed(base_seed: int, problem_id: str, sample_index: int) -> int:
    """A per-request seed from (base seed, problem, sample): stable under resumption and reordering."""
    digest = hashlib.sha256(f"{base_seed}:{problem_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, TimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    # A reply that is not a completion of what was asked is a server fault, not a response.
    return isinstance(exc, MalformedReply)


async def _request(client, served_model_name, messages, render, sampling, request_seed, settings) -> Reply:
    """One chat completion, or one text completion of the locally rendered prompt when `render` is given, within
    request_timeout_s from the first byte sent to the last received (a server trickling its reply is cut off)."""
    import openai

    common = dict(model=served_model_name, temperature=sampling.temperature, top_p=sampling.top_p,
                  max_tokens=sampling.max_tokens, seed=request_seed, n=1, timeout=settings.request_timeout_s,
                  extra_body={"ignore_eos": True} if sampling.ignore_eos else None)
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            if render is None:
                raw = await client.chat.completions.with_raw_response.create(messages=messages, **common)
            else:
                raw = await client.completions.with_raw_response.create(prompt=render(messages), **common)
    except TimeoutError:
        raise TimeoutError(f"no whole reply within request_timeout_s ({settings.request_timeout_s:g} s)") from None
    except openai.APIConnectionError as exc:
        if isinstance(exc.__cause__, MalformedReply):  # the body was cut off by _bounded_http_client
            raise exc.__cause__ from None
        raise
    return read_reply(raw.http_response.content, "chat" if render is None else "completions", sampling.max_tokens)


async def _sample_one(client, semaphore, served_model_name: str, model_id: str, row_index: int, row: dict,
                      sample_index: int, prompt_template: str, sampling: Sampling, settings: ClientSettings,
                      render, retried: Counter) -> dict[str, Any]:
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
                reply = await _request(client, served_model_name, messages, render, sampling, request_seed, settings)
                return record | {
                    "response": reply.text, "reasoning": reply.reasoning, "finish_reason": reply.finish_reason,
                    "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                    "latency_s": time.monotonic() - started, "error": None,
                }
            except Exception as exc:  # classified below; never stored as a response
                if not _is_transient(exc) or attempt == settings.max_attempts:
                    log.warning("sample %s/%d failed after %d attempt(s): %r", row["problem_id"], sample_index, attempt, exc)
                    return record | {"error": f"{type(exc).__name__}: {exc}"}
                retried[type(exc).__name__] += 1
                log.info("sample %s/%d: attempt %d failed, asking again: %r", row["problem_id"], sample_index, attempt, exc)
                delay = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter spreads retries of a burst
    raise AssertionError("unreachable")


async def _sample_all(base_url, api_key, served_model_name, model_id, rows, todo, prompt_template, sampling, settings,
                      check_alive, progress, render, retried):
    import openai

    # Our own retry loop counts failures; the client's built-in retries would hide them.
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0,
                                timeout=settings.request_timeout_s,
                                http_client=_bounded_http_client(reply_byte_limit(sampling.max_tokens)))
    semaphore = asyncio.Semaphore(settings.concurrency)
    tasks = [
        asyncio.ensure_future(_sample_one(client, semaphore, served_model_name, model_id, i, rows[i], k,
                                          prompt_template, sampling, settings, render, retried))
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


def problem_key(row: dict) -> str:
    """What a stored sample answers: its problem's id and a digest of the problem's text and gold answer. The sample
    store finds samples by it (with the sample index), so a problem keeps its samples whichever output, position or
    benchmark it comes back in, and a problem whose text or answer changed under the same id is sampled anew."""
    content = hashlib.sha256(json.dumps([row["problem"], row["answer"]]).encode()).hexdigest()[:16]
    return f"{row['problem_id']}:{content}"


def journal_fingerprint(model_id: str, prompt_template: str, sampling: Sampling, api: str = "chat",
                        server_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """What a stored sample depends on besides its problem (problem_key) and index: the model id (for a local
    folder, its files' digest too: a retrained model keeps its path), prompt template, API, sampling settings,
    server arguments and seed. samples_per_problem is left out: more samples only add indices, fewer keep indices
    < n. The rows are left out too: a sample is found by its problem, whichever output asks for it."""
    # The keys name the store's folders (mathsft.journal.store_folder): renaming one would orphan every stored
    # sample. Stores written before samples were keyed by problem hold these and a digest of their rows, "rows".
    return {"model": model_id, "model_files": folder_digest(model_id) if os.path.isdir(model_id) else None,
            "template": prompt_template, "api": api, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens, "seed": sampling.seed, "ignore_eos": sampling.ignore_eos,
            "server_args": list(server_args)}


def sample(rows: list[dict], base_url: str, served_model_name: str, prompt_template: str, sampling: Sampling,
           settings: ClientSettings, api_key: str | None = None,
           check_alive: Callable[[], None] | None = None,
           journal: "SampleStore | None" = None,
           render: Callable[[list[dict]], str] | None = None,
           model_id: str | None = None,
           stored: dict[tuple[str, int], dict] | None = None,
           think_prefilled: bool | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Sample `samples_per_problem` responses for each problem row from `served_model_name` (the name requests
    use; records keep `model_id`, the weights behind it, default the served name, with the served name beside it
    where the two differ). Returns the successful records (each row's own fields + the sample's), ordered by
    (row, sample index), and a summary; raises GenerationFailed when more than `max_failed_fraction` of the
    samples failed. With a sample store (`journal`), samples it already holds, by problem (problem_key) and
    sample index, are not requested again, and each new one is stored as it finishes. A problem that two rows
    hold (one problem in two benchmarks) is requested once; each row gets its samples with its own fields. With
    `render` (messages -> prompt text, e.g. a chat template), the text-completions API is used instead of chat.
    `think_prefilled`: whether the prompts end inside an opened <think> (mathsft.turns; None: not known), stored
    with each new sample."""
    from tqdm import tqdm

    # `stored`: what the caller already loaded from the store (it decided from it whether a server is needed).
    done = stored if stored is not None else journal.load() if journal is not None else {}
    keys = [problem_key(row) for row in rows]
    wanted = [(i, k) for i in range(len(rows)) for k in range(sampling.samples_per_problem)]
    first_row: dict[tuple[str, int], int] = {}  # each distinct sample asked for -> the first row that asks for it
    for i, k in wanted:
        first_row.setdefault((keys[i], k), i)
    todo = [(i, k) for (key, k), i in first_row.items() if (key, k) not in done]
    total = len(wanted)
    started = time.monotonic()
    bar = tqdm(total=len(first_row), initial=len(first_row) - len(todo), desc="samples", unit="req",
               mininterval=5.0)
    tokens = 0
    retried: Counter = Counter()  # failed attempts that were asked again, by exception type

    def progress(record):
        nonlocal tokens
        record["think_prefilled"] = think_prefilled
        tokens += record.get("completion_tokens") or 0
        if journal is not None and record["error"] is None:
            journal.append({k: v for k, v in record.items() if k not in ("error", "row_index")})
        bar.update(1)
        bar.set_postfix(tok_s=f"{tokens / max(time.monotonic() - started, 1e-9):.1f}", refresh=False)

    try:
        fresh = asyncio.run(
            _sample_all(base_url, api_key, served_model_name, model_id or served_model_name, rows, todo,
                        prompt_template, sampling, settings, check_alive, progress, render, retried)
        ) if todo else []
    finally:
        bar.close()
        if journal is not None:
            journal.close()
    answers = {key: record | {"error": None} for key, record in done.items()}
    answers |= {(keys[record["row_index"]], record["sample_index"]): record for record in fresh}
    # Each row's samples carry that row's fields (its benchmark, its source) and its index.
    results = [answers[keys[i], k] | rows[i] | {"row_index": i} for i, k in wanted]
    failed = [r for r in results if r["error"] is not None]
    ok = [{k: v for k, v in r.items() if k not in ("error", "row_index")} for r in results if r["error"] is None]
    elapsed = time.monotonic() - started
    summary = {
        "requested": total, "resumed": sum((keys[i], k) in done for i, k in wanted), "sent": len(todo),
        "succeeded": len(ok), "failed": len(failed), "elapsed_s": round(elapsed, 2),
        "completion_tokens": tokens, "output_tokens_per_s": round(tokens / max(elapsed, 1e-9), 2),
        "finish_length": sum(r["finish_reason"] == "length" for r in ok),
        "retried": dict(sorted(retried.items())),
    }
    if total and len(failed) / total > settings.max_failed_fraction:
        raise GenerationFailed(
            f"{len(failed)} of {total} samples failed (max_failed_fraction {settings.max_failed_fraction}); "
            f"first error: {failed[0]['error']}"
        )
    return ok, summary
