"""Callbacks: the seed's six hooks by subclass, by decorator, sync and async, with their events."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import OCTET, TUS, create, metadata, patch_headers, stored_files
from flask import Flask
from flask.testing import FlaskClient

from flask_tus import FlaskTus, HookEvent, HookRejected, RequestInfo, TusError, Upload

HOOKS = ("on_create", "pre_save", "post_save", "on_complete", "pre_delete", "post_delete")


def upload_id_of(location: str) -> str:
    return location.rsplit("/", 1)[-1]


def full_cycle(client: FlaskClient) -> str:
    """Create a 6-byte upload, send it in two PATCHes, then delete it; return its id."""
    location = create(client, length=6, **{"Upload-Metadata": metadata(filename="a.txt")})
    assert client.patch(location, data=b"abc", headers=patch_headers(0)).status_code == 204
    assert client.patch(location, data=b"def", headers=patch_headers(3)).status_code == 204
    assert client.delete(location, headers=TUS).status_code == 204
    return upload_id_of(location)


#: What one full cycle fires, in order.
CYCLE = [
    "on_create",
    "pre_save",
    "post_save",
    "pre_save",
    "post_save",
    "on_complete",
    "pre_delete",
    "post_delete",
]


# ---------------------------------------------------------------------- (a) subclass overrides


def test_subclass_overrides_of_all_six_hooks(make_app: Any) -> None:
    """Each of the six callbacks, overridden in a subclass, is called at its moment."""
    seen: list[tuple[str, int]] = []

    class Extended(FlaskTus):
        def on_create(self, event: HookEvent) -> None:
            seen.append(("on_create", event.upload.offset))

        def pre_save(self, event: HookEvent) -> None:
            seen.append(("pre_save", event.upload.offset))

        def post_save(self, event: HookEvent) -> None:
            seen.append(("post_save", event.upload.offset))

        def on_complete(self, event: HookEvent) -> None:
            seen.append(("on_complete", event.upload.offset))

        def pre_delete(self, event: HookEvent) -> None:
            seen.append(("pre_delete", event.upload.offset))

        def post_delete(self, event: HookEvent) -> None:
            seen.append(("post_delete", event.upload.offset))

    app, _ = make_app(extension=Extended)
    full_cycle(app.test_client())
    assert seen == [
        ("on_create", 0),
        ("pre_save", 0),
        ("post_save", 3),
        ("pre_save", 3),
        ("post_save", 6),
        ("on_complete", 6),
        ("pre_delete", 6),
        ("post_delete", 6),
    ]


def test_seed_subclass_shape_without_event(
    make_app: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's exact ``def on_complete(self): print('Succesful upload')`` still works."""

    class FlaskTusExtended(FlaskTus):
        def on_complete(self):  # type: ignore[no-untyped-def,override]
            print("Succesful upload")

    app, _ = make_app(extension=FlaskTusExtended)
    client = app.test_client()
    location = create(client, length=4)
    client.patch(location, data=b"ab", headers=patch_headers(0))
    assert capsys.readouterr().out == ""
    client.patch(location, data=b"cd", headers=patch_headers(2))
    assert capsys.readouterr().out == "Succesful upload\n"


@pytest.mark.parametrize("name", HOOKS)
def test_seed_shape_without_event_for_every_hook(make_app: Any, name: str) -> None:
    """Every hook may be overridden with no argument besides ``self`` (the seed's shape)."""
    calls: list[str] = []

    def callback(self: FlaskTus) -> None:
        calls.append(name)

    extended = type("Extended", (FlaskTus,), {name: callback})
    app, _ = make_app(extension=extended)
    full_cycle(app.test_client())
    assert calls == [n for n in CYCLE if n == name]


def test_async_subclass_overrides_take_the_event(make_app: Any) -> None:
    """``async def`` overrides taking the event are awaited."""
    seen: list[tuple[str, str]] = []

    class Extended(FlaskTus):
        async def on_create(self, event: HookEvent) -> None:  # type: ignore[override]
            seen.append((event.name, event.upload.id))

        async def pre_save(self, event: HookEvent) -> None:  # type: ignore[override]
            seen.append((event.name, event.upload.id))

        async def post_save(self, event: HookEvent) -> None:  # type: ignore[override]
            seen.append((event.name, event.upload.id))

        async def on_complete(self, event: HookEvent) -> None:  # type: ignore[override]
            seen.append((event.name, event.upload.id))

        async def pre_delete(self, event: HookEvent) -> None:  # type: ignore[override]
            seen.append((event.name, event.upload.id))

        async def post_delete(self, event: HookEvent) -> None:  # type: ignore[override]
            seen.append((event.name, event.upload.id))

    app, _ = make_app(extension=Extended)
    upload_id = full_cycle(app.test_client())
    assert seen == [(name, upload_id) for name in CYCLE]


