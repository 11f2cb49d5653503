"""flask-tus under WSGI servers against a minimal WSGI upload app, in the same run.

Run by hand from the repository root (never by the test suite)::

    .venv/bin/python benchmarks/bench_wsgi.py [--quick]

For each server (gunicorn gthread, the Werkzeug server) and each app (``baseline_wsgi:app``, the
demo ``demo.app:app``) it starts the server in a subprocess with a fresh upload directory and
measures: one large PATCH streamed in 1 MiB pieces (MB/s), 200 uploads of 1 MiB (POST then PATCH)
from 16 client threads (uploads/s, p50/p99 per upload), peak RSS of the server's process tree,
and the sha256 of every stored file against what was sent. Both apps under one server run side by
side and are measured in alternation for a few rounds; the best round counts. It prints ratios,
asserts nothing about times, and exits 1 when a stored file differs from what was sent or a
server fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MiB = 2**20
MB = 10**6
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
SERVERS = ("gunicorn", "werkzeug")
APPS = ("baseline", "flask-tus")
WERKZEUG_BASELINE = (
    "import sys; sys.path.insert(0, 'benchmarks');"
    "from werkzeug.serving import run_simple; from baseline_wsgi import app;"
    "run_simple('127.0.0.1', int(sys.argv[1]), app, threaded=True)"
)

# One random MiB, made once; every piece sent is a copy with its own tag and index in front, so
# a piece stored at the wrong offset or in the wrong file changes the file's sha256.
BASE = os.urandom(MiB)
BIG_TAG = 0xB16B16


def piece(tag: int, index: int) -> bytes:
    return struct.pack(">QQ", tag, index) + BASE[16:]


def big_body(pieces: int, sent_at: list[float] | None = None) -> Iterator[bytes]:
    """The large upload's pieces; appends to ``sent_at`` the time the last one was handed over."""
    for index in range(pieces):
        yield piece(BIG_TAG, index)
    if sent_at is not None:
        sent_at.append(time.perf_counter())


@dataclass
class Sent:
    """One upload as the client sent it."""

    name: str
    size: int
    sha256: str


@dataclass
class Result:
    server: str
    app: str
    mb_per_s: float = float("nan")
    uploads_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    start_rss_mb: float = float("nan")
    peak_rss_mb: float = float("nan")
    ok: int = 0
    mismatched: list[str] = field(default_factory=list)
    error: str | None = None
    tail_ms: float = float("nan")
    big_runs: list[tuple[float, float]] = field(default_factory=list)
    many_runs: list[tuple[float, list[float]]] = field(default_factory=list)

    def summarise(self) -> None:
        """The best round of each measurement; latencies are those of the best batch."""
        if self.big_runs:
            self.mb_per_s, tail = max(self.big_runs)
            self.tail_ms = tail * 1000
        if self.many_runs:
            self.uploads_per_s, latencies = max(self.many_runs, key=lambda run: run[0])
            self.p50_ms = statistics.median(latencies) * 1000
            self.p99_ms = statistics.quantiles(latencies, n=100, method="inclusive")[98] * 1000

    def runs(self) -> str:
        big = ", ".join(f"{v:.0f}" for v, _ in self.big_runs) or "-"
        many = ", ".join(f"{v:.1f}" for v, _ in self.many_runs) or "-"
        return f"{self.server} / {self.app}: MB/s per round {big}; uploads/s per round {many}"


# ---------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(server: str, app: str, port: int) -> list[str]:
    if server == "gunicorn":
        cmd = [str(BIN / "gunicorn"), "--worker-class", "gthread", "--threads", "8"]
        cmd += ["--workers", "1", "--bind", f"127.0.0.1:{port}"]
        if app == "baseline":
            return [*cmd, "--chdir", "benchmarks", "baseline_wsgi:app"]
        return [*cmd, "demo.app:app"]
    if app == "baseline":
        return [sys.executable, "-c", WERKZEUG_BASELINE, str(port)]
    return [str(BIN / "flask"), "--app", "demo.app", "run", "--port", str(port), "--no-reload"]


