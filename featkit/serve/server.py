"""Running the workbench: bind a socket (a clear message when the port is taken), serve with uvicorn until Ctrl-C."""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
from typing import Callable

from featkit.errors import FeatkitError
from featkit.serve.backend import Workbench

DEFAULT_PORT = 8765


def is_local(host: str) -> bool:
    """Whether ``host`` only reaches this machine (loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port)."""
    if not 0 <= port <= 65535:
        raise FeatkitError(f"port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise FeatkitError(f"cannot bind to host {host!r}: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise FeatkitError(f"port {port} on {host} is in use; pass --port N (or --port 0 for any free port)") \
                from None
        raise FeatkitError(f"cannot bind to {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str, token: str | None) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(workbench: Workbench, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``workbench`` until interrupted. Another host than loopback gets a fresh token, part of the URL
    passed to ``on_ready``."""
    import uvicorn

    from featkit.serve.app import create_app

    local = is_local(host)
    token = None if local else new_token()
    sock = bind(host, port)
    app = create_app(workbench, token=token, local=local)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    if on_ready is not None:
        on_ready(url_of(sock, host, token))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