# ---------------------------------------------------------------------- (c) decorators


def test_decorators_register_sync_and_async_functions(make_app: Any) -> None:
    """``@tus.hooks.<name>`` and ``tus.hook("<name>")`` register ``def`` and ``async def``."""
    app, tus = make_app()
    seen: list[str] = []

    for name in HOOKS:

        def sync_hook(event: HookEvent, _name: str = name) -> None:
            seen.append(f"hooks.{_name}:{event.name}")

        async def async_hook(event: HookEvent, _name: str = name) -> None:
            seen.append(f"hook():{_name}:{event.name}")

        getattr(tus.hooks, name)(sync_hook)
        tus.hook(name)(async_hook)

    full_cycle(app.test_client())
    expected = []
    for name in CYCLE:
        expected += [f"hooks.{name}:{name}", f"hook():{name}:{name}"]
    assert seen == expected


def test_decorator_syntax(make_app: Any) -> None:
    """The decorator forms return the function unchanged and take no-argument functions too."""
    app, tus = make_app()
    calls: list[str] = []

    @tus.hooks.on_complete
    def completed() -> None:
        calls.append("sync")

    @tus.hooks.on_complete
    async def completed_async(event: HookEvent) -> None:
        calls.append("async")

    @tus.hook("pre_save")
    async def saving() -> None:
        calls.append("pre_save")

    @tus.hook("pre_save")
    def saving_sync(event: HookEvent) -> None:
        calls.append("pre_save sync")

    assert callable(completed) and callable(completed_async) and callable(saving)
    assert saving_sync.__name__ == "saving_sync"
    client = app.test_client()
    location = create(client, length=2)
    client.patch(location, data=b"xy", headers=patch_headers(0))
    assert calls == ["pre_save", "pre_save sync", "sync", "async"]


def test_subclass_override_runs_before_decorated_functions(make_app: Any) -> None:
    """Overrides run first, then decorated functions in registration order."""
    calls: list[str] = []

    class Extended(FlaskTus):
        def on_create(self, event: HookEvent) -> None:
            calls.append("override")

    app, tus = make_app(extension=Extended)
    tus.hook("on_create")(lambda event: calls.append("decorated"))
    create(app.test_client())
    assert calls == ["override", "decorated"]


def test_unknown_hook_name_is_refused(make_app: Any) -> None:
    """``tus.hook`` with a name that is not one of the six raises ``ValueError``."""
    _, tus = make_app()
    with pytest.raises(ValueError):
        tus.hook("on_finish")(lambda event: None)


# ---------------------------------------------------------------------- event contents


def test_events_carry_the_record_and_the_request(make_app: Any) -> None:
    """Events carry the upload record (id, offset, decoded metadata) and a copy of the
    request's method, path and headers."""
    app, tus = make_app()
    events: list[HookEvent] = []
    for name in HOOKS:
        tus.hook(name)(events.append)

    client = app.test_client()
    location = create(
        client,
        length=4,
        **{"Upload-Metadata": metadata(filename="résumé.pdf", empty=None)},
    )
    upload_id = upload_id_of(location)
    client.patch(location, data=b"abcd", headers=patch_headers(0, **{"X-Custom": "yes"}))
    client.delete(location, headers=TUS)

    by_name = {event.name: event for event in events}
    assert set(by_name) == set(HOOKS)
    for event in events:
        assert isinstance(event.upload, Upload)
        assert isinstance(event.request, RequestInfo)
        assert event.upload.id == upload_id
        assert event.upload.length == 4
        assert event.upload.metadata == {"filename": "résumé.pdf", "empty": None}

    created = by_name["on_create"]
    assert created.upload.offset == 0
    assert created.request.method == "POST"
    assert created.request.path == "/files/"
    assert created.request.headers["upload-length"] == "4"

    saving, saved, complete = by_name["pre_save"], by_name["post_save"], by_name["on_complete"]
    assert saving.upload.offset == 0
    assert saved.upload.offset == 4
    assert complete.upload.offset == 4 and complete.upload.is_complete
    for event in (saving, saved, complete):
        assert event.request.method == "PATCH"
        assert event.request.path == f"/files/{upload_id}"
        assert event.request.headers["upload-offset"] == "0"
        assert event.request.headers["x-custom"] == "yes"

    for name in ("pre_delete", "post_delete"):
        assert by_name[name].request.method == "DELETE"
        assert by_name[name].request.path == f"/files/{upload_id}"