class ServerProcess:
    """``app`` served by ``server`` on a free port, storing into ``upload_dir``."""

    def __init__(self, server: str, app: str, upload_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TUS_UPLOAD_DIR": str(upload_dir)}
        # The defaults: no debug mode, and the demo's JSON records rather than a database.
        for name in ("FLASK_DEBUG", "TUS_DATABASE_URL"):
            env.pop(name, None)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command(server, app, self.port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_tail()}")
            try:
                httpx.get(self.url + "/files/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in reversed(process_tree(self.process.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


# ---------------------------------------------------------------------- memory


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, parents first."""
    tree = [pid]
    for parent in tree:
        tree += _children(parent)
    return tree


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of a process tree every ``interval`` seconds; keeps the max."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.first_kib = 0
        self.peak_kib = 0
        self._done = threading.Event()

    def sample(self) -> int:
        total = sum(rss_kib(pid) for pid in process_tree(self.pid))
        self.peak_kib = max(self.peak_kib, total)
        return total

    def run(self) -> None:
        self.first_kib = self.sample()
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


# ---------------------------------------------------------------------- client


def name_of(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def create(client: httpx.Client, url: str, length: int) -> str:
    response = client.post(url + "/files/", headers={**TUS, "Upload-Length": str(length)})
    if response.status_code != 201:
        raise RuntimeError(f"POST answered {response.status_code}: {response.text[:200]}")
    return name_of(response.headers["Location"])


def patch(
    client: httpx.Client, url: str, name: str, body: bytes | Iterator[bytes], length: int
) -> None:
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": OCTET, "Content-Length": str(length)}
    response = client.patch(f"{url}/files/{name}", headers=headers, content=body)
    if response.status_code != 204 or response.headers.get("Upload-Offset") != str(length):
        raise RuntimeError(
            f"PATCH answered {response.status_code} at offset "
            f"{response.headers.get('Upload-Offset')}: {response.text[:200]}"
        )


def upload_big(url: str, pieces: int, sha256: str) -> tuple[float, float, Sent]:
    """One upload of ``pieces`` MiB in a single streamed PATCH.

    Returns MB/s of the PATCH and its tail: seconds from the last byte handed to the socket
    to the response (what the server does after reading the body, give or take what the
    socket buffers held).
    """
    size = pieces * MiB
    sent_at: list[float] = []
    with httpx.Client(timeout=None) as client:
        name = create(client, url, size)
        started = time.perf_counter()
        patch(client, url, name, big_body(pieces, sent_at), size)
        finished = time.perf_counter()
    return size / MB / (finished - started), finished - sent_at[0], Sent(name, size, sha256)


def upload_many(
    url: str, bodies: list[tuple[bytes, str]], threads: int
) -> tuple[float, list[float], list[Sent]]:
    """Each body as its own upload (POST then PATCH) from ``threads`` clients.

    Returns uploads/s over the whole batch, the latency of each upload and what was sent.
    """
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def one(item: tuple[bytes, str]) -> tuple[float, Sent]:
        body, sha256 = item
        client: httpx.Client | None = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=60)
            with lock:
                clients.append(client)
        started = time.perf_counter()
        name = create(client, url, len(body))
        patch(client, url, name, body, len(body))
        return time.perf_counter() - started, Sent(name, len(body), sha256)

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            started = time.perf_counter()
            done = list(pool.map(one, bodies))
            elapsed = time.perf_counter() - started
    finally:
        for client in clients:
            client.close()
    return len(bodies) / elapsed, [latency for latency, _ in done], [sent for _, sent in done]


def verify(upload_dir: Path, sent: list[Sent]) -> list[str]:
    """Names of the uploads whose stored file is missing or differs from what was sent."""
    bad: list[str] = []
    for item in sent:
        digest = hashlib.sha256()
        try:
            with open(upload_dir / item.name, "rb") as file:
                while chunk := file.read(MiB):
                    digest.update(chunk)
        except FileNotFoundError:
            bad.append(item.name)
            continue
        if digest.hexdigest() != item.sha256:
            bad.append(item.name)
    return bad


# ---------------------------------------------------------------------- one server


@dataclass
class Workload:
    big_pieces: int
    big_sha256: str
    bodies: list[tuple[bytes, str]]
    warmup: list[tuple[bytes, str]]
    threads: int
    rounds: int


class Subject:
    """One app under one server, with its results, while it runs."""

    def __init__(self, server: str, app: str, scratch: Path) -> None:
        self.result = Result(server, app)
        self.upload_dir = scratch / f"{server}-{app}"
        self.upload_dir.mkdir()
        self.proc = ServerProcess(server, app, self.upload_dir, scratch / f"{server}-{app}.log")
        self.sampler: RssSampler | None = None

    def start(self) -> None:
        try:
            self.proc.wait_ready()
        except RuntimeError as exc:
            self.result.error = str(exc)
            return
        self.sampler = RssSampler(self.proc.process.pid)
        self.sampler.start()

    def run(self, step: Callable[[str], list[Sent]]) -> None:
        """Run one measurement step unless this subject already failed, then check and delete
        what it stored, so that every step starts on an empty directory and a clean page cache.
        """
        if self.result.error is not None:
            return
        try:
            sent = step(self.proc.url)
        except Exception as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"
            if self.proc.process.poll() is not None:
                self.result.error += f"\n{self.proc.log_tail()}"
            return
        bad = verify(self.upload_dir, sent)
        self.result.ok += len(sent) - len(bad)
        self.result.mismatched += bad
        for item in sent:
            (self.upload_dir / item.name).unlink(missing_ok=True)
        os.sync()

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.result.start_rss_mb = self.sampler.first_kib * 1024 / MB
            self.result.peak_rss_mb = self.sampler.peak_kib * 1024 / MB
        self.proc.stop()
        shutil.rmtree(self.upload_dir)


def measure(server: str, work: Workload, scratch: Path) -> list[Result]:
    """Both apps under ``server``, started side by side and measured in alternation, round
    after round, so that load from elsewhere on the machine hits both alike; the best round
    counts."""
    subjects: list[Subject] = []
    try:
        for app in APPS:
            subjects.append(Subject(server, app, scratch))
        for subject in subjects:
            subject.start()

        def warm(url: str) -> list[Sent]:
            # Imports, the first event loop, connections: checked, not timed.
            return upload_many(url, work.warmup, threads=1)[2]

        for subject in subjects:
            subject.run(warm)
        for round_ in range(work.rounds):
            for subject in subjects if round_ % 2 == 0 else subjects[::-1]:

                def big(url: str, result: Result = subject.result) -> list[Sent]:
                    mb_per_s, tail, sent = upload_big(url, work.big_pieces, work.big_sha256)
                    result.big_runs.append((mb_per_s, tail))
                    return [sent]

                subject.run(big)
        for round_ in range(work.rounds):
            for subject in subjects if round_ % 2 == 0 else subjects[::-1]:

                def many(url: str, result: Result = subject.result) -> list[Sent]:
                    uploads_per_s, latencies, sent = upload_many(url, work.bodies, work.threads)
                    result.many_runs.append((uploads_per_s, latencies))
                    return sent

                subject.run(many)
    except Exception as exc:
        for subject in subjects:
            subject.result.error = subject.result.error or f"{type(exc).__name__}: {exc}"
    finally:
        for subject in subjects:
            subject.stop()
    for subject in subjects:
        subject.result.summarise()
    return [subject.result for subject in subjects]


# ---------------------------------------------------------------------- report


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def table(results: list[Result]) -> str:
    header = (
        "server",
        "app",
        "MB/s",
        "tail ms",
        "uploads/s",
        "p50 ms",
        "p99 ms",
        "start RSS MB",
        "peak RSS MB",
        "MB/s vs base",
        "uploads/s vs base",
        "sha256",
    )
    rows = [header]
    baselines = {r.server: r for r in results if r.app == "baseline"}
    for r in results:
        base = baselines.get(r.server)
        versus = "-" if base is None or base is r else None
        rows.append(
            (
                r.server,
                r.app,
                fmt(r.mb_per_s, 0),
                fmt(r.tail_ms, 0),
                fmt(r.uploads_per_s),
                fmt(r.p50_ms),
                fmt(r.p99_ms),
                fmt(r.start_rss_mb),
                fmt(r.peak_rss_mb),
                versus or ratio(r.mb_per_s, base.mb_per_s if base else 0),
                versus or ratio(r.uploads_per_s, base.uploads_per_s if base else 0),
                f"{r.ok} OK / {len(r.mismatched)} MISMATCH",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="a 512 MiB large upload (not 1 GiB), 2 rounds (not 3)"
    )
    parser.add_argument("--uploads", type=int, default=200, help="number of 1 MiB uploads")
    parser.add_argument("--threads", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--rounds", type=int, help="rounds of each measurement (best counts)")
    args = parser.parse_args(argv)

    big_pieces = 512 if args.quick else 1024
    rounds = args.rounds or (2 if args.quick else 3)
    print("preparing payloads ...", flush=True)
    digest = hashlib.sha256()
    for chunk in big_body(big_pieces):
        digest.update(chunk)
    bodies = [piece(tag, 0) for tag in range(1, args.uploads + 5)]
    with_sha = [(body, hashlib.sha256(body).hexdigest()) for body in bodies]
    work = Workload(
        big_pieces, digest.hexdigest(), with_sha[4:], with_sha[:4], args.threads, rounds
    )

    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; large upload: {big_pieces} MiB in one PATCH; "
        f"{args.uploads} uploads of 1 MiB from {args.threads} threads; best of {rounds} rounds.\n"
        "flask-tus = demo.app:app with default settings (TUS_FSYNC on, an on_complete hook "
        "that logs); baseline = benchmarks/baseline_wsgi.py (no fsync).",
        flush=True,
    )
    results: list[Result] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-wsgi-") as tmp:
        for server in SERVERS:
            print(f"{server} ...", flush=True)
            results += measure(server, work, Path(tmp))
    print(
        f"\ndone in {time.perf_counter() - started:.0f} s, load average "
        f"{os.getloadavg()[0]:.2f}; MB = 10^6 bytes\n"
    )
    print(table(results))
    print()
    for r in results:
        print(r.runs())

    failed = False
    for r in results:
        if r.error:
            failed = True
            print(f"\n{r.server} / {r.app} failed: {r.error}")
        if r.mismatched:
            failed = True
            names = ", ".join(r.mismatched[:10]) + (" ..." if len(r.mismatched) > 10 else "")
            print(f"\n{r.server} / {r.app}: {len(r.mismatched)} stored files differ: {names}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
