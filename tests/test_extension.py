"""The Flask extension: Pallets pattern, the seed's settings and call shapes, the public names."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import threading
from contextlib import asynccontextmanager
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from asgi_client import AsgiTestClient
from conftest import OCTET, TUS, create, patch_headers
from flask import Flask, current_app, request
from flask.testing import FlaskClient
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import flask_tus
from flask_tus import FlaskTus, Upload
from flask_tus.async_models.json_store import JsonFileStore
from flask_tus.core.protocols import UploadStore
from flask_tus.extension import TusState
from flask_tus.storage.local import LocalStorage, LocalWriter


def upload_id_of(location: str) -> str:
    return location.rsplit("/", 1)[-1]


def record(app: Flask, upload_id: str) -> Upload:
    """The stored record, read through the app's store on a private event loop."""
    return asyncio.run(app.extensions["tus"].handler.store.get(upload_id))


def new_app(upload_dir: Path, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    app.config["TUS_UPLOAD_DIR"] = str(upload_dir)
    app.config.update(config)
    return app


# ---------------------------------------------------------------------- public names


def test_all_is_pinned() -> None:
    """``flask_tus.__all__`` is exactly the documented public names, each importable."""
    assert flask_tus.__all__ == [
        "FlaskTus",
        "HookEvent",
        "HookRejected",
        "RequestInfo",
        "TusError",
        "TusSettings",
        "Upload",
    ]
    for name in flask_tus.__all__:
        assert getattr(flask_tus, name) is not None


# ---------------------------------------------------------------------- Pallets pattern


def test_direct_registration_keeps_state_in_app_extensions(upload_dir: Path) -> None:
    """``FlaskTus(app)`` registers at once and keeps its state in ``app.extensions["tus"]``."""
    app = new_app(upload_dir)
    tus = FlaskTus(app)
    state = app.extensions["tus"]
    assert isinstance(state, TusState)
    assert state.extension is tus
    assert state.upload_dir == str(upload_dir)
    assert tus.state(app) is state
    assert tus.state() is state
    response = app.test_client().options("/files/")
    assert response.status_code == 204


def test_application_factory_serves_several_apps(tmp_path: Path) -> None:
    """``FlaskTus()`` then ``init_app`` works for several apps, each with its own state."""
    tus = FlaskTus()
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first = new_app(first_dir)
    second = new_app(second_dir, TUS_UPLOAD_URL="/other/")
    tus.init_app(first)
    tus.init_app(second)

    assert first.extensions["tus"].extension is tus
    assert second.extensions["tus"].extension is tus
    assert first.extensions["tus"].handler is not second.extensions["tus"].handler
    with first.app_context():
        assert tus.state() is first.extensions["tus"]
    with second.app_context():
        assert tus.state() is second.extensions["tus"]

    one = upload_id_of(create(first.test_client()))
    location = second.test_client().post("/other/", headers={**TUS, "Upload-Length": "3"})
    assert location.status_code == 201
    two = upload_id_of(location.headers["Location"])
    assert (first_dir / one).exists() and not (second_dir / one).exists()
    assert (second_dir / two).exists() and not (first_dir / two).exists()


def test_state_outside_any_app_is_an_error() -> None:
    """An extension never initialised has no state: ``RuntimeError``, not ``None``."""
    with pytest.raises(RuntimeError):
        FlaskTus().state()


def test_second_registration_on_the_same_app_raises(upload_dir: Path) -> None:
    """Registering twice on one app is a clear ``RuntimeError`` and keeps the first state."""
    app = new_app(upload_dir)
    tus = FlaskTus(app)
    state = app.extensions["tus"]
    with pytest.raises(RuntimeError):
        FlaskTus(app)
    with pytest.raises(RuntimeError):
        tus.init_app(app)
    assert app.extensions["tus"] is state


def test_defaults_are_documented_in_config(upload_dir: Path) -> None:
    """``init_app`` fills unset ``TUS_*`` keys with their defaults and keeps the ones set."""
    app = new_app(upload_dir, TUS_MAX_SIZE=1234)
    FlaskTus(app)
    assert app.config["TUS_UPLOAD_URL"] == "/files/"
    assert app.config["TUS_EXPIRATION"] == timedelta(days=1)
    assert app.config["TUS_MAX_SIZE"] == 1234


def test_upload_dir_defaults_to_the_instance_folder(tmp_path: Path) -> None:
    """Without ``TUS_UPLOAD_DIR`` the data goes to ``<instance>/tus-uploads``."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["TESTING"] = True
    FlaskTus(app)
    upload_id = upload_id_of(create(app.test_client()))
    assert (tmp_path / "instance" / "tus-uploads" / upload_id).exists()


# ---------------------------------------------------------------------- TUS_UPLOAD_URL


@pytest.mark.parametrize(
    ("setting", "base"),
    [
        (None, "/files"),
        ("/uploads/", "/uploads"),
        ("/uploads", "/uploads"),
        ("api/tus", "/api/tus"),
    ],
)
def test_collection_answers_with_and_without_slash(
    upload_dir: Path, setting: str | None, base: str
) -> None:
    """The collection URL answers POST and OPTIONS at ``/x`` and ``/x/`` alike, no redirect."""
    config = {} if setting is None else {"TUS_UPLOAD_URL": setting}
    app = new_app(upload_dir, **config)
    FlaskTus(app)
    client = app.test_client()
    for url in (base, base + "/"):
        options = client.options(url)
        assert options.status_code == 204, url
        assert "Tus-Version" in options.headers
        created = client.post(url, headers={**TUS, "Upload-Length": "4"})
        assert created.status_code == 201, (url, created.status_code)
        location = created.headers["Location"]
        assert location.startswith(base + "/")
        upload_id = upload_id_of(location)
        head = client.head(location, headers=TUS)
        assert head.status_code == 200
        assert (upload_dir / upload_id).exists()


@pytest.mark.parametrize("path", ["wsgi", "asgi"])
def test_app_routes_at_tus_paths_keep_their_methods(upload_dir: Path, path: str) -> None:
    """Routes of the app at paths the tus routes also match, registered after the extension,
    still get the methods tus does not serve (a catch-all too), on both paths; every other
    method there gets the tus 405, also on the collection without its slash. The tus rules keep
    their method lists, which code listing the app's routes reads (Flask's site map recipe
    tests ``"GET" in rule.methods``), and Flask's automatic OPTIONS answer for the app's route
    still names its methods."""
    app = new_app(upload_dir)
    tus = FlaskTus(app)

    @app.put("/files/<name>")
    def replace(name: str) -> str:
        return f"app put {name}"

    @app.route("/<path:anything>", methods=["PROPFIND"])
    def catch_all(anything: str) -> str:
        return f"app propfind {anything}"

    @app.get("/files/stats")
    def stats() -> str:
        return "app stats"

    client: Any = app.test_client() if path == "wsgi" else AsgiTestClient(tus.asgi_app(app))
    try:
        assert client.open("/files/abc", method="PUT").data == b"app put abc"
        assert client.open("/files/", method="PROPFIND").data == b"app propfind files/"
        for url, allow in (
            ("/files/abc", "HEAD, PATCH, DELETE, GET, OPTIONS"),
            ("/files/", "POST, OPTIONS"),
            ("/files", "POST, OPTIONS"),
        ):
            trace = client.open(url, method="TRACE", headers=TUS)
            assert trace.status_code == 405, url
            assert trace.headers["Tus-Resumable"] == "1.0.0"
            assert trace.headers["Allow"] == allow
        assert client.open("/files", method="PUT").status_code == 405
        assert client.open("/files/stats", method="GET").data == b"app stats"
        assert "GET" in client.open("/files/stats", method="OPTIONS").headers["Allow"]
    finally:
        if isinstance(client, AsgiTestClient):
            client.close()

    tus_rules = {r.endpoint: r for r in app.url_map.iter_rules() if r.endpoint.startswith("tus.")}
    assert set(tus_rules) == {"tus.collection", "tus.upload"}
    for rule in tus_rules.values():
        assert rule.methods == {"OPTIONS", "POST", "HEAD", "PATCH", "DELETE", "GET"}


@pytest.mark.parametrize("path", ["wsgi", "asgi"])
def test_other_methods_meet_the_apps_request_functions(upload_dir: Path, path: str) -> None:
    """For a method tus does not serve, the app's ``before_request`` functions (also those
    registered after the extension) run first and keep the last word, even when they answer
    with the status the routing error has (a 404 that hides the endpoint); the tus 405 that
    follows otherwise passes through the app's ``after_request`` functions and wins over the
    app's own 404/405 error handlers."""
    app = new_app(upload_dir)
    tus = FlaskTus(app)
    seen: list[str] = []

    @app.before_request
    def authenticate() -> Any:
        seen.append(request.method)
        if request.headers.get("Authorization") != "Bearer ok":
            return "nothing here\n", 404
        return None

    @app.after_request
    def frame_options(response: Any) -> Any:
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.errorhandler(405)
    def app_405(error: Any) -> Any:
        return "the app's 405 page\n", 405

    client: Any = app.test_client() if path == "wsgi" else AsgiTestClient(tus.asgi_app(app))
    ok = {**TUS, "Authorization": "Bearer ok"}
    try:
        for url in ("/files/abc", "/files"):
            refused = client.open(url, method="PUT", headers=TUS)
            assert (refused.status_code, refused.data) == (404, b"nothing here\n"), url
            assert "Tus-Resumable" not in refused.headers
            allowed = client.open(url, method="PUT", headers=ok)
            assert allowed.status_code == 405, url
            assert allowed.data == b"method not allowed\n"
            assert allowed.headers["Tus-Resumable"] == "1.0.0"
            assert allowed.headers["X-Frame-Options"] == "DENY"
    finally:
        if isinstance(client, AsgiTestClient):
            client.close()
    assert seen == ["PUT"] * 4


