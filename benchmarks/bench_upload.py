"""flask-tus against a minimal write-to-disk app under hypercorn, uvicorn and gunicorn, in one run.

Run by hand from the repository root (never by the test suite)::

    .venv/bin/python benchmarks/bench_upload.py [--quick]

Servers and apps, each in its own subprocess on 127.0.0.1 with a fresh upload directory:

- hypercorn and uvicorn: ``baseline_asgi:app`` (raw ASGI, ``os.pwrite`` in a thread) and the
  demo's native ASGI app ``demo.app:asgi_app`` (tus bodies from ``receive()`` to disk);
- gunicorn (``gthread``, 1 worker, 8 threads): ``baseline_wsgi:app`` and the demo's Flask app
  ``demo.app:app``.

For each it measures one large PATCH (1 GiB, streamed in 1 MiB pieces: MB/s), the same bytes as
16 sequential PATCHes (MB/s), 200 uploads of 1 MiB (POST then PATCH) from 32 client threads
(uploads/s, p50/p99 per upload), the latency of HEAD requests sent back to back during that
load by one more client in a process of its own (p50/p99), the peak RSS of the server's process
tree, and the sha256 of every stored file against what was sent. The two apps under one server
run side by side and are measured in alternation for a few rounds; the best round counts. It
prints ratios of flask-tus to the baseline under the same server and which server served
flask-tus fastest, asserts nothing about times, and exits 1 when a stored file differs from what
was sent or a server fails.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
from _common import (
    BENCH_DIR,
    BIN,
    TUS,
    Command,
    Outcome,
    Sent,
    Step,
    big_sha256,
    create,
    fmt,
    gunicorn,
    machine,
    measure,
    patch,
    percentile,
    ratio,
    report_failures,
    sha_cell,
    small_bodies,
    table,
    upload_large,
    upload_many,
)

SERVERS = ("hypercorn", "uvicorn", "gunicorn")
APPS = ("baseline", "flask-tus")
#: The tag of the upload the HEAD client asks about (the 1 MiB bodies use tags from 1).
HEAD_TAG = 0x4EAD
#: The issue's targets: flask-tus reaches this share of the baseline under the same server...
TARGET_RATIO = 0.8
#: ... its serving process stays under this peak RSS (MB) ...
TARGET_RSS_MB = 64
#: ... and one large PATCH grows the server's RSS by no more than this (MB).
TARGET_GROWTH_MB = 32
#: MiB of the large upload sent once to each server before measuring (checked, not timed).
WARM_PIECES = 64


def command(server: str, app: str) -> Command:
    baseline = app == "baseline"
    if server == "hypercorn":
        target = "benchmarks/baseline_asgi:app" if baseline else "demo.app:asgi_app"
        return lambda port: [str(BIN / "hypercorn"), "--bind", f"127.0.0.1:{port}", target]
    if server == "uvicorn":

        def uvicorn(port: int) -> list[str]:
            cmd = [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", str(port)]
            if baseline:
                return [*cmd, "--app-dir", str(BENCH_DIR), "baseline_asgi:app"]
            return [*cmd, "--lifespan", "on", "demo.app:asgi_app"]

        return uvicorn
    if baseline:
        return gunicorn("baseline_wsgi:app", chdir=BENCH_DIR)
    return gunicorn("demo.app:app")


def app_name(server: str, app: str) -> str:
    if app == "baseline":
        return "baseline_wsgi" if server == "gunicorn" else "baseline_asgi"
    return "demo.app:app" if server == "gunicorn" else "demo.app:asgi_app"


@dataclass
class Result(Outcome):
    big_mb_s: float = float("nan")
    tail_ms: float = float("nan")
    #: The most the server's RSS grew during one large PATCH, over all rounds.
    big_growth_mb: float = float("nan")
    split_mb_s: float = float("nan")
    uploads_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    head_p50_ms: float = float("nan")
    head_p99_ms: float = float("nan")
    big_runs: list[tuple[float, float]] = field(default_factory=list)
    split_runs: list[float] = field(default_factory=list)
    #: uploads/s, each upload's latency, each HEAD's latency.
    many_runs: list[tuple[float, list[float], list[float]]] = field(default_factory=list)

    def medians(self) -> tuple[float, float, float]:
        """The median round of one PATCH, split PATCHes and uploads/s (NaN without rounds)."""
        return (
            _median([mb_s for mb_s, _ in self.big_runs]),
            _median(self.split_runs),
            _median([per_s for per_s, _, _ in self.many_runs]),
        )

    def summarise(self) -> None:
        """The best round of each measurement; latencies are those of the best batch."""
        if self.big_runs:
            self.big_mb_s, tail = max(self.big_runs)
            self.tail_ms = tail * 1000
        if self.growth_mb.get("big"):
            self.big_growth_mb = max(self.growth_mb["big"])
        if self.split_runs:
            self.split_mb_s = max(self.split_runs)
        if self.many_runs:
            self.uploads_per_s, latencies, heads = max(self.many_runs, key=lambda run: run[0])
            self.p50_ms = statistics.median(latencies) * 1000
            self.p99_ms = percentile(latencies, 99) * 1000
            if heads:
                self.head_p50_ms = statistics.median(heads) * 1000
                self.head_p99_ms = percentile(heads, 99) * 1000

    def runs(self) -> str:
        big = ", ".join(f"{v:.0f}" for v, _ in self.big_runs) or "-"
        split = ", ".join(f"{v:.0f}" for v in self.split_runs) or "-"
        many = ", ".join(f"{v:.1f}" for v, _, _ in self.many_runs) or "-"
        heads = ", ".join(str(len(h)) for _, _, h in self.many_runs) or "-"
        return (
            f"{self.label}: 1 PATCH MB/s {big}; split MB/s {split}; uploads/s {many} "
            f"(HEADs answered {heads})"
        )


def head_loop(url: str, size: int, conn: Connection) -> None:
    """The HEAD client's process: HEAD for one upload back to back until the parent says stop,
    timing each; every answer must be 200 with ``size`` as ``Upload-Offset``. Sends "ready"
    once connected, then ``(latencies, error)``."""
    latencies: list[float] = []
    error: str | None = None
    try:
        with httpx.Client(timeout=60) as client:
            client.head(url, headers=TUS)  # connected before the load starts; not timed
            conn.send("ready")
            while not conn.poll():
                started = time.perf_counter()
                response = client.head(url, headers=TUS)
                elapsed = time.perf_counter() - started
                offset = response.headers.get("Upload-Offset")
                if response.status_code != 200 or offset != str(size):
                    error = f"HEAD answered {response.status_code}, offset {offset}"
                    break
                latencies.append(elapsed)
    except Exception as exc:
        error = f"HEAD failed: {type(exc).__name__}: {exc}"
    conn.send((latencies, error))


class HeadClient:
    """Runs :func:`head_loop` in a process of its own, so that the upload threads' contention
    for this process's GIL stays out of the HEAD latencies."""

    def __init__(self, url: str, name: str, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=head_loop, args=(f"{url}/files/{name}", size, child), daemon=True
        )
        self.latencies: list[float] = []
        self.error: str | None = None

    def start(self) -> None:
        self._process.start()
        message: object = None
        if self._conn.poll(30):
            message = self._conn.recv()
        if message != "ready":
            self._end()
            if isinstance(message, tuple):
                self.latencies, self.error = message
            raise RuntimeError(self.error or "the HEAD client did not start")

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # it may have stopped on its own, after an error
            self._conn.send("stop")
        if self._conn.poll(60):
            self.latencies, self.error = self._conn.recv()
        else:
            self.error = "the HEAD client did not answer"
        self._end()

    def _end(self) -> None:
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


