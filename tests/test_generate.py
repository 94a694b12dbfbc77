import asyncio
import json
import re

import httpx
import httpx2
import openai
import pytest

from mathsft.generate import MalformedReply, Reply, _is_transient, derive_request_seed, read_reply, reply_byte_limit


def test_request_seeds_are_stable_and_distinct_per_problem_and_sample():
    assert derive_request_seed(0, "abc", 1) == derive_request_seed(0, "abc", 1)
    seeds = {derive_request_seed(0, pid, k) for pid in ("a", "b") for k in range(4)}
    assert len(seeds) == 8
    assert derive_request_seed(1, "a", 0) != derive_request_seed(0, "a", 0)
    assert all(0 <= s < 2**31 for s in seeds)  # vLLM takes a 32-bit signed seed


def _status_error(code: int) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return openai.APIStatusError("x", response=httpx.Response(code, request=request), body=None)


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503])
def test_rate_limits_timeouts_and_server_errors_are_retried(code):
    assert _is_transient(_status_error(code))


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_client_errors_are_not_retried(code):
    assert not _is_transient(_status_error(code))


def test_connection_failures_are_retried_and_programming_errors_are_not():
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert _is_transient(openai.APIConnectionError(request=request))
    assert _is_transient(openai.APITimeoutError(request=request))
    assert not _is_transient(KeyError("choices"))


def _reply(**changes) -> dict:
    reply = {"id": "c", "object": "chat.completion", "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is $4$."},
                          "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}
    return reply | changes


def test_a_well_formed_reply_gives_its_text_finish_reason_and_token_counts():
    reply = read_reply(json.dumps(_reply()).encode(), "chat", max_tokens=8)
    assert reply == Reply("The answer is $4$.", "stop", 12, 7)
    text = _reply(choices=[{"index": 0, "text": "4", "finish_reason": "length"}])
    assert read_reply(json.dumps(text).encode(), "completions", max_tokens=8) == Reply("4", "length", 12, 7)


def test_a_thought_the_server_split_off_is_kept_beside_the_content():
    """vLLM's reasoning parser: the thought in `reasoning` (0.32) or `reasoning_content` (earlier versions, other
    servers); content null where the thought never ended."""
    def split(message):
        return json.dumps(_reply(choices=[{"index": 0, "message": {"role": "assistant", **message},
                                           "finish_reason": "stop"}])).encode()

    both = {"content": "$4$", "reasoning": "2+2"}
    assert read_reply(split(both), "chat", 8) == Reply("$4$", "stop", 12, 7, "2+2")
    assert read_reply(split({"content": "$4$", "reasoning_content": "2+2"}), "chat", 8).reasoning == "2+2"
    assert read_reply(split(both | {"reasoning_content": "2+2"}), "chat", 8).reasoning == "2+2"
    assert read_reply(split({"content": None, "reasoning": "2+2"}), "chat", 8) == Reply("", "stop", 12, 7, "2+2")
    for message, refused in (({"content": "$4$", "reasoning": "a", "reasoning_content": "b"}, "differ"),
                             ({"content": "$4$", "reasoning": ["a"]}, "reasoning is list"),
                             ({"content": "x", "reasoning": "y" * 2000}, "longer than its 7 completion tokens")):
        with pytest.raises(MalformedReply, match=refused):
            read_reply(split(message), "chat", 8)


CHOICE = _reply()["choices"][0]
MALFORMED = [
    (b"<html>busy</html>", "not JSON"),
    (json.dumps(_reply()).encode().replace(b"The", b"\xffThe"), "not UTF-8"),
    (json.dumps(_reply()).encode().replace(b"The", b"\\ud800The"), "lone surrogate"),
    (json.dumps(_reply(choices=[])).encode(), "0 choices, not one"),
    (json.dumps(_reply(choices=[CHOICE, CHOICE])).encode(), "2 choices, not one"),
    (json.dumps(_reply(choices=[CHOICE | {"message": {"content": None}}])).encode(), "no text"),
    (json.dumps(_reply(choices=[CHOICE | {"finish_reason": "abort"}])).encode(), "finish_reason is 'abort'"),
    (json.dumps({k: v for k, v in _reply().items() if k != "usage"}).encode(), "no usage"),
    (json.dumps(_reply(usage={"prompt_tokens": 12, "completion_tokens": True})).encode(), "completion_tokens is True"),
    (json.dumps(_reply(usage={"prompt_tokens": 12, "completion_tokens": 9})).encode(), "9 completion tokens; 8 were"),
    (json.dumps(_reply(choices=[CHOICE | {"message": {"content": "x" * 2000}}])).encode(),
     "text (2000 bytes) is longer than its 7 completion tokens"),
    (b"[1, 2]", "no choices"),
]


@pytest.mark.parametrize("body, message", MALFORMED, ids=[message for _, message in MALFORMED])
def test_a_malformed_reply_is_refused_saying_why_and_retried(body, message):
    with pytest.raises(MalformedReply, match=re.escape(message)) as refused:
        read_reply(body, "chat", max_tokens=8)
    assert _is_transient(refused.value)


def test_a_reply_larger_than_its_max_tokens_allow_is_cut_off_as_it_arrives():
    """The body is read through a byte limit: a server's 20 MB answer to max_tokens 8 is never held whole."""
    sent = []

    def handler(request):
        async def body():
            for _ in range(20_000):
                sent.append(1000)
                yield b"x" * 1000
        return httpx2.Response(200, content=body())

    async def read():
        import mathsft.generate as generate

        client = generate._bounded_http_client(reply_byte_limit(8))
        client._transport._inner = httpx2.MockTransport(handler)
        async with client:
            return await client.get("http://server/v1/chat/completions")

    with pytest.raises(MalformedReply, match=f"larger than {reply_byte_limit(8)} bytes"):
        asyncio.run(read())
    assert sum(sent) <= reply_byte_limit(8) + 1000
