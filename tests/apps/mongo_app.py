"""A tus app on MongoDB, for tests that run several server processes on one database.

Served as ``mongo_app:app`` (``flask run``, gunicorn), ``mongo_app:asgi_app`` (the native ASGI
app, under hypercorn) or ``mongo_app:wsgi_to_asgi`` (the Flask app through asgiref's
``WsgiToAsgi``, under hypercorn), with ``tests/apps`` on ``PYTHONPATH``. Reads from the environment:
``TUS_MONGODB_URI``, ``TUS_MONGODB_DATABASE``, ``TUS_UPLOAD_DIR`` and, optionally,
``TUS_HOST_LOCK_DIR``: a host-local lock directory of this process's own, so that processes on
one machine behave as if each ran on its own host (only the lease in MongoDB keeps one writer).
"""

from __future__ import annotations

import os

from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_tus import FlaskTus
from flask_tus.async_models.mongo import MongoModel
from flask_tus.core.lease import LeaseLocker
from flask_tus.storage.locks import FileLocker

app = Flask(__name__)
app.config["TUS_UPLOAD_DIR"] = os.environ["TUS_UPLOAD_DIR"]
app.config["TUS_MONGODB_URI"] = os.environ["TUS_MONGODB_URI"]
app.config["TUS_MONGODB_DATABASE"] = os.environ.get("TUS_MONGODB_DATABASE")
app.config["TUS_FSYNC"] = False

host_locks = os.environ.get("TUS_HOST_LOCK_DIR")
if host_locks:
    store = MongoModel.from_flask(app)
    timeout = 0.5
    locker = LeaseLocker(store, local=FileLocker(host_locks, timeout=timeout), timeout=timeout)
    tus = FlaskTus(app, model=store, locker=locker)
else:
    tus = FlaskTus(app, model=MongoModel)

asgi_app = tus.asgi_app(app)
wsgi_to_asgi = WsgiToAsgi(app)
