"""A fault-injecting HTTP proxy for tests: it sits in front of a real vLLM server and, for a seeded share
of requests, answers 500 or 429, resets the connection, stalls past the client's timeout, or returns
malformed JSON; the rest it forwards. Only faults a real server cannot be made to produce live here."""

from __future__ import annotations

import asyncio
import random
import threading

from aiohttp import ClientSession, web

FAULTS = ("500", "429", "reset", "stall", "malformed")


class FaultProxy:
    def __init__(self, upstream: str, fault_rate: float, stall_s: float, seed: int = 0):
        self.upstream = upstream.rstrip("/")
        self.fault_rate, self.stall_s = fault_rate, stall_s
        self.rng = random.Random(seed)
        self.injected = {fault: 0 for fault in FAULTS}
        self.forwarded = 0
        self.loop = asyncio.new_event_loop()
        self.port: int | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
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
        headers = {key: value for key, value in request.headers.items() if key.lower() in ("authorization", "content-type")}
        async with self.session.post(f"{self.upstream}{request.path}", data=body, headers=headers) as reply:
            payload = await reply.read()
            self.forwarded += 1
            if fault == "malformed":
                payload = payload[: len(payload) // 2]  # a reply cut in half: not JSON
            return web.Response(body=payload, status=reply.status, content_type="application/json")

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
