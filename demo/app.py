"""The flask-tus demo: an upload page at ``/`` and a tus endpoint at ``/files/``.

Run it with ``make demo`` (hypercorn on 127.0.0.1:5000), ``flask --app demo.app run --port
PORT`` or ``hypercorn demo.app:asgi_app --bind 127.0.0.1:PORT``. Files land in
``demo/uploads/`` unless ``TUS_UPLOAD_DIR`` is set in the environment. Upload records are JSON
files beside them, or rows in the SQL database ``TUS_DATABASE_URL`` names when that is set,
or documents in the MongoDB ``TUS_MONGODB_URI`` names when that is set.

It has no users: anyone who reaches it can list, download and delete every upload. Keep it on
127.0.0.1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask, jsonify, render_template, url_for
from flask.typing import ResponseReturnValue

from flask_tus import FlaskTus, HookEvent

HERE = Path(__file__).resolve().parent

app = Flask(__name__)
app.config["TUS_UPLOAD_DIR"] = os.environ.get("TUS_UPLOAD_DIR") or str(HERE / "uploads")
app.config["TUS_UPLOAD_URL"] = "/files/"

# The metadata store: JSON records beside the files, unless a database is named.
model: object = None
if os.environ.get("TUS_DATABASE_URL"):
    from flask_tus.async_models.sql import SQLAlchemyModel

    app.config["TUS_DATABASE_URL"] = os.environ["TUS_DATABASE_URL"]
    model = SQLAlchemyModel
elif os.environ.get("TUS_MONGODB_URI"):
    from flask_tus.async_models.mongo import MongoModel

    app.config["TUS_MONGODB_URI"] = os.environ["TUS_MONGODB_URI"]
    app.config["TUS_MONGODB_DATABASE"] = os.environ.get("TUS_MONGODB_DATABASE")
    model = MongoModel

tus = FlaskTus(app, model=model)
log = logging.getLogger("demo")


@tus.hooks.on_complete
def announce(event: HookEvent) -> None:
    """Log every finished upload. (``await tus.md5(event.upload)`` would add its MD5, but it
    reads the whole file before the last PATCH is answered: run it in a task queue instead.)"""
    upload = event.upload
    log.warning("upload %s finished: %s, %s bytes", upload.id, upload.metadata, upload.length)


@app.get("/")
def index() -> ResponseReturnValue:
    return render_template("index.html", endpoint=url_for("tus.collection"))


@app.get("/uploads.json")
async def uploads() -> ResponseReturnValue:
    """Finished uploads, newest first, for the page's list."""
    handler = tus.state().handler
    items = [u async for u in handler.store.iter_uploads() if u.is_complete]
    items.sort(key=lambda u: u.completed_at or u.created_at, reverse=True)
    collection = url_for("tus.collection")
    return jsonify(
        [
            {
                "id": u.id,
                "url": collection + u.id,
                "filename": u.metadata.get("filename") or u.id,
                "size": u.length,
            }
            for u in items
        ]
    )


#: The same app for ASGI servers, with tus bodies streamed natively:
#: ``hypercorn demo.app:asgi_app --bind 127.0.0.1:5000``.
asgi_app = tus.asgi_app(app)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000)
