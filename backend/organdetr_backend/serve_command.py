"""``organdetr serve``: run the HTTP inference service with uvicorn.

The model is loaded before the socket listens; once it does, exactly one machine-readable line goes to stdout
(``ORGANDETR_READY {json}``, see API.md), so a parent process (the Slicer module) can start the service with
``--port 0`` and learn the port. SIGTERM / SIGINT cancel the running and queued jobs and exit with code 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

from organdetr.errors import UserInputError
from organdetr_client.api import DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT, DEFAULT_QUEUE_LIMIT, READY_LINE_PREFIX

TOKEN_ENV = "ORGANDETR_TOKEN"
_BYTES_PER_MB = 1024**2
_GRACEFUL_SHUTDOWN_S = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (see the ready line)")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token", help="bearer token clients must send (visible in the process list: prefer a file)")
    tokens.add_argument("--token-file", type=Path, help="file whose first line is the bearer token")
    parser.add_argument(
        "--model", default=None, help="installed model name or checkpoint folder (default: the shipped model)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="upload size limit")
    parser.add_argument("--queue-limit", type=int, default=DEFAULT_QUEUE_LIMIT, help="jobs waiting before 503")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="info adds an access log on stderr (client, method, path, status, seconds; never tokens or file names)",
    )


def resolve_token(token: str | None, token_file: Path | None) -> tuple[str, str]:
    """``(token, source)``: --token, then --token-file (first line), then $ORGANDETR_TOKEN, else a generated one."""
    if token is not None:
        if not token.strip():
            raise UserInputError("--token is empty")
        return token.strip(), "argument"
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise UserInputError(f"cannot read token file {token_file}: {error.strerror}") from None
        first = lines[0].strip() if lines else ""
        if not first:
            raise UserInputError(f"token file {token_file} is empty")
        return first, "file"
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), "environment"
    return secrets.token_urlsafe(32), "generated"


MAX_PORT = 65535


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (port 0: the OS picks a free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise UserInputError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def ready_line(sock: socket.socket, token: str, token_source: str) -> str:
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    payload = {"url": f"http://{url_host}:{port}", "host": host, "port": port, "pid": os.getpid()}
    payload["token_source"] = token_source
    if token_source == "generated":
        payload["token"] = token
    return f"{READY_LINE_PREFIX} {json.dumps(payload)}"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .predictor import Predictor
    from .server import ServerSettings, ServiceServer, create_app

    if args.max_upload_mb <= 0 or args.queue_limit < 1:
        raise UserInputError("--max-upload-mb must be positive and --queue-limit at least 1")
    if not 0 <= args.port <= MAX_PORT:  # getaddrinfo would silently wrap a larger number modulo 65536
        raise UserInputError(f"--port must be between 0 and {MAX_PORT}")
    token, token_source = resolve_token(args.token, args.token_file)
    settings = ServerSettings(
        token=token,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * _BYTES_PER_MB),
        queue_limit=args.queue_limit,
    )
    sock = _bind(settings.host, settings.port)  # before the slow model load: a taken port fails at once
    if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        print(
            f"organdetr serve: warning: listening on {settings.host}, reachable from other machines; anyone with the "
            "token can run jobs, and traffic is not encrypted (put a TLS reverse proxy in front)",
            file=sys.stderr,
        )
    predictor = Predictor(args.model, args.device)
    app = create_app(settings, predictor)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,  # uvicorn's goes to stdout (the ready line's channel) with query strings; ours: stderr
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    log_to_stderr(args.log_level)
    # uvicorn re-raises the caught signal after its graceful shutdown; these handlers make that a clean exit 0.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    ServiceServer(config, app, ready_line(sock, token, token_source)).run(sockets=[sock])
    sys.stdout.flush()
    return 0


def log_to_stderr(level: str) -> None:
    """The service's own messages (access log at info, job failures, shutdown) as ``organdetr serve:`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("organdetr serve: %(levelname)s: %(message)s"))
    package_logger = logging.getLogger("organdetr_backend")
    package_logger.addHandler(handler)
    package_logger.setLevel(level.upper())
