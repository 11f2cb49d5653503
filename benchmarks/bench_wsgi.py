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
server fails. The machinery is shared with ``bench_upload.py`` in ``_common.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    BENCH_DIR,
    BIN,
    Command,
    Outcome,
    Sent,
    Step,
    big_sha256,
    fmt,
    gunicorn,
    machine,
    measure,
    percentile,
    ratio,
    report_failures,
    sha_cell,
    small_bodies,
    table,
    upload_large,
    upload_many,
)

SERVERS = ("gunicorn", "werkzeug")
APPS = ("baseline", "flask-tus")
WERKZEUG_BASELINE = (
    "import sys; sys.path.insert(0, 'benchmarks');"
    "from werkzeug.serving import run_simple; from baseline_wsgi import app;"
    "run_simple('127.0.0.1', int(sys.argv[1]), app, threaded=True)"
)


@dataclass
class Result(Outcome):
    mb_per_s: float = float("nan")
    uploads_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
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
            self.p99_ms = percentile(latencies, 99) * 1000

    def runs(self) -> str:
        big = ", ".join(f"{v:.0f}" for v, _ in self.big_runs) or "-"
        many = ", ".join(f"{v:.1f}" for v, _ in self.many_runs) or "-"
        return f"{self.label}: MB/s per round {big}; uploads/s per round {many}"


def command(server: str, app: str) -> Command:
    if server == "gunicorn":
        if app == "baseline":
            return gunicorn("baseline_wsgi:app", chdir=BENCH_DIR)
        return gunicorn("demo.app:app")
    if app == "baseline":
        return lambda port: [sys.executable, "-c", WERKZEUG_BASELINE, str(port)]
    return lambda port: [
        *(str(BIN / "flask"), "--app", "demo.app", "run"),
        *("--port", str(port), "--no-reload"),
    ]


@dataclass
class Workload:
    big_pieces: int
    big_sha256: str
    bodies: list[tuple[bytes, str]]
    warmup: list[tuple[bytes, str]]
    threads: int
    rounds: int


def run_server(server: str, work: Workload, scratch: Path) -> list[Result]:
    """Both apps under ``server``, measured in alternation; the best round counts."""

    def warm(url: str) -> list[Sent]:
        # Imports, the first event loop, connections: checked, not timed.
        return upload_many(url, work.warmup, threads=1)[2]

    def big(result: Result) -> Step:
        def step(url: str) -> list[Sent]:
            mb_per_s, tail, sent = upload_large(url, work.big_pieces, work.big_sha256)
            result.big_runs.append((mb_per_s, tail))
            return [sent]

        return step

    def many(result: Result) -> Step:
        def step(url: str) -> list[Sent]:
            uploads_per_s, latencies, sent = upload_many(url, work.bodies, work.threads)
            result.many_runs.append((uploads_per_s, latencies))
            return sent

        return step

    entries = [(Result(server, app), command(server, app)) for app in APPS]
    results = measure(entries, scratch, warm, [big, many], work.rounds)
    for result in results:
        result.summarise()
    return results


def report(results: list[Result]) -> str:
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
    rows = []
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
                versus or ratio(r.mb_per_s, base.mb_per_s if base else None),
                versus or ratio(r.uploads_per_s, base.uploads_per_s if base else None),
                sha_cell(r),
            )
        )
    return table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="a 512 MiB large upload (not 1 GiB), 2 rounds (not 4)"
    )
    parser.add_argument("--uploads", type=int, default=200, help="number of 1 MiB uploads")
    parser.add_argument("--threads", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--rounds", type=int, help="rounds of each measurement (best counts)")
    args = parser.parse_args(argv)

    big_pieces = 512 if args.quick else 1024
    # An even count: the apps take turns going first, and each goes first equally often.
    rounds = args.rounds or (2 if args.quick else 4)
    print("preparing payloads ...", flush=True)
    with_sha = small_bodies(args.uploads + 4)
    work = Workload(
        big_pieces, big_sha256(big_pieces), with_sha[4:], with_sha[:4], args.threads, rounds
    )

    print(
        f"{machine()}; large upload: {big_pieces} MiB in one PATCH; "
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
            results += run_server(server, work, Path(tmp))
    print(f"\ndone in {time.perf_counter() - started:.0f} s; {machine()}; MB = 10^6 bytes\n")
    print(report(results))
    print()
    for r in results:
        print(r.runs())
    return 1 if report_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