def test_collection_at_the_root(upload_dir: Path) -> None:
    """``TUS_UPLOAD_URL = "/"`` serves at the root with ``Location: /<id>``, never ``//<id>``
    (which a client would read as a URL on another host)."""
    app = new_app(upload_dir, TUS_UPLOAD_URL="/")
    FlaskTus(app)
    client = app.test_client()
    created = client.post("/", headers={**TUS, "Upload-Length": "2"})
    assert created.status_code == 201
    location = created.headers["Location"]
    assert location == "/" + upload_id_of(location)
    assert client.patch(location, data=b"ok", headers=patch_headers(0)).status_code == 204
    assert client.get(location).data == b"ok"


def test_default_url_does_not_serve_a_custom_collection(upload_dir: Path) -> None:
    """With ``TUS_UPLOAD_URL = "/uploads/"`` the endpoint is not also at ``/files/``."""
    app = new_app(upload_dir, TUS_UPLOAD_URL="/uploads/")
    FlaskTus(app)
    response = app.test_client().post("/files/", headers={**TUS, "Upload-Length": "4"})
    assert response.status_code == 404


def test_app_mounted_under_a_prefix_hands_out_urls_under_it(upload_dir: Path) -> None:
    """Mounted at ``/app`` (``SCRIPT_NAME``), ``Location`` and a final upload's
    ``Upload-Concat`` name URLs under ``/app``, and those URLs reach the upload."""
    app = new_app(upload_dir)
    FlaskTus(app)
    mounted = Flask("outer")
    mounted.wsgi_app = DispatcherMiddleware(mounted.wsgi_app, {"/app": app})  # type: ignore[method-assign]
    client = mounted.test_client()
    created = client.post("/app/files/", headers={**TUS, "Upload-Length": "2"})
    assert created.status_code == 201
    location = created.headers["Location"]
    assert location == "/app/files/" + upload_id_of(location)
    assert client.patch(location, data=b"ab", headers=patch_headers(0)).status_code == 204
    assert client.head(location, headers=TUS).headers["Upload-Offset"] == "2"

    partial = client.post(
        "/app/files/", headers={**TUS, "Upload-Length": "1", "Upload-Concat": "partial"}
    ).headers["Location"]
    assert client.patch(partial, data=b"c", headers=patch_headers(0)).status_code == 204
    final = client.post("/app/files/", headers={**TUS, "Upload-Concat": f"final;{partial}"})
    assert final.status_code == 201
    head = client.head(final.headers["Location"], headers=TUS)
    assert head.headers["Upload-Concat"] == f"final;{partial}"
    assert client.get(final.headers["Location"]).data == b"c"


