"""The server's defaults and the loopback rule, importable without aiohttp or MLX: the serve
command, the Server form and Chat read them from here instead of restating them."""

from __future__ import annotations

import ipaddress

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_TOKENS = 512  # when a request gives none
DEFAULT_MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_PROMPT_TOKENS = 4096  # a 2-core CPU prefills ~40-300 tok/s: this many already take over a minute
DEFAULT_MAX_BODY = 1 << 20  # bytes
DEFAULT_HEADER_TIMEOUT = 30.0  # seconds for a request's headers
DEFAULT_BODY_TIMEOUT = 30.0  # seconds for its whole body, after the headers
DEFAULT_KEEPALIVE_TIMEOUT = 75.0  # an idle keep-alive connection (nginx's default)


def is_loopback(host: str) -> bool:
    """Whether `host` only this machine can reach (no --api-key needed there)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