def test_event_headers_are_a_private_copy(make_app: Any) -> None:
    """A hook that changes its event's headers does not change the request being served."""
    app, tus = make_app()
    body = b"abc"
    good = "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"xyz").digest()).decode()

    def meddle(event: HookEvent) -> None:
        headers = event.request.headers
        assert isinstance(headers, dict)
        headers["upload-checksum"] = wrong  # type: ignore[index]

    tus.hook("on_create")(meddle)
    # creation-with-upload reads Upload-Checksum after on_create has run.
    response = app.test_client().post(
        "/files/",
        data=body,
        headers={
            **TUS,
            "Upload-Length": "3",
            "Content-Type": OCTET,
            "Upload-Checksum": good,
        },
    )
    assert response.status_code == 201, response.data
    assert response.headers["Upload-Offset"] == "3"


# ---------------------------------------------------------------------- pre-hooks reject


@pytest.mark.parametrize("status", [403, 422])
def test_on_create_rejection(make_app: Any, upload_dir: Path, status: int) -> None:
    """``on_create`` raising ``HookRejected`` answers its status and message; nothing is made."""
    app, tus = make_app()

    @tus.hooks.on_create
    def refuse(event: HookEvent) -> None:
        raise HookRejected("no such files here", status=status)

    before = stored_files(upload_dir)
    response = app.test_client().post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert response.status_code == status
    assert b"no such files here" in response.data
    assert "Location" not in response.headers
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert stored_files(upload_dir) == before


@pytest.mark.parametrize("status", [403, 422])
def test_pre_save_rejection(make_app: Any, upload_dir: Path, status: int) -> None:
    """``pre_save`` raising ``HookRejected``: its status and message; nothing is written."""
    app, tus = make_app()

    @tus.hook("pre_save")
    async def refuse(event: HookEvent) -> None:
        raise HookRejected("quota exceeded", status=status)

    client = app.test_client()
    location = create(client, length=5)
    before = stored_files(upload_dir)
    response = client.patch(location, data=b"hello", headers=patch_headers(0))
    assert response.status_code == status
    assert b"quota exceeded" in response.data
    assert stored_files(upload_dir) == before
    head = client.head(location, headers=TUS)
    assert head.headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("status", [403, 422])
def test_pre_delete_rejection(make_app: Any, upload_dir: Path, status: int) -> None:
    """``pre_delete`` raising ``HookRejected``: its status and message; nothing is deleted."""

    class Extended(FlaskTus):
        def pre_delete(self, event: HookEvent) -> None:
            raise HookRejected("keep it", status=status)

    app, _ = make_app(extension=Extended)
    client = app.test_client()
    location = create(client, length=3)
    client.patch(location, data=b"abc", headers=patch_headers(0))
    before = stored_files(upload_dir)
    response = client.delete(location, headers=TUS)
    assert response.status_code == status
    assert b"keep it" in response.data
    assert stored_files(upload_dir) == before
    assert client.head(location, headers=TUS).status_code == 200


def test_rejection_defaults_to_403(make_app: Any) -> None:
    """``HookRejected`` without a status is a 403."""
    app, tus = make_app()

    @tus.hooks.on_create
    def refuse() -> None:
        raise HookRejected("nope")

    response = app.test_client().post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert response.status_code == 403
    assert b"nope" in response.data


