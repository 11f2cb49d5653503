"""End to end over real sockets: the demo app under the Werkzeug server and gunicorn (gthread),
driven by the official tus client (tuspy) and by raw HTTP for the failure cases."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import Server, running
from tusclient import client as tus_client

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
KINDS = ["werkzeug", "gunicorn", "hypercorn", "uvicorn"]


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    with running(request.param, tmp_path / "uploads") as srv:
        yield srv


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def wait_for_offset(url: str, expected: int, timeout: float = 20) -> int:
    """HEAD until the offset reaches ``expected`` (the server may still be saving)."""
    deadline = time.monotonic() + timeout
    offset = -1
    while time.monotonic() < deadline:
        response = httpx.head(url, headers=TUS)
        offset = int(response.headers["Upload-Offset"])
        if offset == expected:
            return offset
        time.sleep(0.05)
    return offset


def test_demo_page_and_endpoint_contract(server: Server) -> None:
    """`/` serves the upload page with a locally bundled client; `/files/` speaks tus."""
    page = httpx.get(server.url + "/")
    assert page.status_code == 200
    assert "vendor/tus.min.js" in page.text
    assert "//cdn" not in page.text
    options = httpx.options(server.url + "/files/")
    assert options.status_code == 204
    assert options.headers["Tus-Version"] == "1.0.0"
    assert httpx.options(server.url + "/files").status_code == 204


def test_tuspy_uploads_and_bytes_match(server: Server) -> None:
    """The official Python client uploads a multi-chunk file; the stored bytes are identical."""
    data = payload(3 * 1024 * 1024 + 123)
    client = tus_client.TusClient(server.url + "/files/")
    uploader = client.uploader(
        file_stream=io.BytesIO(data),
        chunk_size=512 * 1024,
        metadata={"filename": "data.bin"},
        upload_checksum=True,
    )
    uploader.upload()
    assert uploader.url is not None
    stored = server.upload_dir / upload_id(uploader.url)
    assert stored.read_bytes() == data
    download = httpx.get(uploader.url)
    assert download.content == data
    assert 'filename="data.bin"' in download.headers["Content-Disposition"]


def test_tuspy_resumes_after_interruption(server: Server) -> None:
    """An upload stopped part-way is resumed by a new client from the server's offset."""
    data = payload(2 * 1024 * 1024, seed=2)
    client = tus_client.TusClient(server.url + "/files/")
    first = client.uploader(file_stream=io.BytesIO(data), chunk_size=256 * 1024)
    first.upload(stop_at=768 * 1024)
    assert first.url is not None
    assert wait_for_offset(first.url, 768 * 1024) == 768 * 1024

    second = client.uploader(file_stream=io.BytesIO(data), chunk_size=256 * 1024, url=first.url)
    assert second.offset == 768 * 1024
    second.upload()
    assert (server.upload_dir / upload_id(first.url)).read_bytes() == data


def _create(server: Server, length: int) -> str:
    response = httpx.post(server.url + "/files/", headers={**TUS, "Upload-Length": str(length)})
    assert response.status_code == 201
    return server.url + response.headers["Location"]


def _start_patch(url: str, offset: int, length: int, sent: bytes) -> socket.socket:
    """Open a raw PATCH announcing ``length`` bytes and send only ``sent``."""
    path = url.split("://", 1)[1].split("/", 1)[1]
    host, port = url.split("://", 1)[1].split("/", 1)[0].split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"PATCH /{path} HTTP/1.1\r\nHost: {host}:{port}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: {OCTET}\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def test_disconnect_mid_body_keeps_what_arrived(server: Server) -> None:
    """A client that drops mid-PATCH finds the received bytes counted and can finish."""
    data = payload(1024 * 1024, seed=3)
    url = _create(server, len(data))
    sent = 300 * 1024
    sock = _start_patch(url, 0, len(data), data[:sent])
    time.sleep(0.3)  # let the server read what was sent before the connection drops
    sock.close()
    assert wait_for_offset(url, sent) == sent

    rest = httpx.patch(
        url, content=data[sent:], headers={**TUS, "Upload-Offset": str(sent), "Content-Type": OCTET}
    )
    assert rest.status_code == 204
    assert (server.upload_dir / upload_id(url)).read_bytes() == data


def test_chunked_patch_is_stored_whole(server: Server) -> None:
    """A `Transfer-Encoding: chunked` PATCH (no Content-Length) is stored in full."""
    data = payload(700 * 1024, seed=4)
    url = _create(server, len(data))

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 100 * 1024):
            yield data[start : start + 100 * 1024]

    response = httpx.patch(
        url, content=pieces(), headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
    )
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == str(len(data))
    assert (server.upload_dir / upload_id(url)).read_bytes() == data


