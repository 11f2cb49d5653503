"""The original flask-tus's documented usage: ``flask_tus.models`` and its SQLAlchemy example.

``flask_tus.models`` re-exports the stores lazily: importing it loads no database driver, and a
missing driver names the extra to install.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import TUS, patch_headers
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

import flask_tus.models
from flask_tus import FlaskTus
from flask_tus.async_models.mongo import MongoModel
from flask_tus.async_models.sql import DEFAULT_TABLE, SQLAlchemyModel

ROOT = Path(__file__).resolve().parent.parent


def python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (nothing imported yet) from the project root."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def closing() -> Iterator[list[SQLAlchemyModel]]:
    """Stores to close after the test (each owns an event-loop thread and a connection)."""
    made: list[SQLAlchemyModel] = []
    yield made
    with ThreadPoolExecutor(1) as pool:
        for store in made:
            pool.submit(asyncio.run, store.close()).result()


def test_seed_sqlalchemy_example(tmp_path: Path, closing: list[SQLAlchemyModel]) -> None:
    """The original README's example, as written (with the Flask-SQLAlchemy import spelled
    right): create, PATCH and HEAD an upload through the test client."""
    from flask_sqlalchemy import SQLAlchemy

    from flask_tus import FlaskTus
    from flask_tus.models import SQLAlchemyModel

    app = Flask(__name__)

    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///:memory:"
    app.config["TUS_UPLOAD_DIR"] = str(tmp_path / "uploads")
    db = SQLAlchemy(app)

    flask_tus = FlaskTus(app, model=SQLAlchemyModel, db=db)

    store = app.extensions["tus"].handler.store
    assert isinstance(store, SQLAlchemyModel)
    closing.append(store)
    assert flask_tus.state(app).handler.store is store
    assert store.table is db.metadata.tables[DEFAULT_TABLE]

    client = app.test_client()
    created = client.post("/files/", headers={**TUS, "Upload-Length": "9"})
    assert created.status_code == 201, created.data
    location = created.headers["Location"]
    patched = client.patch(location, data=b"seed data", headers=patch_headers(0))
    assert patched.status_code == 204, patched.data
    assert patched.headers["Upload-Offset"] == "9"
    head = client.head(location, headers=TUS)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "9"
    upload_id = location.rsplit("/", 1)[-1]
    assert (tmp_path / "uploads" / upload_id).read_bytes() == b"seed data"


def test_in_memory_sqlite_is_a_database_of_the_store(
    tmp_path: Path, closing: list[SQLAlchemyModel]
) -> None:
    """With ``sqlite:///:memory:`` the store opens a private in-memory database: the records
    are not in the one Flask-SQLAlchemy's session sees."""
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite:///:memory:",
        TUS_UPLOAD_DIR=str(tmp_path / "uploads"),
        TUS_FSYNC=False,
    )
    db = SQLAlchemy(app)
    FlaskTus(app, model=flask_tus.models.SQLAlchemyModel, db=db)
    closing.append(app.extensions["tus"].handler.store)

    client = app.test_client()
    created = client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert created.status_code == 201, created.data
    assert client.head(created.headers["Location"], headers=TUS).status_code == 200

    with app.app_context():
        db.create_all()
        table = db.metadata.tables[DEFAULT_TABLE]
        assert db.session.execute(sa.select(table)).all() == []


def test_names_are_the_stores() -> None:
    """``flask_tus.models`` gives the very classes of ``flask_tus.async_models``."""
    assert flask_tus.models.SQLAlchemyModel is SQLAlchemyModel
    assert flask_tus.models.MongoModel is MongoModel
    assert set(flask_tus.models.__all__) == {"SQLAlchemyModel", "MongoModel"}
    assert set(flask_tus.models.__all__) <= set(dir(flask_tus.models))


def test_import_loads_no_driver() -> None:
    """Importing ``flask_tus.models`` imports neither SQLAlchemy nor PyMongo; a name does,
    on first access."""
    result = python(
        """
        import sys
        import flask_tus.models
        drivers = ("sqlalchemy", "pymongo", "motor", "flask_tus.async_models.sql")
        print(sorted(name for name in drivers if name in sys.modules))
        from flask_tus.models import SQLAlchemyModel
        print("sqlalchemy" in sys.modules, "pymongo" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "True False"]


def test_unknown_name_is_an_attribute_error() -> None:
    """A name the module does not offer is an ``AttributeError`` (and ``from ... import``
    turns it into the usual ``ImportError``)."""
    with pytest.raises(AttributeError, match="has no attribute 'MongoengineModel'"):
        _ = flask_tus.models.MongoengineModel
    with pytest.raises(ImportError, match="cannot import name 'Nothing'"):
        from flask_tus.models import Nothing  # noqa: F401


@pytest.mark.parametrize(
    ("name", "driver", "extra"),
    [("SQLAlchemyModel", "sqlalchemy", "sql"), ("MongoModel", "pymongo", "mongodb")],
)
def test_missing_driver_names_the_extra(name: str, driver: str, extra: str) -> None:
    """Without the store's driver, importing its name is an ``ImportError`` that says which
    extra to install; importing the module itself still works."""
    result = python(
        f"""
        import sys
        sys.modules[{driver!r}] = None  # as if the driver were not installed
        import flask_tus.models
        try:
            from flask_tus.models import {name}
        except ImportError as exc:
            print(type(exc).__name__, exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ImportError ")
    assert f"pip install 'flask-tus-async[{extra}]'" in result.stdout