# ---------------------------------------------------------------------- TUS_UPLOAD_DIR


def test_upload_dir_receives_data_and_records(tmp_path: Path) -> None:
    """``TUS_UPLOAD_DIR`` holds each upload's bytes (``<id>``) and record (``<id>.json``, one
    JSON line per version, the last one current)."""
    target = tmp_path / "somewhere" / "else"
    app = new_app(target)
    FlaskTus(app)
    client = app.test_client()
    location = create(client, length=5)
    response = client.patch(location, data=b"hello", headers=patch_headers(0))
    assert response.status_code == 204
    upload_id = upload_id_of(location)
    assert (target / upload_id).read_bytes() == b"hello"
    versions = [
        json.loads(line) for line in (target / f"{upload_id}.json").read_text().splitlines()
    ]
    assert [version["offset"] for version in versions] == [0, 5]


# ---------------------------------------------------------------------- TUS_MAX_SIZE


def test_max_size_is_advertised_and_enforced(make_app: Any) -> None:
    """``TUS_MAX_SIZE`` gives ``Tus-Max-Size`` and a 413 above it; the limit itself is fine."""
    app, _ = make_app(TUS_MAX_SIZE=100)
    client = app.test_client()
    assert client.options("/files/").headers["Tus-Max-Size"] == "100"
    too_big = client.post("/files/", headers={**TUS, "Upload-Length": "101"})
    assert too_big.status_code == 413
    assert client.post("/files/", headers={**TUS, "Upload-Length": "100"}).status_code == 201


