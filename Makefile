# The two commands a user needs: `make demo` and `make test`.
# Both build .venv first; nothing has to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-deps lint typecheck pytest clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[mongodb,sql,asgi,dev]'
	touch $(STAMP)

# The demo's ASGI app under hypercorn: tus bodies go to disk as they arrive.
demo: venv demo/static/vendor/tus.min.js
	$(BIN)/hypercorn --bind 127.0.0.1:5000 demo.app:asgi_app

demo/static/vendor/tus.min.js: demo/package.json demo/package-lock.json
	cd demo && npm ci --no-audit --no-fund
	mkdir -p demo/static/vendor
	cp demo/node_modules/tus-js-client/dist/tus.min.js demo/static/vendor/tus.min.js

lint: venv
	$(BIN)/ruff check flask_tus tests demo benchmarks
	$(BIN)/ruff format --check flask_tus tests demo benchmarks

typecheck: venv
	$(BIN)/mypy

# What the browser and tus-js-client tests need beyond .venv: Debian's chromium and the demo's
# npm packages (tus-js-client, also run under node by the interop tests).
test-deps: venv demo/static/vendor/tus.min.js
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

pytest: venv test-deps
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) demo/node_modules demo/static/vendor
