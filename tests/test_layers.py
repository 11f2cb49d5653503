"""The layer rules of DESIGN.md, checked on the import statements of every flask_tus module.

``core`` imports only the stdlib and itself; metadata stores and storages import the stdlib, the
core and their own driver; no store imports another store; ``asgi.py`` reaches no Flask.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import flask_tus

PACKAGE = "flask_tus"
PACKAGE_DIR = Path(flask_tus.__file__).resolve().parent

#: Third-party packages the protocol core must never reach (named in the error messages; the
#: rule itself admits only the stdlib and ``flask_tus.core``).
FRAMEWORKS = frozenset({"flask", "werkzeug", "quart", "starlette", "asgiref", "hypercorn"})
#: The drivers ``flask_tus/storage/*`` may use.
STORAGE_DRIVERS = frozenset({"aiofiles"})


@dataclass(frozen=True)
class Import:
    """One imported module, resolved to its absolute dotted name."""

    module: str
    line: int

    @property
    def top(self) -> str:
        return self.module.split(".", 1)[0]


@dataclass(frozen=True)
class Module:
    """One module of the package: its dotted name, whether it is a package, and its imports."""

    name: str
    is_package: bool
    imports: tuple[Import, ...]


# ---------------------------------------------------------------------- reading the imports


def module_name(path: Path, root: Path = PACKAGE_DIR) -> tuple[str, bool]:
    """``flask_tus/core/handler.py`` -> ``("flask_tus.core.handler", False)``;
    ``flask_tus/core/__init__.py`` -> ``("flask_tus.core", True)``."""
    parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def resolve(name: str, is_package: bool, node: ast.ImportFrom, known: frozenset[str]) -> list[str]:
    """The modules a ``from ... import ...`` statement loads, as absolute names.

    ``from X import a`` loads ``X.a`` when that is a module of the package, else ``X`` itself.
    """
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        if node.level - 1 > len(package) - 1:
            raise ImportError(f"{name}: relative import beyond the top-level package")
        base = package[: len(package) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    loaded = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        loaded.append(candidate if candidate in known else target)
    return sorted(set(loaded))


def parse_module(
    name: str, is_package: bool, source: str, known: frozenset[str] = frozenset()
) -> Module:
    """Every import of ``source`` (at any depth: in functions, under ``TYPE_CHECKING``...)."""
    imports: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imports += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports += [Import(m, node.lineno) for m in resolve(name, is_package, node, known)]
    return Module(name, is_package, tuple(imports))


def package_modules() -> dict[str, Module]:
    """Every ``.py`` module under ``flask_tus/``, by dotted name."""
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    names = {path: module_name(path) for path in paths}
    known = frozenset(name for name, _ in names.values())
    return {
        name: parse_module(name, is_package, path.read_text(encoding="utf-8"), known)
        for path, (name, is_package) in names.items()
    }


MODULES = package_modules()


# ---------------------------------------------------------------------- the rules


def is_stdlib(module: str) -> bool:
    return module.split(".", 1)[0] in sys.stdlib_module_names


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def core_violation(imp: Import) -> str | None:
    """``core/*`` may import the stdlib and ``flask_tus.core`` only."""
    if is_stdlib(imp.module) or within(imp.module, f"{PACKAGE}.core"):
        return None
    if imp.top in FRAMEWORKS:
        return "the protocol core imports a web framework"
    if within(imp.module, PACKAGE):
        return "the protocol core imports another part of flask_tus"
    return "the protocol core imports a third-party package"


def backend_of(module: str, layer: str) -> str | None:
    """``flask_tus.async_models.mongo.client`` -> ``mongo``; the layer's own package -> None."""
    rest = module.removeprefix(f"{PACKAGE}.{layer}").lstrip(".")
    return rest.split(".", 1)[0] or None


def async_models_violation(module: Module, imp: Import) -> str | None:
    """``async_models/*``: stdlib, ``flask_tus.core``, any driver except Flask or Werkzeug;
    one backend never imports another (the package's ``__init__`` may re-export them, and
    private helpers named ``_*`` are shared)."""
    if is_stdlib(imp.module) or within(imp.module, f"{PACKAGE}.core"):
        return None
    if imp.top in ("flask", "werkzeug"):
        return "a metadata store imports Flask or Werkzeug"
    layer = f"{PACKAGE}.async_models"
    if within(imp.module, layer):
        own = backend_of(module.name, "async_models")
        target = backend_of(imp.module, "async_models")
        if own is None and module.is_package:
            return None  # the package itself re-exports its backends
        if target is None:
            return "a metadata store imports the async_models package (and every backend)"
        if target == own or target.startswith("_"):
            return None
        return f"metadata store {own!r} imports another backend, {target!r}"
    if within(imp.module, PACKAGE):
        return "a metadata store imports flask_tus outside the core"
    return None


def storage_violation(module: Module, imp: Import) -> str | None:
    """``storage/*``: stdlib, ``flask_tus.core`` and its driver (the package's ``__init__``
    may re-export its modules)."""
    if is_stdlib(imp.module) or within(imp.module, f"{PACKAGE}.core"):
        return None
    if imp.top in STORAGE_DRIVERS:
        return None
    reexport = module.is_package and module.name == f"{PACKAGE}.storage"
    if reexport and within(imp.module, module.name) and imp.module != module.name:
        return None
    if within(imp.module, PACKAGE):
        return "a storage imports flask_tus outside the core"
    return f"a storage imports {imp.top!r}, which is not its driver"


def flask_reachers(modules: dict[str, Module]) -> set[str]:
    """flask_tus modules that import Flask, directly or through other flask_tus modules.

    Only explicit imports count: the implicit import of a parent package is left out, since
    every submodule of ``flask_tus`` shares it.
    """
    reach = {
        name
        for name, module in modules.items()
        if any(imp.top in ("flask", "werkzeug") for imp in module.imports)
    }
    changed = True
    while changed:
        changed = False
        for name, module in modules.items():
            if name not in reach and any(imp.module in reach for imp in module.imports):
                reach.add(name)
                changed = True
    return reach


def asgi_violation(imp: Import, reachers: set[str]) -> str | None:
    """``asgi.py`` never imports Flask, nor a flask_tus module that imports Flask."""
    if imp.top == "flask":
        return "asgi.py imports Flask"
    if imp.module in reachers:
        return f"asgi.py imports {imp.module}, which imports Flask"
    return None


def violations(module: Module, modules: dict[str, Module]) -> list[str]:
    """Every broken layer rule of ``module``, as ``"<module>:<line> <import>: <why>"``."""
    found = []
    reachers = flask_reachers(modules)
    for imp in module.imports:
        why: str | None = None
        if within(module.name, f"{PACKAGE}.core"):
            why = core_violation(imp)
        elif within(module.name, f"{PACKAGE}.async_models"):
            why = async_models_violation(module, imp)
        elif within(module.name, f"{PACKAGE}.storage"):
            why = storage_violation(module, imp)
        elif within(module.name, f"{PACKAGE}.asgi"):
            why = asgi_violation(imp, reachers)
        if why is not None:
            found.append(f"{module.name}:{imp.line} {imp.module}: {why}")
    return found


# ---------------------------------------------------------------------- the real package


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_keeps_the_layer_rules(name: str) -> None:
    """Each flask_tus module imports only what its layer allows (DESIGN.md, Layers)."""
    assert violations(MODULES[name], MODULES) == []


def test_the_walk_sees_the_whole_package() -> None:
    """The checker reads every layer (so an empty walk cannot pass for a clean one)."""
    names = set(MODULES)
    for expected in (
        "flask_tus",
        "flask_tus.core",
        "flask_tus.core.handler",
        "flask_tus.core.errors",
        "flask_tus.async_models.json_store",
        "flask_tus.storage.local",
        "flask_tus.storage.locks",
        "flask_tus.extension",
        "flask_tus.blueprint",
        "flask_tus.cli",
    ):
        assert expected in names
    handler = {imp.module for imp in MODULES["flask_tus.core.handler"].imports}
    assert "flask_tus.core.errors" in handler
    local = {imp.module for imp in MODULES["flask_tus.storage.local"].imports}
    assert {"aiofiles", "flask_tus.core.errors"} <= local
    assert "flask_tus.blueprint" in flask_reachers(MODULES)
    assert "flask_tus.core.handler" not in flask_reachers(MODULES)


# ---------------------------------------------------------------------- the checker itself


def check(name: str, source: str) -> list[str]:
    """Violations of a synthetic module ``name`` placed among the real ones (replacing the
    real module of that name, and a package when the real one is)."""
    is_package = name in MODULES and MODULES[name].is_package
    module = parse_module(name, is_package, source, frozenset(MODULES) | {name})
    return violations(module, {**MODULES, name: module})


def test_relative_imports_resolve() -> None:
    """Relative imports resolve against the module's package, and ``from . import x`` to
    the submodule ``x`` when it exists."""
    module = parse_module(
        "flask_tus.storage.s3",
        False,
        "from ..core.errors import TusError\nfrom . import local\nfrom .. import core\n",
        frozenset(MODULES),
    )
    assert [imp.module for imp in module.imports] == [
        "flask_tus.core.errors",
        "flask_tus.storage.local",
        "flask_tus.core",
    ]
    package = parse_module("flask_tus.core", True, "from .errors import X\n", frozenset(MODULES))
    assert [imp.module for imp in package.imports] == ["flask_tus.core.errors"]


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("flask_tus.core.bad", "import flask\n"),
        ("flask_tus.core.bad", "from werkzeug.exceptions import NotFound\n"),
        ("flask_tus.core.bad", "def f():\n    import aiofiles\n"),
        (
            "flask_tus.core.bad",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pymongo import AsyncMongoClient\n",
        ),
        ("flask_tus.core.bad", "import motor.motor_asyncio\n"),
        ("flask_tus.core.bad", "from sqlalchemy.ext.asyncio import AsyncSession\n"),
        ("flask_tus.core.bad", "import asgiref.sync\n"),
        ("flask_tus.core.bad", "import hypercorn\n"),
        ("flask_tus.core.bad", "from ..storage.local import LocalStorage\n"),
        ("flask_tus.core.bad", "from .. import extension\n"),
        ("flask_tus.core.bad", "from flask_tus.async_models import JsonFileStore\n"),
        ("flask_tus.core", "from ..cli import tus_cli\n"),
        ("flask_tus.async_models.mongo", "from flask import current_app\n"),
        ("flask_tus.async_models.mongo", "import werkzeug\n"),
        ("flask_tus.async_models.mongo", "from .json_store import JsonFileStore\n"),
        ("flask_tus.async_models.mongo", "from . import json_store\n"),
        ("flask_tus.async_models.mongo", "from flask_tus.async_models import JsonFileStore\n"),
        ("flask_tus.async_models.sql", "from ..storage.local import LocalStorage\n"),
        ("flask_tus.async_models.sql", "from ..extension import FlaskTus\n"),
        ("flask_tus.storage.s3", "import flask\n"),
        ("flask_tus.storage.s3", "import pymongo\n"),
        ("flask_tus.storage.s3", "from ..async_models.json_store import JsonFileStore\n"),
        ("flask_tus.storage.s3", "from .local import LocalStorage\n"),
        ("flask_tus.asgi", "from flask import Flask\n"),
        ("flask_tus.asgi", "from .extension import FlaskTus\n"),
        ("flask_tus.asgi", "from . import blueprint\n"),
        ("flask_tus.asgi", "from flask_tus import FlaskTus\n"),
        ("flask_tus.asgi.app", "import flask.views\n"),
    ],
)
def test_checker_flags_a_violation(name: str, source: str) -> None:
    """A synthetic module breaking a layer rule is flagged (the checker can fail)."""
    assert check(name, source), f"{name} with {source!r} was not flagged"


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("flask_tus.core.good", "from __future__ import annotations\nimport asyncio, hashlib\n"),
        ("flask_tus.core.good", "from .errors import TusError\nfrom . import headers\n"),
        ("flask_tus.core.good", "from flask_tus.core.upload import Upload\n"),
        ("flask_tus.async_models.mongo", "import pymongo\nfrom motor import motor_asyncio\n"),
        ("flask_tus.async_models.mongo", "from ..core.errors import UploadNotFound\n"),
        ("flask_tus.async_models.sql", "from sqlalchemy.ext.asyncio import create_async_engine\n"),
        ("flask_tus.async_models.sql", "from ._loop import BackgroundLoop\n"),
        ("flask_tus.async_models", "from .json_store import JsonFileStore\n"),
        ("flask_tus.storage.s3", "import aiofiles.os\nfrom ..core.ids import is_valid_id\n"),
        ("flask_tus.asgi", "from .core import TusHandler\nimport asyncio\n"),
        ("flask_tus.asgi", "from . import core\n"),
    ],
)
def test_checker_accepts_what_the_layers_allow(name: str, source: str) -> None:
    """Imports the rules allow are not flagged (the checker does not cry wolf)."""
    assert check(name, source) == []
