"""What the benchmarks share: payloads, servers, RSS sampling, sha256 checks, rounds and tables.

Nothing here is a benchmark of its own; ``bench_wsgi.py`` and ``bench_upload.py`` import it (the
scripts' directory is on ``sys.path`` when they run).
"""

from __future__ import annotations

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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
BIN = Path(sys.executable).parent
MiB = 2**20
MB = 10**6
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
#: Removed from every server's environment: the demo picks a debug mode or another metadata
#: store when these are set, and the benchmarks measure its defaults (JSON records).
DROPPED_ENV = ("FLASK_DEBUG", "TUS_DATABASE_URL", "TUS_MONGODB_URI")

# ---------------------------------------------------------------------- payloads

# One random MiB, made once; every piece sent is a copy with its own tag and index in front, so
# a piece stored at the wrong offset or in the wrong file changes the file's sha256.
BASE = os.urandom(MiB)
BIG_TAG = 0xB16B16


def piece(tag: int, index: int) -> bytes:
    return struct.pack(">QQ", tag, index) + BASE[16:]


def big_body(count: int, first: int = 0, sent_at: list[float] | None = None) -> Iterator[bytes]:
    """Pieces ``first`` to ``first + count - 1`` of the large upload; appends to ``sent_at`` the
    time the last one was handed over."""
    for index in range(first, first + count):
        yield piece(BIG_TAG, index)
    if sent_at is not None:
        sent_at.append(time.perf_counter())


def big_sha256(pieces: int) -> str:
    """The sha256 of a large upload of ``pieces`` MiB."""
    digest = hashlib.sha256()
    for chunk in big_body(pieces):
        digest.update(chunk)
    return digest.hexdigest()


def small_bodies(count: int, first_tag: int = 1) -> list[tuple[bytes, str]]:
    """``count`` distinct 1 MiB bodies, each with its sha256."""
    bodies = [piece(tag, 0) for tag in range(first_tag, first_tag + count)]
    return [(body, hashlib.sha256(body).hexdigest()) for body in bodies]


@dataclass
class Sent:
    """One upload as the client sent it."""

    name: str
    size: int
    sha256: str


# ---------------------------------------------------------------------- servers