def _complete(response: str) -> bool:
    """Whether ``response`` holds a whole HTTP response with a Content-Length body."""
    head, sep, body = response.partition("\r\n\r\n")
    if not sep:
        return False
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(body.encode()) >= int(value)
    return True


def test_newer_patch_takes_over_a_stalled_one(server: Server) -> None:
    """A client that reconnects while its old PATCH still hangs on the server is not locked
    out: the old request saves what it has and lets go, the new one goes on (204, or 409 when
    the old one had saved bytes the new one did not know of), and the bytes stay right."""
    data = payload(512 * 1024, seed=5)
    url = _create(server, len(data))
    stalled = _start_patch(url, 0, len(data), data[:1000])
    time.sleep(0.3)
    newer = httpx.patch(
        url, content=data, headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET}, timeout=10
    )
    assert newer.status_code in (204, 409)
    if newer.status_code == 409:
        saved = int(httpx.head(url, headers=TUS).headers["Upload-Offset"])
        rest = httpx.patch(
            url,
            content=data[saved:],
            headers={**TUS, "Upload-Offset": str(saved), "Content-Type": OCTET},
        )
        assert rest.status_code == 204
    assert (server.upload_dir / upload_id(url)).read_bytes() == data
    # The stalled request is told it was interrupted (tusd's 400), or its connection dropped.
    stalled.settimeout(10)
    reply = ""
    try:
        stalled.sendall(data[1000:])
        # Headers and body may come in separate packets: read the whole response.
        while not _complete(reply) and (piece := stalled.recv(4096)):
            reply += piece.decode()
    except OSError:
        pass
    finally:
        stalled.close()
    if reply:
        assert reply.split(" ", 2)[1] == "400", reply
        assert "interrupted" in reply
    assert (server.upload_dir / upload_id(url)).read_bytes() == data
    # No lock or stop file stays behind (the locks are bytes of the one file ``.tus-locks``).
    leftovers = [p for p in server.upload_dir.iterdir() if p.suffix in (".lock", ".stop")]
    assert leftovers == []


def test_connection_stays_usable_after_a_refused_patch(server: Server) -> None:
    """A PATCH refused before its body is read (409) does not break the kept-alive connection
    for the client's next request (gunicorn closes it otherwise)."""
    with httpx.Client() as client:
        url = (
            server.url
            + client.post(
                server.url + "/files/", headers={**TUS, "Upload-Length": "2000000"}
            ).headers["Location"]
        )
        for _ in range(3):
            refused = client.patch(
                url,
                content=b"x" * 1_000_000,
                headers={**TUS, "Upload-Offset": "5", "Content-Type": OCTET},
            )
            assert refused.status_code == 409
            assert client.head(url, headers=TUS).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("kind", KINDS)
def test_acknowledged_bytes_survive_kill_9(kind: str, tmp_path: Path) -> None:
    """Bytes acknowledged with a 204 are still there after the server is killed with SIGKILL,
    and the upload completes on a restarted server."""
    upload_dir = tmp_path / "uploads"
    data = payload(600 * 1024, seed=6)
    server = Server(kind, upload_dir)
    server.start()
    try:
        url = _create(server, len(data))
        first = httpx.patch(
            url,
            content=data[: 400 * 1024],
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET},
        )
        assert first.status_code == 204
        # An unacknowledged request in flight when the server dies.
        hanging = _start_patch(url, 400 * 1024, 200 * 1024, data[400 * 1024 : 450 * 1024])
        time.sleep(0.3)
    finally:
        server.kill(signal.SIGKILL)
    hanging.close()

    server.start()
    try:
        head = httpx.head(url.replace(url.split("/files/")[0], server.url), headers=TUS)
        offset = int(head.headers["Upload-Offset"])
        assert offset >= 400 * 1024
        stored = (upload_dir / upload_id(url)).read_bytes()
        assert stored[:offset] == data[:offset]
        rest = httpx.patch(
            server.url + "/files/" + upload_id(url),
            content=data[offset:],
            headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTET},
        )
        assert rest.status_code == 204
        assert (upload_dir / upload_id(url)).read_bytes() == data
    finally:
        server.kill(signal.SIGTERM)
    assert os.path.exists(upload_dir / f"{upload_id(url)}.json")
