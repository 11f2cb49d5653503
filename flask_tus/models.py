"""The original flask-tus import path for metadata stores, kept so existing code runs unchanged.

``from flask_tus.models import SQLAlchemyModel`` gives
:class:`flask_tus.async_models.sql.SQLAlchemyModel` and ``from flask_tus.models import
MongoModel`` gives :class:`flask_tus.async_models.mongo.MongoModel`. Each name is imported on
first access, so importing this module needs neither SQLAlchemy nor PyMongo. When the driver of
a store is not installed, accessing its name raises ``ImportError`` naming the extra to install
(``flask-tus-async[sql]`` or ``flask-tus-async[mongodb]``); an unknown name raises
``AttributeError``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .async_models.mongo import MongoModel
    from .async_models.sql import SQLAlchemyModel

__all__ = ["MongoModel", "SQLAlchemyModel"]

#: Each name: the module defining it, the extra that installs its driver, and the top-level
#: packages of that driver (a missing one of these means the extra is not installed).
_LAZY: dict[str, tuple[str, str, frozenset[str]]] = {
    "MongoModel": ("flask_tus.async_models.mongo", "mongodb", frozenset({"pymongo", "bson"})),
    "SQLAlchemyModel": ("flask_tus.async_models.sql", "sql", frozenset({"sqlalchemy"})),
}


def __getattr__(name: str) -> Any:
    """Import ``name`` from its store module on first access (then it is a plain global).

    Raises ``ImportError`` naming the extra when the store's driver is missing, and
    ``AttributeError`` for a name this module does not offer.
    """
    try:
        module_name, extra, drivers = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in drivers:
            raise
        raise ImportError(
            f"flask_tus.models.{name} needs the {extra!r} extra: "
            f"pip install 'flask-tus-async[{extra}]' (missing module {exc.name!r})",
            name=exc.name,
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
