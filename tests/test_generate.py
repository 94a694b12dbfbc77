import httpx
import openai
import pytest

from mathsft.generate import _is_transient, derive_request_seed


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
