"""Interop with tus-js-client from npm, run under node (tests/js/tus_client.mjs) against the demo
app on every real server: a plain upload, a resume after an aborted upload, and parallel partial
uploads joined by concatenation. The stored bytes are compared with the source every time.

Needs ``make test-deps`` (node and demo/node_modules); a missing piece fails, it never skips."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import ROOT, Server, running

SCRIPT = Path(__file__).resolve().parent / "js" / "tus_client.mjs"
CLIENT_PACKAGE = ROOT / "demo" / "node_modules" / "tus-js-client" / "package.json"
KINDS = ["werkzeug", "gunicorn", "hypercorn", "uvicorn"]
TUS = {"Tus-Resumable": "1.0.0"}
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node not found: run `make test-deps` (tus-js-client runs under node)")
    if not CLIENT_PACKAGE.exists():
        pytest.fail(f"{CLIENT_PACKAGE} not found: run `make test-deps` (npm ci in demo/)")
    return found


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per kind for the module; each test uses its own file and checks its own id."""
    upload_dir = tmp_path_factory.mktemp(f"uploads-{request.param}")
    with running(request.param, upload_dir) as srv:
        yield srv


def make_file(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def run_client(
    node: str, mode: str, server: Server, source: Path, **options: Any
) -> dict[str, Any]:
    """Run tus_client.mjs and return its JSON result, failing with its output on an error."""
    completed = subprocess.run(
        [node, str(SCRIPT), mode, server.url + "/files/", str(source), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    assert completed.returncode == 0 and lines, (
        f"tus-js-client {mode} failed ({completed.returncode}): "
        f"{completed.stdout}\n{completed.stderr}"
    )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def head(url: str) -> httpx.Response:
    response = httpx.head(url, headers=TUS)
    assert response.status_code == 200, response.status_code
    return response


def test_upload(node: str, server: Server, tmp_path: Path) -> None:
    """A multi-chunk upload by tus-js-client is stored byte-identical, with its metadata."""
    source = tmp_path / "upload.bin"
    data = make_file(source, 3 * MiB + 17, seed=71)
    result = run_client(
        node,
        "upload",
        server,
        source,
        chunkSize=MiB,
        metadata={"filename": "upload.bin", "filetype": "application/octet-stream"},
    )

    url = result["url"]
    assert url.startswith(server.url + "/files/")
    assert (server.upload_dir / upload_id(url)).read_bytes() == data
    response = head(url)
    assert response.headers["Upload-Offset"] == str(len(data))
    assert response.headers["Upload-Length"] == str(len(data))
    assert "filename dXBsb2FkLmJpbg==" in response.headers["Upload-Metadata"]


def test_resume_after_abort(node: str, server: Server, tmp_path: Path) -> None:
    """An upload aborted during a PATCH, before its response, is found again through
    tus-js-client's URL storage; the new Upload asks HEAD for the offset, continues the same
    upload (no POST) from at least the acknowledged chunks, and the bytes match."""
    source = tmp_path / "resume.bin"
    chunk = 256 * KiB
    data = make_file(source, 2 * MiB + 5, seed=72)
    result = run_client(
        node,
        "resume",
        server,
        source,
        chunkSize=chunk,
        # During the third PATCH: two chunks are acknowledged before the abort.
        abortAfter=2 * chunk + chunk // 2,
        urlStorage=str(tmp_path / "tus-urls.json"),
    )

    assert result["url"] == result["firstUrl"]
    assert result["secondRequests"][0] == "HEAD"
    assert "POST" not in result["secondRequests"]
    assert 2 * chunk <= result["resumedFrom"] < len(data)
    assert (server.upload_dir / upload_id(result["url"])).read_bytes() == data
    assert head(result["url"]).headers["Upload-Offset"] == str(len(data))


def test_parallel_uploads_concatenated(node: str, server: Server, tmp_path: Path) -> None:
    """parallelUploads: 3 sends three partial uploads and a final concatenation; the final
    upload's data equals the source and HEAD shows it as ``final`` of three partials."""
    source = tmp_path / "parallel.bin"
    data = make_file(source, 3 * MiB + 2, seed=73)
    result = run_client(node, "parallel", server, source, chunkSize=512 * KiB, parallelUploads=3)

    assert result["posts"] == 4
    final_url = result["url"]
    assert (server.upload_dir / upload_id(final_url)).read_bytes() == data
    response = head(final_url)
    assert response.headers["Upload-Offset"] == str(len(data))
    concat = response.headers["Upload-Concat"]
    assert concat.startswith("final;")
    partial_urls = concat.removeprefix("final;").split()
    assert len(partial_urls) == 3
    pieces = []
    for partial in partial_urls:
        partial_response = head(str(httpx.URL(server.url).join(partial)))
        assert partial_response.headers["Upload-Concat"] == "partial"
        pieces.append((server.upload_dir / upload_id(partial)).read_bytes())
    assert b"".join(pieces) == data