@dataclass
class Workload:
    big_pieces: int
    patches: int
    big_sha256: str
    warm_pieces: int
    warm_sha256: str
    bodies: list[tuple[bytes, str]]
    warmup: list[tuple[bytes, str]]
    head_body: tuple[bytes, str]
    threads: int
    rounds: int


def run_server(server: str, work: Workload, scratch: Path) -> list[Result]:
    """Both apps under ``server``, measured in alternation; the best round counts."""

    def warm(url: str) -> list[Sent]:
        # Imports, the first event loop, connections, the first large buffers: checked, not timed.
        sent = upload_many(url, work.warmup, threads=1)[2]
        return [*sent, upload_large(url, work.warm_pieces, work.warm_sha256)[2]]

    def big(result: Result) -> Step:
        def step(url: str) -> list[Sent]:
            mb_per_s, tail, sent = upload_large(url, work.big_pieces, work.big_sha256)
            result.big_runs.append((mb_per_s, tail))
            return [sent]

        return step

    def split(result: Result) -> Step:
        def step(url: str) -> list[Sent]:
            mb_per_s, _, sent = upload_large(
                url, work.big_pieces, work.big_sha256, patches=work.patches
            )
            result.split_runs.append(mb_per_s)
            return [sent]

        return step

    def many(result: Result) -> Step:
        def step(url: str) -> list[Sent]:
            body, sha256 = work.head_body
            with httpx.Client(timeout=60) as client:
                name = create(client, url, len(body))
                patch(client, url, name, body, len(body))
            heads = HeadClient(url, name, len(body))
            heads.start()  # before the load, and only once it is connected
            try:
                uploads_per_s, latencies, sent = upload_many(url, work.bodies, work.threads)
            finally:
                heads.stop()
            if heads.error is not None:
                raise RuntimeError(heads.error)
            result.many_runs.append((uploads_per_s, latencies, heads.latencies))
            return [*sent, Sent(name, len(body), sha256)]

        return step

    entries = [(Result(server, app), command(server, app)) for app in APPS]
    results = measure(entries, scratch, warm, [big, split, many], work.rounds)
    for result in results:
        result.summarise()
    return results


