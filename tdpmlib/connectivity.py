"""Whether a host is reachable before a download is tried: the proxy settings and one TCP probe."""

from __future__ import annotations

import os
import socket
import threading


def tcp_unreachable_reason(host: str, port: int, *, timeout: float) -> str | None:
    """Why one TCP connection to ``host:port`` failed within ``timeout`` seconds, or None if it succeeded.

    Runs in a thread, since name resolution itself has no timeout."""
    result: list[BaseException] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except BaseException as err:
            result.append(err)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {timeout:g} s"
    if result:
        return f"{host} unreachable: {result[0]}"
    return None


def proxy_configured() -> bool:
    """Whether an HTTP(S) proxy is set (a direct TCP probe would bypass it, so none is made)."""
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
