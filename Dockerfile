# syntax=docker/dockerfile:1
# One image for every ResilientTask process; the command picks which one (see docker-compose.yml):
#   rtask-gateway | rtask-scheduler | rtask-worker | rtask-edge-init | rtask-redis-init | rtask-healthcheck HOST:PORT
#   | rtask ...
# Build: docker build -t resilienttask .   (docker compose builds it for you)

ARG PYTHON_IMAGE=python:3.11-slim-trixie
ARG NODE_IMAGE=node:22-bookworm-slim

# ---- the dashboard: built when clients/web exists, an empty folder otherwise -------------------------------
FROM ${NODE_IMAGE} AS dashboard
WORKDIR /src
# The bracket makes the source a wildcard, which BuildKit lets match nothing: the build works before the
# dashboard exists, and Python-only changes do not invalidate this stage's cache.
COPY clients/we[b] clients/web/
RUN if [ -f clients/web/package.json ]; then \
        npm ci --prefix clients/web --no-audit --no-fund && npm run build --prefix clients/web; \
    else \
        mkdir -p clients/web/dist; \
    fi

# ---- the Python package in a virtual environment, without the local stack's embedded servers ----------------
FROM ${PYTHON_IMAGE} AS package
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/rtask
WORKDIR /src
# Dependencies first, so this layer is rebuilt only when a pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY clients/python/pyproject.toml clients/python/README.md clients/python/
COPY deploy/image_requirements.py deploy/
RUN python deploy/image_requirements.py pyproject.toml clients/python/pyproject.toml > /tmp/requirements.txt \
    && /opt/rtask/bin/pip install -r /tmp/requirements.txt
COPY services/ services/
COPY clients/python/ clients/python/
RUN /opt/rtask/bin/pip install --no-deps ./clients/python .

# ---- the runtime image: the virtual environment, the dashboard's files, a non-root user -------------------
FROM ${PYTHON_IMAGE}
# /etc/envoy, /srv/dashboard and /var/lib/rtask-ca are where rtask-edge-init writes the JWKS and TLS files, the
# dashboard and the development CA, /etc/rtask-redis where rtask-redis-init writes Valkey's ACL file; empty named
# volumes mounted there take this ownership, so the non-root user can write into them.
RUN groupadd --system --gid 10001 rtask \
    && useradd --system --uid 10001 --gid rtask --create-home --home-dir /home/rtask --shell /usr/sbin/nologin rtask \
    && install -d -o rtask -g rtask /etc/envoy /srv/dashboard /var/lib/rtask-ca /etc/rtask-redis
COPY --from=package /opt/rtask /opt/rtask
COPY --from=dashboard /src/clients/web/dist /opt/rtask/dashboard
# Inside a container a service must listen on every interface, or nothing outside it reaches the port.
ENV PATH=/opt/rtask/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RTASK_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/rtask
# gateway, scheduler, worker health (each container runs one of them)
EXPOSE 50051 50061 50071
CMD ["rtask", "--help"]
