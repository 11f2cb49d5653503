"""The native ASGI adapter: bare (no Flask) through httpx's ASGI transport, with the Flask
fallback, and under hypercorn over real sockets (flat memory, graceful shutdown)."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_client import AsgiTestClient
from flask import Flask, abort, current_app, g, request, url_for
from servers import Server

from flask_tus import FlaskTus, HookEvent, extension
from flask_tus.asgi import Message, TusASGI
from flask_tus.core import TusHandler

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_bare_adapter_serves_the_protocol(handler: TusHandler, upload_dir: Path) -> None:
    """POST, PATCH, HEAD and GET through the adapter with no framework at all."""
    async with asgi_client(TusASGI(handler, "/files/")) as client:
        created = await client.post("/files", headers={**TUS, "Upload-Length": "11"})
        assert created.status_code == 201
        url = created.headers["Location"]
        assert url.startswith("/files/")
        patched = await client.patch(
            url,
            content=b"hello world",
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET},
        )
        assert patched.status_code == 204
        assert patched.headers["Upload-Offset"] == "11"
        head = await client.head(url, headers=TUS)
        assert head.headers["Upload-Offset"] == "11"
        assert head.content == b""
        assert (await client.get(url)).content == b"hello world"
        assert (await client.get("/elsewhere")).status_code == 404
        assert (await client.options("/files/")).headers["Tus-Version"] == "1.0.0"


async def test_root_path_is_part_of_location(handler: TusHandler) -> None:
    """Mounted below a root path, the adapter matches and answers with the full path."""
    app = TusASGI(handler, "/files/")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, root_path="/api"), base_url="http://test"
    ) as client:
        created = await client.post("/api/files/", headers={**TUS, "Upload-Length": "1"})
        assert created.status_code == 201
        assert created.headers["Location"].startswith("/api/files/")


@pytest.mark.parametrize("method", ["PATCH", "patch"])
async def test_disconnect_keeps_what_arrived(
    handler: TusHandler, upload_dir: Path, method: str
) -> None:
    """`http.disconnect` mid-body: the pieces that arrived are stored and counted. A method
    in lower case (uvicorn passes it as sent; a browser's ``fetch`` sends ``patch`` so) is
    served natively too, never by the fallback (which would buffer the body and lose it)."""
    async with asgi_client(TusASGI(handler)) as client:
        created = await client.post("/files/", headers={**TUS, "Upload-Length": "100"})
        upload_id = created.headers["Location"].rsplit("/", 1)[-1]

    messages: list[Message] = [
        {"type": "http.request", "body": b"a" * 30, "more_body": True},
        {"type": "http.request", "body": b"b" * 20, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a tus PATCH reached the fallback")

    seen: list[str] = []
    handler.hooks.add("pre_save", lambda event: seen.append(event.request.method))

    scope = {
        "type": "http",
        "method": method,
        "path": f"/files/{upload_id}",
        "root_path": "",
        "headers": [
            (b"tus-resumable", b"1.0.0"),
            (b"upload-offset", b"0"),
            (b"content-type", OCTET.encode()),
            (b"content-length", b"100"),
        ],
        "client": ("127.0.0.1", 5000),
    }
    await TusASGI(handler, fallback=fallback)(scope, receive, send)
    assert seen == ["PATCH"]  # as under a WSGI server, whatever the case sent
    assert (upload_dir / upload_id).read_bytes() == b"a" * 30 + b"b" * 20
    assert (await handler.store.get(upload_id)).offset == 50


async def test_lifespan_is_answered(handler: TusHandler) -> None:
    """The adapter completes lifespan startup and shutdown itself (WsgiToAsgi cannot)."""
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await TusASGI(handler)({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def flask_with_asgi(upload_dir: Path) -> tuple[Flask, FlaskTus]:
    app = Flask(__name__)
    app.config["TUS_UPLOAD_DIR"] = str(upload_dir)
    return app, FlaskTus(app)


async def test_flask_routes_and_hooks_through_the_asgi_app(upload_dir: Path) -> None:
    """Other routes reach Flask; hooks run inside the app context (current_app works)."""
    app, tus = flask_with_asgi(upload_dir)
    seen: list[str] = []

    @app.get("/hello")
    def hello() -> str:
        return "hi"

    @tus.hooks.on_complete
    async def done(event: HookEvent) -> None:
        seen.append(current_app.name + ":" + event.upload.id)

    async with asgi_client(tus.asgi_app(app)) as client:
        assert (await client.get("/hello")).text == "hi"
        created = await client.post("/files/", headers={**TUS, "Upload-Length": "2"})
        url = created.headers["Location"]
        await client.patch(
            url, content=b"ok", headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET}
        )
    assert seen == [f"{app.name}:{url.rsplit('/', 1)[-1]}"]


async def test_flask_requests_run_concurrently(upload_dir: Path) -> None:
    """Two Flask requests in flight at once both run: a barrier of two only opens if the
    fallback does not serialise them (asgiref would, without a context per request)."""
    app, tus = flask_with_asgi(upload_dir)
    barrier = threading.Barrier(2, timeout=10)

    @app.get("/meet")
    def meet() -> str:
        barrier.wait()
        return "met"

    async with asgi_client(tus.asgi_app(app)) as client:
        first, second = await asyncio.gather(client.get("/meet"), client.get("/meet"))
    assert (first.status_code, second.status_code) == (200, 200)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def hypercorn(tmp_path: Path) -> Iterator[Server]:
    server = Server("hypercorn", tmp_path / "uploads")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.kill(signal.SIGTERM)


def test_one_gib_patch_keeps_memory_flat(hypercorn: Server) -> None:
    """A 1 GiB PATCH under hypercorn grows the server's RSS by no more than 32 MB."""
    assert hypercorn.process is not None
    pid = hypercorn.process.pid
    size = 1024**3
    piece = bytes(range(256)) * 4096  # 1 MiB
    created = httpx.post(hypercorn.url + "/files/", headers={**TUS, "Upload-Length": str(size)})
    url = hypercorn.url + created.headers["Location"]
    before = rss_mb(pid)
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        response = httpx.patch(
            url,
            content=(piece for _ in range(size // len(piece))),
            headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTET},
            timeout=None,
        )
    finally:
        stop.set()
        sampler.join()
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == str(size)
    assert (hypercorn.upload_dir / url.rsplit("/", 1)[-1]).stat().st_size == size
    assert peak - before <= 32, f"RSS grew from {before:.1f} MB to {peak:.1f} MB"


def test_sigterm_saves_running_patch_and_exits(hypercorn: Server) -> None:
    """On SIGTERM a PATCH still receiving its body saves what arrived, and the server exits
    within its graceful timeout instead of hanging on the client."""
    assert hypercorn.process is not None
    created = httpx.post(hypercorn.url + "/files/", headers={**TUS, "Upload-Length": "1000000"})
    path = created.headers["Location"]
    sock = socket.create_connection(("127.0.0.1", hypercorn.port))
    sock.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            f"Content-Type: {OCTET}\r\nContent-Length: 1000000\r\n\r\n"
        ).encode()
        + b"z" * 300_000
    )
    deadline = time.monotonic() + 10
    data_file = hypercorn.upload_dir / path.rsplit("/", 1)[-1]
    while time.monotonic() < deadline and data_file.stat().st_size < 300_000:
        time.sleep(0.05)
    hypercorn.process.send_signal(signal.SIGTERM)
    # hypercorn waits 3 s for running requests, then cancels them: well within 30 s.
    hypercorn.process.wait(timeout=30)
    hypercorn.process = None
    sock.close()

    hypercorn.start()
    head = httpx.head(hypercorn.url + path, headers=TUS)
    assert head.headers["Upload-Offset"] == "300000"
    assert data_file.read_bytes() == b"z" * 300_000


