"""Serve the Prometheus multiprocess directory of processes that have no HTTP server of their own.

Celery's prefork children and the reconciler write their samples (``shared.platform.metrics``) as files
under ``PROMETHEUS_MULTIPROC_DIR``; this small server aggregates those files on every scrape:

    python deploy/docker/metrics_exporter.py --port 9200 [--dir /tmp/prometheus] [--host 0.0.0.0]

It defines no metric itself, so it never writes into the directory: it can run beside the worker in
the same container (docker-compose.yml) or as a sidecar sharing an ``emptyDir`` (deploy/k8s/worker.yaml).
Only ``prometheus_client`` is imported, so it starts in well under a second.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

LOG = logging.getLogger("goha.metrics_exporter")


def render(multiproc_dir: Path) -> tuple[bytes, str]:
    """The exposition text of every process that wrote into ``multiproc_dir``."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def make_handler(multiproc_dir: Path) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "goha-metrics-exporter"

        def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body, content_type = render(multiproc_dir)
                except Exception as exc:  # a half-written file must not kill the exporter
                    LOG.exception("rendering metrics failed")
                    self._send(500, f"metrics unavailable: {type(exc).__name__}\n".encode(), "text/plain")
                    return
                self._send(200, body, content_type)
            elif path == "/healthz":
                # Ready only while the directory exists: the worker's entry point creates it.
                ok = multiproc_dir.is_dir()
                self._send(200 if ok else 503, b"ok\n" if ok else b"no metrics directory\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            LOG.debug("%s " + format, self.address_string(), *args)

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="multiprocess directory (default: $PROMETHEUS_MULTIPROC_DIR)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    directory = args.dir or (
        Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else None
    )
    if directory is None:
        parser.error("no multiprocess directory: pass --dir or set PROMETHEUS_MULTIPROC_DIR")
    server = http.server.ThreadingHTTPServer((args.host, args.port), make_handler(directory))
    server.daemon_threads = True

    def stop(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: stopping", signum)
        # shutdown() waits for serve_forever to return: call it off the thread that runs it.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("serving %s on %s:%d/metrics", directory, args.host, server.server_address[1])
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
