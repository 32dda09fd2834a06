"""Object storage: one interface, two backends.

- ``S3Storage``: any S3-compatible server through the ``minio`` client (MinIO in production,
  SeaweedFS's S3 gateway in the integration tests). Results are served by presigned GET URLs.
- ``LocalStorage``: a directory, for the embedded mode. It cannot presign HTTP URLs; the gateway
  streams results itself when ``supports_presign`` is False.

Keys: inputs are content-addressed per tenant (``tenants/<tenant>/inputs/<sha256>``), outputs live
per job (``tenants/<tenant>/jobs/<job>/<name>``).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from shared.platform.errors import OBJECT_NOT_FOUND, STORAGE_KEY_INVALID, PlatformError
from shared.platform.settings import Settings

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
COPY_CHUNK_BYTES = 1 << 20


class ObjectNotFound(PlatformError):
    status = 404

    def __init__(self, key: str) -> None:
        super().__init__(OBJECT_NOT_FOUND, f"object {key!r} not found", details={"key": key})


def validate_key(key: str) -> str:
    """Keys are '/'-joined safe parts: no '..', no absolute paths, no empty parts, no odd characters."""
    parts = key.split("/")
    if not key or len(key) > 512 or not all(_KEY_PART.match(part) for part in parts):
        raise PlatformError(STORAGE_KEY_INVALID, f"invalid storage key {key!r}")
    return key


def input_key(tenant_id: str, sha256: str) -> str:
    return validate_key(f"tenants/{tenant_id}/inputs/{sha256}")


def output_key(tenant_id: str, job_id: str, name: str = "result.mp4") -> str:
    return validate_key(f"tenants/{tenant_id}/jobs/{job_id}/{name}")


# Source avatars (T_c + T_p of a portrait) cached by the worker: per model version, tenant and portrait
# hash. Never shared across tenants: a cache hit (a fast reconstruct) must not tell one tenant that
# another uploaded the same face. Entries of the earlier shared layout (<version>/<sha256>.npy) are
# swept by the retention pass.
AVATAR_CACHE_PREFIX = "cache/avatars"


def avatar_cache_key(model_version: str, portrait_sha256: str, *, tenant_id: str) -> str:
    return validate_key(f"{AVATAR_CACHE_PREFIX}/{model_version}/{tenant_id}/{portrait_sha256}.npy")


@runtime_checkable
class ObjectStorage(Protocol):
    supports_presign: bool

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream"
    ) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Context manager yielding a readable binary stream of the object."""
        ...

    def download_to(self, key: str, path: str | os.PathLike[str]) -> None: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def presigned_get_url(self, key: str, expires_s: int) -> str: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...

    def list_objects(self, prefix: str = "") -> list[tuple[str, dt.datetime]]:
        """(key, last modified, UTC) of every object under ``prefix``."""
        ...

    def list_prefixes(self, prefix: str) -> list[str]:
        """The "folders" directly under ``prefix`` (which ends in '/'), each ending in '/': one level,
        not every key below (cheap where the keys below are many)."""
        ...

    def ping(self) -> None:
        """Raise when the backend is not reachable/usable (readiness check)."""
        ...


class LocalStorage:
    """A directory; writes are atomic (temp file + rename) so readers never see half an object."""

    supports_presign = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _atomic_write(self, key: str, source: BinaryIO) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                shutil.copyfileobj(source, handle, COPY_CHUNK_BYTES)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._atomic_write(key, io.BytesIO(data))

    def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream"
    ) -> None:
        with open(path, "rb") as handle:
            self._atomic_write(key, handle)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        with handle:
            yield handle

    def download_to(self, key: str, path: str | os.PathLike[str]) -> None:
        with self.open(key) as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target, COPY_CHUNK_BYTES)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presigned_get_url(self, key: str, expires_s: int) -> str:
        # Only a local process can use this; HTTP clients get the bytes streamed by the gateway.
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.as_uri()

    def list_keys(self, prefix: str = "") -> list[str]:
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_objects(self, prefix: str = "") -> list[tuple[str, dt.datetime]]:
        return [
            (key, dt.datetime.fromtimestamp((self.root / key).stat().st_mtime, dt.UTC))
            for key in self.list_keys(prefix)
        ]

    def list_prefixes(self, prefix: str) -> list[str]:
        folder = self.root / validate_key(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}{child.name}/" for child in folder.iterdir() if child.is_dir())

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise PlatformError("storage_unavailable", f"{self.root} is not writable", status=503)


