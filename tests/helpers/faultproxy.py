"""A fault-injecting HTTP proxy for tests: it sits in front of a real vLLM server and, for a seeded share
of requests, answers 500 or 429, resets the connection, stalls past the client's timeout, or returns
malformed JSON; the rest it forwards. A hostile server's replies (HOSTILE_REPLIES) can be sent, one per request,
to the first requests. Only faults a real server cannot be made to produce live here."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter

from aiohttp import ClientSession, web

FAULTS = ("500", "429", "reset", "stall", "malformed")
# What a hostile or broken OpenAI-compatible server can send with status 200, each made from the real reply.
HOSTILE_REPLIES = {
    "trickle": "the real reply, one byte a second",
    "huge": "a 20 MB answer, reported as 7 completion tokens",
    "text beyond its tokens": "a 10 kB answer, reported as 7 completion tokens",
    "tokens beyond max_tokens": "the real answer, reported as 10,000 completion tokens",
    "lone surrogate": "the real answer with a \\ud800 escape in it",
    "no choices": "choices: []",
    "two choices": "the real choice twice",
    "null content": "message.content: null",
    "no usage": "the real reply without usage",
    "html": "an HTML page (text/html)",
    "not utf-8": "the real reply with a byte that is not UTF-8",
    "finish_reason abort": "finish_reason: abort",
}


class FaultProxy:
    def __init__(self, upstream: str, fault_rate: float = 0.0, stall_s: float = 0.0, seed: int = 0,
                 hostile: tuple[str, ...] = (), delay_s: float = 0.0):
        """`hostile`: names from HOSTILE_REPLIES, sent in this order to the first completion requests; `delay_s`: how long
        every request waits before it is forwarded (a slow server)."""
        self.upstream = upstream.rstrip("/")
        self.fault_rate, self.stall_s, self.delay_s = fault_rate, stall_s, delay_s
        self.rng = random.Random(seed)
        self.hostile = list(hostile)
        self.injected = {fault: 0 for fault in (*FAULTS, *hostile)}
        self.forwarded = 0
        self.paths: Counter[str] = Counter()  # requests received, by path
        self.loop = asyncio.new_event_loop()
        self.port: int | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.paths[request.path] += 1
        if self.hostile and request.path.endswith("completions"):
            fault = self.hostile.pop(0)
        else:
            fault = self.rng.choice(FAULTS) if self.rng.random() < self.fault_rate else None
        if fault:
            self.injected[fault] += 1
        if fault == "500":
            return web.json_response({"error": {"message": "injected internal error"}}, status=500)
        if fault == "429":
            return web.json_response({"error": {"message": "injected rate limit"}}, status=429)
        if fault == "reset":
            request.transport.abort()
            return web.Response(status=500)
        if fault == "stall":
            await asyncio.sleep(self.stall_s)
        await asyncio.sleep(self.delay_s)
        headers = {key: value for key, value in request.headers.items() if key.lower() in ("authorization", "content-type")}
        async with self.session.request(request.method, f"{self.upstream}{request.path}", data=body,
                                        headers=headers) as reply:
            payload = await reply.read()
            self.forwarded += 1
            if fault == "malformed":
                payload = payload[: len(payload) // 2]  # a reply cut in half: not JSON
            if fault in HOSTILE_REPLIES:
                return await self._hostile(fault, payload, request)
            return web.Response(body=payload, status=reply.status, content_type="application/json")

    async def _hostile(self, fault: str, payload: bytes, request: web.Request) -> web.StreamResponse:
        reply = json.loads(payload)
        choice = reply["choices"][0]
        key = "message" if "message" in choice else None

        def set_text(text):
            if key:
                choice["message"]["content"] = text
            else:
                choice["text"] = text

        if fault == "trickle":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for byte in payload:
                await response.write(bytes([byte]))
                await asyncio.sleep(1.0)
            return response
        if fault == "html":
            return web.Response(text="<html><body>Gateway says hello</body></html>", content_type="text/html")
        if fault in ("huge", "text beyond its tokens"):
            set_text("x" * (20_000_000 if fault == "huge" else 10_000))
            reply["usage"]["completion_tokens"] = 7
        elif fault == "tokens beyond max_tokens":
            reply["usage"]["completion_tokens"] = 10_000
        elif fault == "no choices":
            reply["choices"] = []
        elif fault == "two choices":
            reply["choices"] = [choice, choice]
        elif fault == "null content":
            set_text(None)
        elif fault == "no usage":
            del reply["usage"]
        elif fault == "finish_reason abort":
            choice["finish_reason"] = "abort"
        body = json.dumps(reply).encode()
        if fault == "lone surrogate":
            body = body.replace(b'"content": "', b'"content": "\\ud800', 1).replace(b'"text": "', b'"text": "\\ud800', 1)
        elif fault == "not utf-8":
            body = body.replace(b'"content": "', b'"content": "\xff', 1).replace(b'"text": "', b'"text": "\xff', 1)
        return web.Response(body=body, content_type="application/json")

    async def _start(self) -> None:
        self.session = ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> "FaultProxy":
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            await self.runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
