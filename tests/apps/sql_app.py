"""A tus server on the SQL store, for tests that run several server processes on one database.

Reads ``TUS_DATABASE_URL``, ``TUS_DATABASE_TABLE`` and ``TUS_UPLOAD_DIR`` from the environment.
Serve it with ``gunicorn sql_app:app`` from this directory.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_tus import FlaskTus
from flask_tus.async_models.sql import SQLAlchemyModel

app = Flask(__name__)
app.config.update(
    TUS_DATABASE_URL=os.environ["TUS_DATABASE_URL"],
    TUS_DATABASE_TABLE=os.environ["TUS_DATABASE_TABLE"],
    TUS_UPLOAD_DIR=os.environ["TUS_UPLOAD_DIR"],
    TUS_FSYNC=False,
    TUS_LOCK_TIMEOUT=2.0,
)
tus = FlaskTus(app, model=SQLAlchemyModel)