def test_max_size_none_means_no_limit(make_app: Any) -> None:
    """``TUS_MAX_SIZE = None``: no ``Tus-Max-Size`` header and no size refusal."""
    app, _ = make_app(TUS_MAX_SIZE=None)
    client = app.test_client()
    assert "Tus-Max-Size" not in client.options("/files/").headers
    big = client.post("/files/", headers={**TUS, "Upload-Length": str(2**40)})
    assert big.status_code == 201


# ---------------------------------------------------------------------- TUS_EXPIRATION


def test_expiration_gives_upload_expires(make_app: Any) -> None:
    """``TUS_EXPIRATION`` (a timedelta) sets ``Upload-Expires`` = creation + expiration."""
    expiration = timedelta(hours=3)
    app, _ = make_app(TUS_EXPIRATION=expiration)
    client = app.test_client()
    assert "expiration" in client.options("/files/").headers["Tus-Extension"].split(",")
    response = client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert response.status_code == 201
    stored = record(app, upload_id_of(response.headers["Location"]))
    assert stored.expires_at == stored.created_at + expiration
    announced = parsedate_to_datetime(response.headers["Upload-Expires"])
    # An HTTP-date has whole seconds: the header is the expiry truncated to the second.
    assert timedelta(0) <= stored.expires_at - announced < timedelta(seconds=1)
    patched = client.patch(response.headers["Location"], data=b"abc", headers=patch_headers(0))
    assert patched.headers["Upload-Expires"] == response.headers["Upload-Expires"]


def test_expiration_none_disables_expiry(make_app: Any) -> None:
    """``TUS_EXPIRATION = None``: no ``Upload-Expires`` anywhere, no ``expiration`` extension."""
    app, _ = make_app(TUS_EXPIRATION=None)
    client = app.test_client()
    extensions = client.options("/files/").headers["Tus-Extension"].split(",")
    assert "expiration" not in extensions
    assert "creation" in extensions
    created = client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert "Upload-Expires" not in created.headers
    location = created.headers["Location"]
    assert "Upload-Expires" not in client.head(location, headers=TUS).headers
    assert (
        "Upload-Expires" not in client.patch(location, data=b"ab", headers=patch_headers(0)).headers
    )
    assert record(app, upload_id_of(location)).expires_at is None


