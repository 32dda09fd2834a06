#!/bin/sh
# Entry point of the app image (gateway, worker, reconciler, migrations): prepares the Prometheus
# multiprocess directory, optionally starts the metrics exporter, then runs the given command as PID 1.
set -eu

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    # prometheus_client sums every file it finds there: files left by a previous run of this container
    # would be counted again (and a reused PID would write into a dead process's file).
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

if [ -n "${METRICS_EXPORTER_PORT:-}" ]; then
    # Celery children and the reconciler have no HTTP server: this one serves what they write.
    python /app/deploy/docker/metrics_exporter.py --port "$METRICS_EXPORTER_PORT" &
fi

exec "$@"
