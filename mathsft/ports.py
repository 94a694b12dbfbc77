"""Local TCP ports: a free one to listen on (a managed vLLM server, a one-process training's rendezvous) and
whether one is taken."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no one listens on now (the OS picks it; another process could take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections at host:port."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0