# ---------------------------------------------------------------------- report


def figures(results: list[Result], work: Workload) -> str:
    header = (
        "server",
        "app",
        f"{work.big_pieces} MiB x1 MB/s",
        "tail ms",
        "x1 RSS +MB",
        f"x{work.patches} MB/s",
        "uploads/s",
        "CPU ms/upload",
        "p50 ms",
        "p99 ms",
        "HEAD p50 ms",
        "HEAD p99 ms",
        "RSS MB start",
        "peak tree",
        "peak worker",
        "sha256",
    )
    rows = [
        (
            r.server,
            app_name(r.server, r.app),
            fmt(r.big_mb_s, 0),
            fmt(r.tail_ms, 0),
            fmt(r.big_growth_mb),
            fmt(r.split_mb_s, 0),
            fmt(r.uploads_per_s),
            fmt(cpu_ms_per_upload(r, work), 2),
            fmt(r.p50_ms),
            fmt(r.p99_ms),
            fmt(r.head_p50_ms),
            fmt(r.head_p99_ms),
            fmt(r.start_rss_mb),
            fmt(r.peak_rss_mb),
            fmt(r.peak_process_mb),
            sha_cell(r),
        )
        for r in results
    ]
    return table(header, rows)


def cpu_ms_per_upload(result: Result, work: Workload) -> float:
    """The server's CPU time per 1 MiB upload, median of the rounds (its HEADs included)."""
    return _median(result.cpu_s.get("many", [])) * 1000 / len(work.bodies)


def pairs(results: list[Result]) -> list[tuple[str, Result, Result]]:
    """``(server, baseline, flask-tus)`` for every server both ran under."""
    found = []
    for server in SERVERS:
        by_app = {r.app: r for r in results if r.server == server}
        if "baseline" in by_app and "flask-tus" in by_app:
            found.append((server, by_app["baseline"], by_app["flask-tus"]))
    return found


def ratios(results: list[Result], work: Workload) -> str:
    header = (
        "server",
        "x1 MB/s",
        f"x{work.patches} MB/s",
        "uploads/s",
        "CPU/upload",
        "p50 latency",
        "HEAD p50",
        "peak RSS worker",
    )
    rows = [
        (
            server,
            ratio(tus.big_mb_s, base.big_mb_s),
            ratio(tus.split_mb_s, base.split_mb_s),
            ratio(tus.uploads_per_s, base.uploads_per_s),
            ratio(cpu_ms_per_upload(tus, work), cpu_ms_per_upload(base, work)),
            ratio(tus.p50_ms, base.p50_ms),
            ratio(tus.head_p50_ms, base.head_p50_ms),
            ratio(tus.peak_process_mb, base.peak_process_mb),
        )
        for server, base, tus in pairs(results)
    ]
    return table(header, rows)


