# The two commands a user needs: `make demo` and `make test`.
# Both build .venv first; nothing has to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck pytest clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[mongodb,sql,asgi,dev]'
	touch $(STAMP)

demo: venv demo/static/vendor/tus.min.js
	$(BIN)/flask --app demo.app run --host 127.0.0.1 --port 5000

demo/static/vendor/tus.min.js: demo/package.json demo/package-lock.json
	cd demo && npm ci --no-audit --no-fund
	mkdir -p demo/static/vendor
	cp demo/node_modules/tus-js-client/dist/tus.min.js demo/static/vendor/tus.min.js

lint: venv
	$(BIN)/ruff check flask_tus tests demo benchmarks
	$(BIN)/ruff format --check flask_tus tests demo benchmarks

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) demo/node_modules demo/static/vendor
