# syntax=docker/dockerfile:1.7
# NVIDIA's Triton container serving the project's model repository (deploy/triton/model_repository) on
# GPUs. The Python backend runs each model's 1/model.py with the container's own python3 (3.12 in 24.12),
# which imports services.inference.triton_models -> shared.model: this image adds that code and exactly the
# pinned versions it imports (tests/deploy checks the pins against pyproject.toml). Build from the
# repository root:
#
#   docker build -f deploy/docker/triton.Dockerfile -t registry.example.com/goha/goha-triton:0.1.0 .
#
# The checkpoint is not baked in: mount it at /checkpoints/goha.ckpt (the path in config.pbtxt).

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3
FROM ${TRITON_IMAGE}

# Ubuntu 24.04's python3 is "externally managed"; this image is the environment, so install into it.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
# PyPI's Linux torch wheel is the CUDA build (it brings its own CUDA runtime libraries); point
# TORCH_INDEX_URL at another index to pick a specific CUDA flavour.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN python3 -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && python3 -m pip install \
        numpy==1.26.4 \
        transformers==5.24.0 \
        scipy==1.17.1 \
        pillow==13.0.0 \
        PyYAML==6.0.3 \
        tqdm==4.67.1

# Only the packages the models import (shared/ and the inference service), not the whole platform.
COPY shared /opt/goha/shared
COPY services/__init__.py /opt/goha/services/__init__.py
COPY services/inference /opt/goha/services/inference
COPY deploy/triton/model_repository /models
COPY --chmod=0755 deploy/docker/triton-entrypoint.sh /opt/goha/triton-entrypoint.sh
ENV PYTHONPATH=/opt/goha \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN python3 -m compileall -q /opt/goha \
 && python3 -c "import services.inference.triton_models, shared.model.network"

# HTTP (health, inference), gRPC (what the workers use), Prometheus metrics.
EXPOSE 8000 8001 8002
# NVIDIA's entry point (driver/compat checks) stays; it execs this command.
CMD ["/opt/goha/triton-entrypoint.sh"]
