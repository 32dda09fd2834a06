# syntax=docker/dockerfile:1.7
# One Python image for the gateway, the Celery worker, the reconciler and the migrations job
# (the command picks the role; see docker-compose.yml and deploy/k8s/). Build from the repository root:
#
#   docker build -f deploy/docker/app.Dockerfile -t registry.example.com/goha/goha-app:0.1.0 .
#
# Versions come from pyproject.toml (tests/deploy checks that the pins below agree with it).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- dependencies: a virtual environment that only changes when pyproject.toml does ---------------------
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install pip==25.3 setuptools==80.9.0 wheel==0.45.1
# torch first, from the CPU wheel index: PyPI's torch==2.13.0 is the multi-GB CUDA build, and the workers
# only run CPU work (face analysis, encoding); the network runs in Triton. `torch==2.13.0` in the
# requirements below is then already satisfied by 2.13.0+cpu.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && pip install -r /tmp/requirements.txt \
 # Its metadata pins an old opencv/numpy; its real needs are in the requirements (same as the Makefile).
 && pip install --no-deps invisible-watermark==0.2.0

# --- runtime ----------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GOHA_EMBEDDED=false \
    GOHA_PRODUCTION=true
RUN groupadd --system --gid 10001 goha \
 && useradd --system --uid 10001 --gid goha --home-dir /tmp --shell /usr/sbin/nologin goha
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# The build context is filtered by app.Dockerfile.dockerignore (no .venv, var/, runs/, tests/ ...).
COPY . /app
# Editable install: shared.platform.migrate finds migrations/ and alembic.ini next to the sources, and the
# `goha` console script is on PATH. Byte-compiled at build time because the root filesystem is read-only.
RUN pip install --no-deps --no-build-isolation -e /app \
 && python -m compileall -q /app/goha /app/shared /app/services /app/migrations \
 && chmod 0755 /app/deploy/docker/entrypoint.sh
USER 10001:10001
EXPOSE 8080 9200
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
CMD ["uvicorn", "--factory", "services.gateway.app:create_app", "--host", "0.0.0.0", "--port", "8080", "--timeout-keep-alive", "75"]
