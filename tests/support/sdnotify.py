"""Helpers for the systemd notify tests (no tests here): read what the agent sent to the notify socket."""

from __future__ import annotations

import socket
import time


def receive(sock: socket.socket, timeout: float) -> list[tuple[float, list[str]]]:
    """Every datagram arriving within `timeout` seconds, with its arrival time."""
    out = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        out.append((time.monotonic(), data.decode().split("\n")))
    return out