@pytest.mark.parametrize("kind", ["announced", "unannounced"])
def test_http2_creation_with_upload(hypercorn: Server, kind: str) -> None:
    """Over HTTP/2 (prior knowledge, as hypercorn serves it on a plain socket) a creation body
    is stored whether or not Content-Length announces it: HTTP/2 frames a body without one."""
    data = bytes(range(256)) * 1024

    async def pieces() -> Any:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    async def upload() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(http1=False, http2=True, base_url=hypercorn.url) as client:
            content = data if kind == "announced" else pieces()
            headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTET}
            created = await client.post("/files/", headers=headers, content=content)
            assert created.http_version == "HTTP/2"
            head = await client.head(created.headers["Location"], headers=TUS)
            return created, head

    created, head = asyncio.run(upload())
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == str(len(data))
    assert head.headers["Upload-Offset"] == str(len(data))
    upload_id = created.headers["Location"].rsplit("/", 1)[-1]
    assert (hypercorn.upload_dir / upload_id).read_bytes() == data


def guarded_app(upload_dir: Path) -> tuple[Flask, FlaskTus]:
    """An app whose ``before_request`` lets only ``Authorization: Bearer ok`` through (401
    otherwise, ``abort(403)`` for ``Bearer no``) and records the user in ``g``; its hooks note
    which user created what."""
    app = Flask(__name__)
    app.config["TUS_UPLOAD_DIR"] = str(upload_dir)
    tus = FlaskTus(app)
    created_by: list[str] = []
    app.config["created_by"] = created_by

    def authenticate() -> Any:
        auth = request.headers.get("Authorization", "")
        if auth == "Bearer no":
            abort(403)
        if auth != "Bearer ok":
            return "who are you?\n", 401
        g.user = "alice"
        return None

    app.before_request(authenticate)

    @tus.hooks.on_create
    def note(event: HookEvent) -> None:
        created_by.append(g.user)

    return app, tus


