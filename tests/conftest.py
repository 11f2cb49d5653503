"""Shared fixtures: a Flask app with the extension, its test client, and the core handler."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_tus import FlaskTus
from flask_tus.async_models.json_store import JsonFileStore
from flask_tus.core import TusHandler, TusSettings
from flask_tus.storage.local import LocalStorage
from flask_tus.storage.locks import FileLocker

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


def metadata(**pairs: str | None) -> str:
    """Encode ``Upload-Metadata`` from keyword pairs (``None`` for a key without value)."""
    items = []
    for key, value in pairs.items():
        items.append(key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}")
    return ",".join(items)


def patch_headers(offset: int, **extra: str) -> dict[str, str]:
    return {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTET, **extra}


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    path = tmp_path / "uploads"
    path.mkdir()
    return path


@pytest.fixture
def make_app(upload_dir: Path) -> Iterator[Any]:
    """Factory: ``make_app(**config)`` returns ``(app, extension)``; config keys are ``TUS_*``."""

    def factory(extension: type[FlaskTus] = FlaskTus, **config: Any) -> tuple[Flask, FlaskTus]:
        app = Flask(__name__)
        app.config["TESTING"] = True
        app.config["TUS_UPLOAD_DIR"] = str(upload_dir)
        app.config.update(config)
        tus = extension(app)
        return app, tus

    yield factory


@pytest.fixture
def app(make_app: Any) -> Flask:
    flask_app: Flask = make_app()[0]
    return flask_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def create(client: FlaskClient, length: int | None = 10, **headers: str) -> str:
    """POST a new upload and return its Location."""
    sent = {**TUS, **headers}
    if length is not None:
        sent["Upload-Length"] = str(length)
    response = client.post("/files/", headers=sent)
    assert response.status_code == 201, response.data
    return response.headers["Location"]


@pytest.fixture
def handler(upload_dir: Path) -> TusHandler:
    """The core handler on the embedded default backends, no framework involved."""
    return TusHandler(
        store=JsonFileStore(upload_dir),
        storage=LocalStorage(upload_dir, fsync=False),
        locker=FileLocker(upload_dir),
        settings=TusSettings(),
    )


def stored_files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: compare before and after a bad request."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
