"""A TCP listener on 127.0.0.1 that pipes each connection to the local Docker unix socket (test-only).

With `--certs DIR` it speaks mutual TLS (server cert + key; client certs must be signed by DIR/ca.pem),
like a daemon started with `--tlsverify`; with `--plain` it is the plain-text :2375 kind. The docker
SDK's real TLS and client-cert path is thus tested against the real engine.

Blocking sockets and two threads per connection, on purpose: a refused handshake then sends its TLS
alert on the wire (as dockerd does), so the client learns *why* (unknown CA, expired certificate…).

Half-close: when the client shuts its write side, the daemon's write side is shut too (the request is
complete); when the daemon ends its side (end of an exec/attach stream), the client connection is
closed once the bytes are flushed, or an `exec_start(socket=True)` reader would wait forever.

With `--coalesce-ms N` each daemon->client chunk waits N ms and takes whatever followed it, so an
exec's first output reaches the client in the same packet as the response headers (as a slow or
distant network makes common).

    python tests/support/tls_proxy.py --socket /var/run/docker.sock --certs DIR [--port 0]   # prints "listening <port>"

It runs as a script (standard library only); tests start it with `support.procs.Listener(command(...))`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("tls_proxy")
CHUNK = 1 << 16
DOCKER_SOCKET = "/var/run/docker.sock"


def command(*args: str, socket_path: str = DOCKER_SOCKET) -> list[str]:
    """The argv that runs this listener in a subprocess, in front of socket_path."""
    return [sys.executable, str(Path(__file__).resolve()), "--socket", socket_path, *args]


def server_context(certs: Path) -> ssl.SSLContext:
    """Mutual TLS: our server cert, and only client certs signed by certs/ca.pem."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "server-cert.pem"), str(certs / "server-key.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_to_daemon(client: socket.socket, daemon: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := client.recv(CHUNK):
            daemon.sendall(data)
        daemon.shutdown(socket.SHUT_WR)  # the client is done sending: pass the half-close on


def _recv_coalesced(daemon: socket.socket, coalesce_s: float) -> bytes:
    data = daemon.recv(CHUNK)
    if data and coalesce_s:
        time.sleep(coalesce_s)
        daemon.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while more := daemon.recv(CHUNK):
                data += more
        daemon.setblocking(True)
    return data


def _close_after_alert(raw: socket.socket) -> None:
    """Close a refused connection so the client still reads our TLS alert.

    Under TLS 1.3 the client sends its request before we have checked its certificate; closing with that
    request unread makes the kernel send a reset, which can reach the client before the alert does (it then
    sees "connection reset" instead of "unknown ca"). Half-close, drain briefly, then close.
    """
    with contextlib.suppress(OSError):
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(2)
        while raw.recv(CHUNK):
            pass
    raw.close()


def handle(raw: socket.socket, socket_path: str, ctx: ssl.SSLContext | None, coalesce_s: float) -> None:
    client: socket.socket = raw
    try:
        if ctx is not None:
            raw.settimeout(10)
            client = ctx.wrap_socket(raw, server_side=True)  # sends the alert itself when it refuses
            client.settimeout(None)
        daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        daemon.connect(socket_path)
    except (OSError, ssl.SSLError) as e:
        log.debug("refused or failed: %s", e)
        _close_after_alert(raw)
        return
    upstream = threading.Thread(target=_client_to_daemon, args=(client, daemon), daemon=True)
    upstream.start()
    try:
        while data := _recv_coalesced(daemon, coalesce_s):
            client.sendall(data)
    except OSError as e:
        log.debug("connection ended: %s", e)
    finally:
        # The daemon is done: end the client connection (TLS has no half-close), then the daemon's.
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        client.close()
        with contextlib.suppress(OSError):
            daemon.shutdown(socket.SHUT_RDWR)
        upstream.join(timeout=5)
        daemon.close()


def serve(socket_path: str, port: int, certs: Path | None, coalesce_s: float) -> None:
    ctx = server_context(certs) if certs else None
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: listener.close())
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed by SIGTERM
            return
        threading.Thread(target=handle, args=(conn, socket_path, ctx, coalesce_s), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=DOCKER_SOCKET)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--coalesce-ms", type=float, default=0, help="merge daemon->client chunks within N ms")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--certs", type=Path, help="dir with ca.pem, server-cert.pem, server-key.pem")
    mode.add_argument("--plain", action="store_true", help="no TLS at all (the :2375 kind)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="tls_proxy: %(message)s")
    serve(args.socket, args.port, None if args.plain else args.certs, args.coalesce_ms / 1000)


if __name__ == "__main__":
    main()
