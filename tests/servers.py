"""Real servers on real sockets for end-to-end tests: the demo app under the Werkzeug server
(``flask run``), gunicorn with threads, and the native ASGI app under hypercorn and uvicorn,
each in its own process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(kind: str, port: int) -> list[str]:
    """The documented way to serve the demo app with server ``kind``."""
    if kind == "werkzeug":
        return [str(BIN / "flask"), "--app", "demo.app", "run", "--port", str(port), "--no-reload"]
    if kind == "gunicorn":
        return [
            str(BIN / "gunicorn"),
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "demo.app:app",
        ]
    if kind == "hypercorn":
        return [str(BIN / "hypercorn"), "--bind", f"127.0.0.1:{port}", "demo.app:asgi_app"]
    if kind == "uvicorn":
        return [
            str(BIN / "uvicorn"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--lifespan",
            "on",
            "demo.app:asgi_app",
        ]
    raise ValueError(kind)


class Server:
    """A server process serving the demo app with its uploads in ``upload_dir``."""

    def __init__(self, kind: str, upload_dir: Path) -> None:
        self.kind = kind
        self.upload_dir = upload_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "TUS_UPLOAD_DIR": str(self.upload_dir)}
        self.process = subprocess.Popen(
            command(self.kind, self.port),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own process group, so a kill reaches the master and its workers at once.
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"{self.kind} exited: {err}")
            try:
                httpx.options(self.url + "/files/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server; SIGKILL by default, as a crash would."""
        if self.process is None:
            return
        if sig == signal.SIGKILL:
            # The whole group at once: a master killed alone would leave its workers serving,
            # and workers killed alone would be respawned.
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.send_signal(sig)
        self.process.wait(timeout=30)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None


@contextmanager
def running(kind: str, upload_dir: Path) -> Iterator[Server]:
    server = Server(kind, upload_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill(signal.SIGTERM)