@pytest.mark.parametrize("value", [3600, "1 day", 1.5])
def test_expiration_of_another_type_is_a_type_error(upload_dir: Path, value: Any) -> None:
    """A ``TUS_EXPIRATION`` that is neither a timedelta nor ``None`` raises ``TypeError``."""
    app = new_app(upload_dir, TUS_EXPIRATION=value)
    with pytest.raises(TypeError):
        FlaskTus(app)
    assert "tus" not in app.extensions


# ---------------------------------------------------------------------- TUS_CHUNK_SIZE


class RecordingStorage(LocalStorage):
    """Local storage that remembers the size of every piece handed to its writers."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, fsync=False)
        self.pieces: list[int] = []

    @asynccontextmanager
    async def open_writer(self, upload_id: str, offset: int) -> Any:
        async with super().open_writer(upload_id, offset) as writer:
            yield _Recorder(writer, self.pieces)


class _Recorder:
    def __init__(self, writer: LocalWriter, pieces: list[int]) -> None:
        self._writer = writer
        self._pieces = pieces

    async def write(self, data: bytes) -> None:
        self._pieces.append(len(data))
        await self._writer.write(data)

    async def flush(self) -> None:
        await self._writer.flush()

    async def discard(self) -> None:
        await self._writer.discard()


def test_chunk_size_bounds_body_pieces(upload_dir: Path) -> None:
    """``TUS_CHUNK_SIZE`` is the size of the pieces a PATCH body is read and stored in."""
    storage = RecordingStorage(upload_dir)
    app = new_app(upload_dir, TUS_CHUNK_SIZE=4)
    FlaskTus(app, storage=storage)
    client = app.test_client()
    location = create(client, length=10)
    response = client.patch(location, data=b"0123456789", headers=patch_headers(0))
    assert response.status_code == 204
    assert storage.pieces == [4, 4, 2]
    assert (upload_dir / upload_id_of(location)).read_bytes() == b"0123456789"


def test_chunk_size_reaches_settings_and_default_storage(make_app: Any) -> None:
    """``TUS_CHUNK_SIZE`` configures the handler and the default local storage."""
    app, _ = make_app(TUS_CHUNK_SIZE=12345)
    handler = app.extensions["tus"].handler
    assert handler.settings.chunk_size == 12345
    assert isinstance(handler.storage, LocalStorage)
    assert handler.storage.chunk_size == 12345


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param("sha1", ("sha1",), id="one-name"),
        pytest.param("sha1, md5", ("sha1", "md5"), id="comma-separated"),
        pytest.param(["sha256", "crc32"], ("sha256", "crc32"), id="list"),
        pytest.param(("md5",), ("md5",), id="tuple"),
        pytest.param(None, (), id="none"),
        pytest.param("", (), id="empty"),
    ],
)
def test_checksum_algorithms_setting_forms(
    make_app: Any, setting: Any, expected: tuple[str, ...]
) -> None:
    """``TUS_CHECKSUM_ALGORITHMS`` takes the forms ``TUS_CORS_ORIGINS`` takes; OPTIONS
    advertises exactly those algorithms, and none turns the checksum extension off."""
    app, _ = make_app(TUS_CHECKSUM_ALGORITHMS=setting)
    assert app.extensions["tus"].handler.settings.checksum_algorithms == expected
    options = app.test_client().options("/files/")
    assert options.headers.get("Tus-Checksum-Algorithm") == (",".join(expected) or None)
    assert ("checksum" in options.headers["Tus-Extension"].split(",")) == bool(expected)


@pytest.mark.parametrize(
    ("setting", "length", "status"),
    [
        pytest.param(None, 8192, 201, id="default-at-the-limit"),
        pytest.param(None, 8193, 431, id="default-past-the-limit"),
        pytest.param(16, 16, 201, id="set-at-the-limit"),
        pytest.param(16, 17, 431, id="set-past-the-limit"),
        pytest.param("none", 100_000, 201, id="no-limit"),
    ],
)
def test_max_metadata_size(
    make_app: Any, upload_dir: Path, setting: Any, length: int, status: int
) -> None:
    """``TUS_MAX_METADATA_SIZE`` (8192 by default, ``None`` for none) bounds the
    ``Upload-Metadata`` a creation may send; past it: 431 and nothing created."""
    config = (
        {} if setting is None else {"TUS_MAX_METADATA_SIZE": None if setting == "none" else setting}
    )
    client = make_app(**config)[0].test_client()
    quads = (length - 2) // 4  # a base64 value of 4 * quads characters, the key fills the rest
    value = "k" * (length - 1 - 4 * quads) + " " + "AAAA" * quads
    assert len(value) == length
    response = client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": value}
    )
    assert response.status_code == status, response.data
    if status == 201:
        head = client.head(response.headers["Location"], headers=TUS)
        assert head.headers["Upload-Metadata"] == value
    else:
        assert list(upload_dir.iterdir()) in ([], [upload_dir / ".tus-locks"])


def test_negative_max_metadata_size_is_refused(make_app: Any) -> None:
    """A negative ``TUS_MAX_METADATA_SIZE`` is a configuration error at ``init_app``."""
    with pytest.raises(ValueError, match="max_metadata_size"):
        make_app(TUS_MAX_METADATA_SIZE=-1)


def test_unknown_checksum_algorithm_is_refused_by_name(make_app: Any) -> None:
    """An algorithm the server cannot compute is refused at ``init_app``, by its name."""
    with pytest.raises(ValueError, match="sha3"):
        make_app(TUS_CHECKSUM_ALGORITHMS="sha1, sha3")


# ---------------------------------------------------------------------- model=..., db=...


def test_model_may_be_a_store_instance(tmp_path: Path, upload_dir: Path) -> None:
    """``FlaskTus(app, model=store)`` keeps records in that store, data in ``TUS_UPLOAD_DIR``."""
    records = tmp_path / "records"
    store = JsonFileStore(records)
    app = new_app(upload_dir)
    FlaskTus(app, model=store, db=None)
    assert app.extensions["tus"].handler.store is store
    client = app.test_client()
    location = create(client, length=3)
    client.patch(location, data=b"abc", headers=patch_headers(0))
    upload_id = upload_id_of(location)
    assert (records / f"{upload_id}.json").exists()
    assert not (upload_dir / f"{upload_id}.json").exists()
    assert (upload_dir / upload_id).read_bytes() == b"abc"
    assert asyncio.run(store.get(upload_id)).offset == 3


def test_model_may_be_a_class_with_from_flask(tmp_path: Path, upload_dir: Path) -> None:
    """The seed's ``FlaskTus(app, model=Model, db=db)``: ``Model.from_flask(app, db)`` builds
    the store and receives both the app and ``db``."""
    calls: list[tuple[Flask, object]] = []
    db = object()

    class Model:
        @classmethod
        def from_flask(cls, app: Flask, given_db: object) -> JsonFileStore:
            calls.append((app, given_db))
            return JsonFileStore(tmp_path / "model-records")

    app = new_app(upload_dir)
    FlaskTus(app, model=Model, db=db)
    assert calls == [(app, db)]
    upload_id = upload_id_of(create(app.test_client()))
    assert (tmp_path / "model-records" / f"{upload_id}.json").exists()


def test_model_and_db_may_be_given_to_init_app(tmp_path: Path, upload_dir: Path) -> None:
    """``init_app(app, model=..., db=...)`` works like the constructor's arguments."""
    received: list[object] = []

    class Model:
        @staticmethod
        def from_flask(app: Flask, db: object) -> JsonFileStore:
            received.append(db)
            return JsonFileStore(tmp_path / "late")

    tus = FlaskTus()
    app = new_app(upload_dir)
    tus.init_app(app, model=Model, db="the-db")
    assert received == ["the-db"]
    assert isinstance(app.extensions["tus"].handler.store, JsonFileStore)