class S3Storage:
    """S3-compatible storage via ``minio``. The bucket is created on first use if missing."""

    supports_presign = True

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        public_endpoint: str | None = None,
        public_secure: bool | None = None,
    ) -> None:
        import urllib3
        from minio import Minio  # imported here: the embedded mode never needs it

        self.bucket = bucket
        # minio's default pool waits 5 minutes per attempt: a dead server would hang readiness checks.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=60.0),
            maxsize=16,
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        # Presigning is offline maths; with the region fixed, minio never calls the public endpoint. Its
        # scheme is its own (public_secure): a public HTTPS name in front of an internal plain-HTTP store.
        public_secure = secure if public_secure is None else public_secure
        if public_endpoint or public_secure != secure:
            self._presign_client = Minio(
                public_endpoint or endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=public_secure,
                region=region,
            )
        else:
            self._presign_client = self._client
        self._bucket_checked = False

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        return cls(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            public_endpoint=settings.s3_public_endpoint,
            public_secure=settings.s3_public_secure,
        )

    def ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        if not self._client.bucket_exists(self.bucket):
            from minio.error import S3Error

            try:
                self._client.make_bucket(self.bucket)
            except S3Error as exc:  # another process created it first
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
        self._bucket_checked = True

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        from minio.error import S3Error

        return isinstance(exc, S3Error) and exc.code in {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.ensure_bucket()
        self._client.put_object(
            self.bucket, validate_key(key), io.BytesIO(data), len(data), content_type=content_type
        )

    def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream"
    ) -> None:
        self.ensure_bucket()
        self._client.fput_object(self.bucket, validate_key(key), os.fspath(path), content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        self.ensure_bucket()
        try:
            response = self._client.get_object(self.bucket, validate_key(key))
        except Exception as exc:
            if self._is_missing(exc):
                raise ObjectNotFound(key) from exc
            raise
        try:
            yield response  # urllib3 response: file-like, streams in chunks
        finally:
            response.close()
            response.release_conn()

    def download_to(self, key: str, path: str | os.PathLike[str]) -> None:
        with self.open(key) as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target, COPY_CHUNK_BYTES)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        self.ensure_bucket()
        try:
            return int(self._client.stat_object(self.bucket, validate_key(key)).size or 0)
        except Exception as exc:
            if self._is_missing(exc):
                raise ObjectNotFound(key) from exc
            raise

    def delete(self, key: str) -> None:
        self.ensure_bucket()
        self._client.remove_object(self.bucket, validate_key(key))

    def presigned_get_url(self, key: str, expires_s: int) -> str:
        return self._presign_client.presigned_get_object(
            self.bucket, validate_key(key), expires=dt.timedelta(seconds=max(1, int(expires_s)))
        )

    def list_keys(self, prefix: str = "") -> list[str]:
        self.ensure_bucket()
        return sorted(
            obj.object_name for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
        )

    def list_objects(self, prefix: str = "") -> list[tuple[str, dt.datetime]]:
        self.ensure_bucket()
        listed = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return sorted(
            (obj.object_name, obj.last_modified.astimezone(dt.UTC)) for obj in listed if not obj.is_dir
        )

    def list_prefixes(self, prefix: str) -> list[str]:
        self.ensure_bucket()
        listed = self._client.list_objects(self.bucket, prefix=validate_key(prefix.rstrip("/")) + "/")
        return sorted(obj.object_name for obj in listed if obj.is_dir)

    def ping(self) -> None:
        self._bucket_checked = False
        self.ensure_bucket()


def make_storage(settings: Settings) -> ObjectStorage:
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings)
    assert settings.local_storage_dir is not None
    return LocalStorage(settings.local_storage_dir)