#: A server command line for a port.
Command = Callable[[int], list[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gunicorn(target: str, *, chdir: Path | None = None) -> Command:
    """gunicorn with the ``gthread`` worker (1 worker, 8 threads) serving WSGI ``target``."""

    def command(port: int) -> list[str]:
        cmd = [str(BIN / "gunicorn"), "--worker-class", "gthread", "--threads", "8"]
        cmd += ["--workers", "1", "--bind", f"127.0.0.1:{port}"]
        if chdir is not None:
            cmd += ["--chdir", str(chdir)]
        return [*cmd, target]

    return command


class ServerProcess:
    """``command`` on a free port of 127.0.0.1, from the repository root, storing into
    ``upload_dir`` (``TUS_UPLOAD_DIR``); output goes to ``log_path``."""

    def __init__(self, command: Command, upload_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TUS_UPLOAD_DIR": str(upload_dir)}
        for name in DROPPED_ENV:
            env.pop(name, None)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command(self.port),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the server answers any HTTP request."""
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time used so far by ``pid`` and its descendants (seconds)."""
    ticks = 0
    for member in process_tree(pid):
        try:
            # Fields after the command name, which may hold spaces: utime and stime are the
            # 12th and 13th of them.
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """Samples the VmRSS of a process tree every ``interval`` seconds, keeping the peak of the
    tree's sum, the peak of its largest process (the worker that serves requests) and the peak
    of the sum since the last :meth:`begin`."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.first_kib = 0
        self.peak_kib = 0
        self.peak_process_kib = 0
        self.window_start_kib = 0
        self.window_peak_kib = 0
        self._lock = threading.Lock()
        self._done = threading.Event()

    def sample(self) -> int:
        sizes = [rss_kib(pid) for pid in process_tree(self.pid)]
        total = sum(sizes)
        with self._lock:
            self.peak_kib = max(self.peak_kib, total)
            self.peak_process_kib = max(self.peak_process_kib, *sizes)
            self.window_peak_kib = max(self.window_peak_kib, total)
        return total

    def begin(self) -> None:
        """Start a window: :meth:`growth_kib` is measured from now."""
        total = sum(rss_kib(pid) for pid in process_tree(self.pid))
        with self._lock:
            self.window_start_kib = self.window_peak_kib = total

    def growth_kib(self) -> int:
        """How far the tree's RSS rose above its size at :meth:`begin` (sampled peak)."""
        self.sample()
        with self._lock:
            return self.window_peak_kib - self.window_start_kib

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
    client: httpx.Client,
    url: str,
    name: str,
    body: bytes | Iterator[bytes],
    length: int,
    *,
    offset: int = 0,
) -> None:
    """One PATCH of ``length`` bytes at ``offset``; raises unless the server took them all."""
    headers = {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": OCTET,
        "Content-Length": str(length),
    }
    response = client.patch(f"{url}/files/{name}", headers=headers, content=body)
    if response.status_code != 204 or response.headers.get("Upload-Offset") != str(offset + length):
        raise RuntimeError(
            f"PATCH answered {response.status_code} at offset "
            f"{response.headers.get('Upload-Offset')}: {response.text[:200]}"
        )


def upload_large(url: str, pieces: int, sha256: str, patches: int = 1) -> tuple[float, float, Sent]:
    """One upload of ``pieces`` MiB (the large body), in ``patches`` sequential PATCHes of equal
    size, each streamed in 1 MiB pieces.

    Returns MB/s from the first PATCH to the last response, and the last PATCH's tail: seconds
    from its last byte handed to the socket to its response (what the server does after reading
    the body, give or take what the socket buffers held).
    """
    if pieces % patches:
        raise ValueError(f"{pieces} MiB do not split into {patches} equal PATCHes")
    size = pieces * MiB
    per_patch = pieces // patches
    sent_at: list[float] = []
    with httpx.Client(timeout=None) as client:
        name = create(client, url, size)
        started = time.perf_counter()
        for index in range(patches):
            first = index * per_patch
            sent_at.clear()
            body = big_body(per_patch, first, sent_at)
            patch(client, url, name, body, per_patch * MiB, offset=first * MiB)
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


# ---------------------------------------------------------------------- rounds


@dataclass
class Outcome:
    """What every benchmark reports for one app under one server; scripts add their figures."""

    server: str
    app: str
    ok: int = 0
    mismatched: list[str] = field(default_factory=list)
    error: str | None = None
    start_rss_mb: float = float("nan")
    peak_rss_mb: float = float("nan")
    peak_process_mb: float = float("nan")
    #: Per phase (by the phase function's name): how far the server's RSS rose during each run.
    growth_mb: dict[str, list[float]] = field(default_factory=dict)
    #: Per phase: the CPU seconds the server's processes used during each run.
    cpu_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.server} / {self.app}"


R = TypeVar("R", bound=Outcome)
#: One measurement against a server's base URL; returns what it uploaded, to be checked.
Step = Callable[[str], list[Sent]]


class Subject(Generic[R]):
    """One app under one server while it runs, with its outcome."""

    def __init__(self, result: R, command: Command, scratch: Path) -> None:
        self.result = result
        slug = f"{result.server}-{result.app}"
        self.upload_dir = scratch / slug
        self.upload_dir.mkdir()
        self.proc = ServerProcess(command, self.upload_dir, scratch / f"{slug}.log")
        self.sampler: RssSampler | None = None

    def start(self) -> None:
        try:
            self.proc.wait_ready()
        except RuntimeError as exc:
            self.result.error = str(exc)
            return
        self.sampler = RssSampler(self.proc.process.pid)
        self.sampler.start()

    def run(self, step: Step, phase: str | None = None) -> None:
        """Run one measurement step unless this subject already failed, then check and delete
        what it stored, so that every step starts on an empty directory and a clean page cache.
        With a ``phase`` name, the RSS growth and the server's CPU time during the step are
        recorded under it.
        """
        if self.result.error is not None:
            return
        try:
            if phase is not None and self.sampler is not None:
                self.sampler.begin()
            cpu_before = cpu_seconds(self.proc.process.pid)
            sent = step(self.proc.url)
            if phase is not None:
                cpu = cpu_seconds(self.proc.process.pid) - cpu_before
                self.result.cpu_s.setdefault(phase, []).append(cpu)
            if phase is not None and self.sampler is not None:
                growth = self.sampler.growth_kib() * 1024 / MB
                self.result.growth_mb.setdefault(phase, []).append(growth)
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
            self.result.peak_process_mb = self.sampler.peak_process_kib * 1024 / MB
        self.proc.stop()
        shutil.rmtree(self.upload_dir)


def measure(
    entries: Sequence[tuple[R, Command]],
    scratch: Path,
    warm: Step,
    phases: Sequence[Callable[[R], Step]],
    rounds: int,
) -> list[R]:
    """Start every ``(result, command)`` side by side, warm each with ``warm`` (checked, not
    timed), then run each phase for ``rounds`` rounds, the subjects in alternating order from
    round to round so that load from elsewhere on the machine hits them alike. A phase gets the
    subject's result to record its figures in; the RSS growth of each run is recorded under the
    phase's ``__name__``. Servers are stopped whatever happens; a failure
    is recorded in the result, never raised.
    """
    subjects: list[Subject[R]] = []
    try:
        for result, command in entries:
            subjects.append(Subject(result, command, scratch))
        for subject in subjects:
            subject.start()
        for subject in subjects:
            subject.run(warm)
        for phase in phases:
            for round_ in range(rounds):
                for subject in subjects if round_ % 2 == 0 else subjects[::-1]:
                    subject.run(phase(subject.result), phase.__name__)
    except Exception as exc:
        for subject in subjects:
            subject.result.error = subject.result.error or f"{type(exc).__name__}: {exc}"
    finally:
        for subject in subjects:
            subject.stop()
    return [subject.result for subject in subjects]


# ---------------------------------------------------------------------- report


def percentile(values: list[float], percent: int) -> float:
    """The ``percent``-th percentile (inclusive method); NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def ratio(value: float, base: float | None) -> str:
    if base is None or math.isnan(value) or math.isnan(base) or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by ``|``, a rule under the header."""
    every = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in every
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def sha_cell(result: Outcome) -> str:
    return f"{result.ok} OK / {len(result.mismatched)} MISMATCH"


def machine() -> str:
    """Python version, CPUs and load average, for the head of a report."""
    return (
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}"
    )


def report_failures(results: Sequence[Outcome]) -> bool:
    """Print every failed server and every stored file that differs; True when there was any."""
    failed = False
    for r in results:
        if r.error:
            failed = True
            print(f"\n{r.label} failed: {r.error}")
        if r.mismatched:
            failed = True
            names = ", ".join(r.mismatched[:10]) + (" ..." if len(r.mismatched) > 10 else "")
            print(f"\n{r.label}: {len(r.mismatched)} stored files differ: {names}")
    return failed