@pytest.mark.parametrize("model", [object(), "mongo", 42])
def test_model_that_is_no_store_is_a_type_error(upload_dir: Path, model: object) -> None:
    """A ``model`` that is neither an ``UploadStore`` nor has ``from_flask`` is a ``TypeError``."""
    with pytest.raises(TypeError):
        FlaskTus(new_app(upload_dir), model=model)


def test_from_flask_returning_no_store_is_a_type_error(upload_dir: Path) -> None:
    """``from_flask`` must return an ``UploadStore``; anything else is a ``TypeError``."""

    class Model:
        @classmethod
        def from_flask(cls, app: Flask, db: object) -> object:
            return {"not": "a store"}

    with pytest.raises(TypeError):
        FlaskTus(new_app(upload_dir), model=Model)


def test_default_model_is_the_json_store(make_app: Any) -> None:
    """Without ``model`` the records go to the embedded JSON store."""
    app, _ = make_app()
    store = app.extensions["tus"].handler.store
    assert isinstance(store, JsonFileStore)
    assert isinstance(store, UploadStore)


@pytest.mark.parametrize(
    ("records", "fsync", "syncs"),
    [
        ("beside", True, False),  # the JSON store's directory sync covers the data's name
        ("beside", False, True),  # a JSON store that does not sync
        ("elsewhere", True, True),  # records in another directory
        ("other-store", True, True),  # a store that syncs no directory
    ],
)
def test_data_file_names_are_synced_unless_the_records_beside_them_are(
    tmp_path: Path, upload_dir: Path, records: str, fsync: bool, syncs: bool
) -> None:
    """With ``TUS_FSYNC``, a new data file's name is made durable before the creation is
    answered: by the JSON store syncing the directory for the record beside it, else by the
    storage syncing it itself."""
    app = new_app(upload_dir)
    store: Any = None
    if records == "beside":
        store = JsonFileStore(upload_dir, fsync=fsync)
    elif records == "elsewhere":
        store = JsonFileStore(tmp_path / "records")
    else:
        store = PlainStore(JsonFileStore(tmp_path / "records"))
    FlaskTus(app, model=store)
    storage = app.extensions["tus"].handler.storage
    assert isinstance(storage, LocalStorage)
    assert storage.fsync
    assert storage.sync_created is syncs