@pytest.mark.parametrize("path", ["wsgi", "asgi"])
def test_before_request_guards_tus_requests_on_both_paths(upload_dir: Path, path: str) -> None:
    """The app's ``before_request`` runs for tus requests under the ASGI app as under a WSGI
    server: it refuses them before anything is read or stored, and what it puts in ``g``
    reaches the hooks."""
    app, tus = guarded_app(upload_dir)
    client: Any = app.test_client() if path == "wsgi" else AsgiTestClient(tus.asgi_app(app))
    ok = {**TUS, "Authorization": "Bearer ok"}
    try:
        created = client.post("/files/", headers={**ok, "Upload-Length": "5"})
        assert created.status_code == 201
        url = created.headers["Location"]
        assert client.patch(url, data=b"ab", headers={**ok, **patch(0)}).status_code == 204
        before = {p.name: p.read_bytes() for p in upload_dir.iterdir()}

        refused = [
            client.post("/files/", headers={**TUS, "Upload-Length": "5"}),
            client.patch(url, data=b"cde", headers={**TUS, **patch(2)}),
            client.head(url, headers=TUS),
            client.get(url),
            client.delete(url, headers=TUS),
            client.patch(
                url, data=b"cde", headers={**TUS, **patch(2), "Authorization": "Bearer no"}
            ),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401, 401, 401, 403]
        assert refused[0].data == b"who are you?\n"
        assert {p.name: p.read_bytes() for p in upload_dir.iterdir()} == before
        assert app.config["created_by"] == ["alice"]
        assert client.head(url, headers=ok).headers["Upload-Offset"] == "2"
    finally:
        if isinstance(client, AsgiTestClient):
            client.close()


def patch(offset: int) -> dict[str, str]:
    return {"Upload-Offset": str(offset), "Content-Type": OCTET}


@pytest.mark.parametrize("own", [False, True])
def test_before_request_functions_run_in_a_thread_only_when_the_app_has_some(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch, own: bool
) -> None:
    """The guard hops to a worker thread to run ``before_request`` functions only when the app
    or the tus blueprint has some (the extension adds none). A method tus does not serve goes
    to the Flask app, which runs them too and answers with the tus 405."""
    app = Flask(__name__)
    app.config["TUS_UPLOAD_DIR"] = str(upload_dir)
    tus = FlaskTus(app)
    ran: list[str] = []
    if own:
        app.before_request(lambda: ran.append(request.method))
    preprocessed: list[str] = []
    real = extension._preprocess

    def counting(flask_app: Flask) -> Any:
        preprocessed.append(request.method)
        return real(flask_app)

    monkeypatch.setattr(extension, "_preprocess", counting)
    client = AsgiTestClient(tus.asgi_app(app))
    try:
        created = client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        assert created.status_code == 201
        refused = client.open(created.headers["Location"], "PUT", data=b"x", headers=TUS)
        assert refused.status_code == 405
        assert refused.headers["Tus-Resumable"] == "1.0.0"
        assert refused.headers["Allow"] == "HEAD, PATCH, DELETE, GET, OPTIONS"
    finally:
        client.close()
    assert preprocessed == (["POST"] if own else [])
    assert ran == (["POST", "PUT"] if own else [])


def test_hooks_see_the_flask_request_on_the_asgi_path(upload_dir: Path) -> None:
    """Under ``tus.asgi_app`` hooks run in a request context as under a WSGI server, with or
    without ``before_request`` functions: ``request``, ``url_for`` and ``g`` work (the seed's
    hooks read ``flask.request``)."""
    app = Flask(__name__)
    app.config["TUS_UPLOAD_DIR"] = str(upload_dir)
    tus = FlaskTus(app)
    seen: list[Any] = []

    @tus.hooks.on_create
    def look() -> None:
        seen.append((request.method, request.headers.get("X-Who"), url_for("tus.collection")))

    client = AsgiTestClient(tus.asgi_app(app))
    try:
        headers = {**TUS, "Upload-Length": "1", "X-Who": "bob"}
        assert client.post("/files/", headers=headers).status_code == 201
    finally:
        client.close()
    assert seen == [("POST", "bob", "/files/")]


def test_flask_async_views_on_one_kept_alive_connection_under_uvicorn(tmp_path: Path) -> None:
    """uvicorn runs a kept-alive connection's requests in copies of one context; each Flask
    request through the ASGI app gets a fresh one, so asgiref's state from the previous
    request cannot break the next (it did: 17 of 150 answered 500)."""
    server = Server("uvicorn", tmp_path / "uploads")
    server.start()
    try:
        with httpx.Client(base_url=server.url) as client:
            codes = [client.get("/uploads.json").status_code for _ in range(150)]
    finally:
        server.kill(signal.SIGTERM)
    assert codes == [200] * 150
