#!/bin/sh
# Starts tritonserver on the project's model repository. Extra arguments are passed through
# (e.g. --log-verbose=1). The access token of Triton's restricted APIs (shared memory, statistics,
# model control) comes from GOHA_TRITON_ACCESS_TOKEN, the same variable the workers' client reads; it is
# read from the environment here so it never appears in a manifest.
set -eu

MODEL_REPOSITORY="${MODEL_REPOSITORY:-/models}"

if [ -z "${GOHA_TRITON_ACCESS_TOKEN:-}" ]; then
    echo "triton-entrypoint: GOHA_TRITON_ACCESS_TOKEN is not set; refusing to serve unrestricted admin APIs" >&2
    exit 64
fi
RESTRICTED="shared-memory,model-repository,statistics,trace,logging:triton-access-token=${GOHA_TRITON_ACCESS_TOKEN}"

exec tritonserver \
    --model-repository="${MODEL_REPOSITORY}" \
    --http-port=8000 \
    --grpc-port=8001 \
    --metrics-port=8002 \
    --allow-metrics=true \
    --allow-gpu-metrics=true \
    --strict-readiness=true \
    --exit-timeout-secs=30 \
    --http-restricted-api="${RESTRICTED}" \
    --grpc-restricted-protocol="${RESTRICTED}" \
    "$@"