class PlainStore:
    """An ``UploadStore`` that is not a ``JsonFileStore``: every call goes to ``inner``."""

    def __init__(self, inner: JsonFileStore) -> None:
        self.create, self.get, self.commit = inner.create, inner.get, inner.commit
        self.delete, self.iter_uploads = inner.delete, inner.iter_uploads


# ---------------------------------------------------------------------- md5


def _upload(client: FlaskClient, data: bytes, piece: int) -> str:
    """Create an upload and send ``data`` in PATCHes of ``piece`` bytes; return its id."""
    location = create(client, length=len(data))
    for start in range(0, len(data), piece):
        response = client.patch(
            location,
            data=data[start : start + piece],
            headers={**TUS, "Upload-Offset": str(start), "Content-Type": OCTET},
        )
        assert response.status_code == 204
    return upload_id_of(location)


async def test_md5_of_a_multi_chunk_upload(make_app: Any, upload_dir: Path) -> None:
    """``await tus.md5(upload)`` is the hex MD5 of all the bytes, read in small chunks, and it
    is stored on the record."""
    app, tus = make_app(TUS_CHUNK_SIZE=7)
    data = os.urandom(1000)
    upload_id = await asyncio.to_thread(_upload, app.test_client(), data, 300)
    upload = await tus.get_upload(upload_id)
    assert upload.is_complete and upload.md5 is None

    digest = await tus.md5(upload)
    assert digest == hashlib.md5(data).hexdigest()
    assert (await tus.get_upload(upload_id)).md5 == digest
    last_line = (upload_dir / f"{upload_id}.json").read_text().splitlines()[-1]
    assert json.loads(last_line)["md5"] == digest
    assert await tus.md5(upload_id) == digest


