# The demo and the test suite in a container: `docker compose up`, `docker compose run app pytest tests`.
# Debian 12 (bookworm), the release whose chromium and PostgreSQL client the tests run with.
FROM python:3.12-slim-bookworm
# node runs tus-js-client in the interop tests; chromium is the browser of tests/test_browser.py
# (Debian's, at /usr/bin/chromium, as `make test-deps` installs it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm make chromium \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY flask_tus ./flask_tus
RUN pip install --no-cache-dir -e '.[mongodb,sql,asgi,dev]'
COPY demo/package.json demo/package-lock.json ./demo/
RUN cd demo && npm ci --no-audit --no-fund \
    && mkdir -p static/vendor && cp node_modules/tus-js-client/dist/tus.min.js static/vendor/
COPY . .
ENV TUS_UPLOAD_DIR=/data/uploads
EXPOSE 5000
# The native ASGI app: tus bodies go to disk as they arrive. The store follows the environment
# (TUS_MONGODB_URI in docker-compose.yml; JSON records beside the files without it).
CMD ["hypercorn", "--bind", "0.0.0.0:5000", "demo.app:asgi_app"]