def median_ratios(results: list[Result], work: Workload) -> str:
    """The throughput ratios of the median rounds: a baseline's lucky round (see "Reading the
    figures" in benchmarks/README.md) moves them less than the best rounds'."""
    header = ("server", "x1 MB/s", f"x{work.patches} MB/s", "uploads/s")
    rows = [
        (server, *(ratio(t, b) for t, b in zip(tus.medians(), base.medians(), strict=True)))
        for server, base, tus in pairs(results)
    ]
    return table(header, rows)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def targets(results: list[Result]) -> list[str]:
    """One line per server: flask-tus against the issue's targets (informative, not a check)."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = []
    for server, base, tus in pairs(results):
        checks = []
        for label, value, floor in (
            ("x1", tus.big_mb_s, base.big_mb_s),
            ("split", tus.split_mb_s, base.split_mb_s),
            ("uploads/s", tus.uploads_per_s, base.uploads_per_s),
        ):
            share = value / floor if floor and not math.isnan(floor) else float("nan")
            checks.append(f"{label} {fmt(share, 3)}x {verdict(share >= TARGET_RATIO)}")
        rss = tus.peak_process_mb
        checks.append(f"peak worker RSS {fmt(rss)} MB {verdict(rss < TARGET_RSS_MB)}")
        growth = tus.big_growth_mb
        checks.append(f"x1 RSS growth {fmt(growth)} MB {verdict(growth <= TARGET_GROWTH_MB)}")
        lines.append(f"  {server}: " + "; ".join(checks))
    return lines


def fastest(results: list[Result]) -> str:
    """Which server served flask-tus fastest: the winner of each throughput measurement, and
    overall the best geometric mean of the three, each relative to the best server's figure."""
    tus = [r for r in results if r.app == "flask-tus" and r.error is None]
    if not tus:
        return "Fastest server for flask-tus: none finished."
    metrics: tuple[tuple[str, str, Callable[[Result], float]], ...] = (
        ("one PATCH", "MB/s", lambda r: r.big_mb_s),
        ("split PATCHes", "MB/s", lambda r: r.split_mb_s),
        ("1 MiB uploads", "uploads/s", lambda r: r.uploads_per_s),
    )
    scores = {r.server: 1.0 for r in tus}
    winners = []
    for label, unit, value in metrics:
        best = max(tus, key=value)
        winners.append(f"{label}: {best.server} {fmt(value(best), 0)} {unit}")
        for r in tus:
            scores[r.server] *= value(r) / value(best)
    means = {s: score ** (1 / len(metrics)) for s, score in scores.items()}
    ranked = sorted(means, key=lambda s: -means[s])
    ranking = ", ".join(f"{s} {means[s]:.2f}" for s in ranked)
    close = ""
    if len(ranked) > 1 and means[ranked[1]] >= 0.9 * means[ranked[0]]:
        gap = 1 - means[ranked[1]] / means[ranked[0]]
        close = (
            f" {ranked[1]} is within {gap:.0%}: compare the rounds above before calling "
            "either faster."
        )
    return (
        f"Fastest server for flask-tus: {ranked[0]} ({'; '.join(winners)}; "
        f"geometric mean relative to the best: {ranking}).{close}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 256 MiB large upload (not 1 GiB), 100 uploads (not 200), 2 rounds (not 6)",
    )
    parser.add_argument("--uploads", type=int, help="number of 1 MiB uploads (default 200)")
    parser.add_argument("--threads", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--patches", type=int, default=16, help="PATCHes of the split upload")
    parser.add_argument("--rounds", type=int, help="rounds of each measurement (best counts)")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated subset of " + ",".join(SERVERS),
    )
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")

    big_pieces = 256 if args.quick else 1024
    uploads = args.uploads or (100 if args.quick else 200)
    # An even count: the apps take turns going first, and each goes first equally often.
    rounds = args.rounds or (2 if args.quick else 6)
    if big_pieces % args.patches:
        parser.error(f"{big_pieces} MiB do not split into {args.patches} equal PATCHes")
    print("preparing payloads ...", flush=True)
    with_sha = small_bodies(uploads + 4)
    work = Workload(
        big_pieces=big_pieces,
        patches=args.patches,
        big_sha256=big_sha256(big_pieces),
        warm_pieces=min(WARM_PIECES, big_pieces),
        warm_sha256=big_sha256(min(WARM_PIECES, big_pieces)),
        bodies=with_sha[4:],
        warmup=with_sha[:4],
        head_body=small_bodies(1, first_tag=HEAD_TAG)[0],
        threads=args.threads,
        rounds=rounds,
    )

    print(
        f"{machine()}. Large upload: {big_pieces} MiB in one PATCH, then as {args.patches} "
        f"PATCHes of {big_pieces // args.patches} MiB; {uploads} uploads of 1 MiB from "
        f"{args.threads} threads while one more client (its own process) sends HEADs; "
        f"best of {rounds} rounds.\n"
        "flask-tus = the demo with default settings (TUS_FSYNC on, JSON records, an on_complete "
        "hook that logs); baselines = benchmarks/baseline_asgi.py and baseline_wsgi.py "
        "(no records, no fsync).",
        flush=True,
    )
    results: list[Result] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        for server in servers:
            print(f"{server} ...", flush=True)
            results += run_server(server, work, Path(tmp))
    print(f"\ndone in {time.perf_counter() - started:.0f} s; {machine()}; MB = 10^6 bytes\n")
    print(figures(results, work))
    print(
        "\nflask-tus / baseline under the same server (throughput: higher is better; "
        "latency and RSS: lower is better):\n"
    )
    print(ratios(results, work))
    print("\nThe same of the median rounds (the targets below use the best rounds):\n")
    print(median_ratios(results, work))
    print()
    for r in results:
        print(r.runs())
    print(
        f"\nTargets: flask-tus >= {TARGET_RATIO}x the baseline under the same server, peak RSS "
        f"of the serving process < {TARGET_RSS_MB} MB, RSS growth during one large PATCH <= "
        f"{TARGET_GROWTH_MB} MB:"
    )
    print("\n".join(targets(results)) or "  -")
    print("\n" + fastest(results))
    return 1 if report_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