async def test_md5_of_an_unfinished_upload_is_not_kept(make_app: Any) -> None:
    """``tus.md5`` before the last chunk covers the bytes so far and is not saved, so the
    digest after completion is the digest of the whole upload."""
    app, tus = make_app(TUS_CHUNK_SIZE=3)
    client = app.test_client()
    location = await asyncio.to_thread(create, client, 8)
    upload_id = upload_id_of(location)
    first = await asyncio.to_thread(client.patch, location, data=b"abcd", headers=patch_headers(0))
    assert first.status_code == 204
    assert await tus.md5(upload_id) == hashlib.md5(b"abcd").hexdigest()
    assert (await tus.get_upload(upload_id)).md5 is None
    last = await asyncio.to_thread(client.patch, location, data=b"efgh", headers=patch_headers(4))
    assert last.status_code == 204
    assert await tus.md5(upload_id) == hashlib.md5(b"abcdefgh").hexdigest()
    assert (await tus.get_upload(upload_id)).md5 == hashlib.md5(b"abcdefgh").hexdigest()


async def test_md5_of_an_unknown_upload_is_not_found(make_app: Any) -> None:
    """``tus.md5`` of an unknown id raises ``UploadNotFound``."""
    from flask_tus.core.errors import UploadNotFound

    _, tus = make_app()
    with pytest.raises(UploadNotFound):
        await tus.md5("0" * 32)


# ---------------------------------------------------------------------- under a WSGI server


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_wsgi_body_reads_stop_at_content_length(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    """Under WSGI a body with ``Content-Length`` is read in pieces of at most the chunk size
    and never once more after its last byte (each read is a thread hop); a chunked body, whose
    end only a read can tell, is read until the stream runs dry. Either way every byte lands."""
    app, _ = make_app(TUS_CHUNK_SIZE=4)
    sizes: list[int] = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        result = await real_to_thread(func, *args, **kwargs)
        if getattr(func, "__name__", "") == "read":
            sizes.append(len(result))
        return result

    monkeypatch.setattr(flask_tus.blueprint.asyncio, "to_thread", counting_to_thread)
    client = app.test_client()
    location = create(client, length=10)
    if chunked:
        # No Content-Length: the server only learns the body's size by reading it.
        response = client.patch(
            location,
            headers=patch_headers(0, **{"Transfer-Encoding": "chunked"}),
            environ_overrides={
                "wsgi.input": io.BytesIO(b"abcdefghij"),
                "wsgi.input_terminated": True,
            },
        )
    else:
        response = client.patch(location, data=b"abcdefghij", headers=patch_headers(0))
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "10"
    assert sizes == ([4, 4, 2, 0] if chunked else [4, 4, 2])
    upload_id = location.rsplit("/", 1)[1]
    assert (Path(app.config["TUS_UPLOAD_DIR"]) / upload_id).read_bytes() == b"abcdefghij"


def test_wsgi_requests_start_no_threads(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under WSGI the tus view runs on a loop in the server's thread, its blocking work on one
    shared pool, so requests reuse threads (asgiref's ``async_to_sync`` started a loop thread
    and a pool of its own for every request); hooks still see the app and the request."""
    app, tus = make_app()
    seen: list[tuple[str, str]] = []

    @tus.hooks.post_save
    def remember() -> None:
        seen.append((current_app.name, request.method))

    client = app.test_client()

    def upload() -> None:
        location = create(client, length=3)
        assert client.patch(location, data=b"abc", headers=patch_headers(0)).status_code == 204
        assert client.head(location, headers=TUS).headers["Upload-Offset"] == "3"

    for _ in range(3):
        upload()
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for _ in range(20):
        upload()
    # 60 requests, each with several hops to a worker thread; a pool thread may still start
    # when a submit finds every idle thread just finishing, never one per request.
    assert len(started) <= 5, started
    assert seen == [(app.name, "PATCH")] * 23