def test_unexpected_pre_hook_error_is_a_500(
    make_app: Any, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pre-hook failing with a non-tus error gives a 500 without internals; nothing is made."""
    app, tus = make_app()

    @tus.hooks.on_create
    def broken(event: HookEvent) -> None:
        raise RuntimeError("secret internals")

    before = stored_files(upload_dir)
    with caplog.at_level(logging.ERROR, logger="flask_tus"):
        response = app.test_client().post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert response.status_code == 500
    assert b"secret internals" not in response.data
    assert stored_files(upload_dir) == before
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize("status", [200, 302, 399, 500, 503, 600])
def test_hook_rejected_needs_a_4xx_status(status: int) -> None:
    """``HookRejected`` with a status outside 400-499 is a ``ValueError``."""
    with pytest.raises(ValueError):
        HookRejected("bad", status=status)


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422, 499])
def test_hook_rejected_keeps_a_4xx_status(status: int) -> None:
    """``HookRejected`` keeps any 4xx status and its message."""
    error = HookRejected("why", status=status)
    assert error.status == status
    assert error.message == "why"


# ---------------------------------------------------------------------- on_complete once


def test_on_complete_fires_once_when_last_patch_is_repeated(make_app: Any) -> None:
    """Repeating the last PATCH (a retry) never fires ``on_complete`` a second time."""
    app, tus = make_app()
    completed: list[int] = []
    tus.hook("on_complete")(lambda event: completed.append(event.upload.offset))
    client = app.test_client()
    location = create(client, length=6)
    client.patch(location, data=b"abc", headers=patch_headers(0))
    last = client.patch(location, data=b"def", headers=patch_headers(3))
    assert last.status_code == 204
    assert completed == [6]

    retried = client.patch(location, data=b"def", headers=patch_headers(3))
    assert retried.status_code == 409
    empty = client.patch(location, data=b"", headers=patch_headers(6))
    assert empty.status_code == 204
    assert empty.headers["Upload-Offset"] == "6"
    again = client.patch(location, data=b"def", headers=patch_headers(6))
    assert again.status_code == 413
    assert completed == [6]


def test_on_complete_fires_once_for_an_empty_upload(make_app: Any) -> None:
    """An ``Upload-Length: 0`` upload completes at creation, once."""
    app, tus = make_app()
    completed: list[str] = []
    tus.hook("on_complete")(lambda event: completed.append(event.upload.id))
    client = app.test_client()
    location = create(client, length=0)
    client.head(location, headers=TUS)
    client.patch(location, data=b"", headers=patch_headers(0))
    assert completed == [upload_id_of(location)]


# ---------------------------------------------------------------------- failing post-hooks


def _fail(event: HookEvent) -> None:
    raise RuntimeError(f"{event.name} broke")


def test_failing_post_save_is_logged(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A ``post_save`` raising is logged; the PATCH still answers 204 with its offset."""
    app, tus = make_app()
    tus.hook("post_save")(_fail)
    client = app.test_client()
    location = create(client, length=6)
    with caplog.at_level(logging.ERROR, logger="flask_tus"):
        response = client.patch(location, data=b"abc", headers=patch_headers(0))
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"
    assert client.head(location, headers=TUS).headers["Upload-Offset"] == "3"
    assert _logged(caplog, "post_save broke")


async def _async_fail(event: HookEvent) -> None:
    raise RuntimeError(f"{event.name} broke")


def test_failing_on_complete_is_logged(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An ``on_complete`` raising (async) is logged; the last PATCH still answers 204."""
    app, tus = make_app()
    tus.hook("on_complete")(_async_fail)
    later: list[str] = []
    tus.hook("on_complete")(lambda event: later.append(event.name))
    client = app.test_client()
    location = create(client, length=3)
    with caplog.at_level(logging.ERROR, logger="flask_tus"):
        response = client.patch(location, data=b"abc", headers=patch_headers(0))
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "3"
    assert client.get(location).data == b"abc"
    assert _logged(caplog, "on_complete broke")
    assert later == ["on_complete"]


def test_failing_post_delete_is_logged(
    make_app: Any, upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ``post_delete`` raising is logged; the DELETE still answers 204 and the upload is gone."""

    class Extended(FlaskTus):
        def post_delete(self, event: HookEvent) -> None:
            raise RuntimeError("post_delete broke")

    app, _ = make_app(extension=Extended)
    client = app.test_client()
    location = create(client, length=3)
    with caplog.at_level(logging.ERROR, logger="flask_tus"):
        response = client.delete(location, headers=TUS)
    assert response.status_code == 204
    assert client.head(location, headers=TUS).status_code in (404, 410)
    assert upload_id_of(location) not in {p.name.split(".")[0] for p in upload_dir.iterdir()}
    assert _logged(caplog, "post_delete broke")


def _logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    """Whether an error with the exception ``message`` was logged by flask_tus."""
    return any(
        r.name == "flask_tus"
        and r.levelno >= logging.ERROR
        and r.exc_info is not None
        and str(r.exc_info[1]) == message
        for r in caplog.records
    )


def test_hook_sees_the_app_it_runs_for(make_app: Any, tmp_path: Path) -> None:
    """A hook runs inside the request, so ``flask.current_app`` is the app it serves."""
    from flask import current_app

    app, tus = make_app()
    apps: list[Flask] = []
    tus.hook("on_create")(lambda event: apps.append(current_app._get_current_object()))
    create(app.test_client())
    assert apps == [app]


def test_seed_override_calling_super_without_the_event(make_app: Any) -> None:
    """The seed's base callbacks took no argument, so its overrides call ``super()`` without
    one: every base callback takes the event as optional."""
    seen: list[str] = []

    class Extended(FlaskTus):
        def on_create(self) -> None:  # type: ignore[override]
            super().on_create()
            seen.append("on_create")

        def on_complete(self) -> None:  # type: ignore[override]
            super().on_complete()
            seen.append("on_complete")

    app, _ = make_app(extension=Extended)
    client = app.test_client()
    location = create(client, length=2)
    assert client.patch(location, data=b"ok", headers=patch_headers(0)).status_code == 204
    assert seen == ["on_create", "on_complete"]


def test_event_headers_are_read_in_any_case(make_app: Any) -> None:
    """``event.request.headers`` answers ``Authorization`` as well as ``authorization``."""
    app, tus = make_app()
    seen: list[Any] = []

    @tus.hooks.on_create
    def look(event: HookEvent) -> None:
        headers = event.request.headers
        seen.extend([headers["Authorization"], headers.get("AUTHORIZATION"), "X-Nope" in headers])

    headers = {**TUS, "Upload-Length": "1", "Authorization": "Bearer t"}
    assert app.test_client().post("/files/", headers=headers).status_code == 201
    assert seen == ["Bearer t", "Bearer t", False]


@pytest.mark.parametrize("status", [200, 302, 500])
def test_pre_hook_tus_error_that_is_no_refusal_is_a_500(
    make_app: Any, upload_dir: Path, status: int
) -> None:
    """A pre-hook raising a tus error whose status is not 4xx does not answer with it (no
    redirect or success of a hook's choosing): 500, and nothing is created."""
    app, tus = make_app()

    class Odd(TusError):
        pass

    @tus.hooks.on_create
    def odd(event: HookEvent) -> None:
        error = Odd("elsewhere", headers={"Location": "https://evil.example/"})
        error.status = status
        raise error

    before = stored_files(upload_dir)
    response = app.test_client().post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert response.status_code == 500
    assert "evil" not in response.headers.get("Location", "")
    assert stored_files(upload_dir) == before


def test_creation_whose_pre_save_fails_leaves_nothing(make_app: Any, upload_dir: Path) -> None:
    """A creation-with-upload whose ``pre_save`` fails with an unexpected error answers 500
    and leaves no data or record behind (no client could ever resume it)."""
    app, tus = make_app()

    @tus.hooks.pre_save
    def broken(event: HookEvent) -> None:
        raise RuntimeError("boom")

    before = stored_files(upload_dir)
    headers = {**TUS, "Upload-Length": "3", "Content-Type": OCTET}
    response = app.test_client().post("/files/", data=b"abc", headers=headers)
    assert response.status_code == 500
    assert stored_files(upload_dir) == before


async def test_blocking_plain_hook_does_not_hold_the_event_loop(upload_dir: Path) -> None:
    """A plain ``def`` hook runs in a worker thread: while one blocks, the ASGI app goes on
    serving other requests on its event loop (here: the request that unblocks the hook)."""
    app = Flask(__name__)
    app.config["TUS_UPLOAD_DIR"] = str(upload_dir)
    tus = FlaskTus(app)
    release = threading.Event()

    @tus.hooks.on_create
    def slow(event: HookEvent) -> None:
        assert release.wait(10), "the event loop was held"

    transport = httpx.ASGITransport(app=tus.asgi_app(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        creating = asyncio.create_task(
            client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        )
        options = await asyncio.wait_for(client.options("/files/"), 5)
        assert options.status_code == 204
        release.set()
        assert (await asyncio.wait_for(creating, 10)).status_code == 201
