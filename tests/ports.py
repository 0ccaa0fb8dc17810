"""Free loopback ports for the tests that start servers (one helper for all of them)."""

from __future__ import annotations

import socket


def free_ports(n: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports on ``host`` that were free a moment ago: the kernel picks them while
    all ``n`` sockets are held open, so no two are the same port. They are closed again on return,
    so another program may take one before the caller starts on it (the team services fixture
    starts again on fresh ports when that happens)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
