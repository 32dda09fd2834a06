"""Python client of the REST API v1 (docs/api.md), the library under the ``goha`` CLI.

    from goha.client import GohaClient, Consent

    with GohaClient("http://127.0.0.1:8080", api_key) as client:
        job = client.submit("portrait.png", "driver.mp4",
                            consent=Consent(subject="Jane Doe", method="written_release"))
        job = client.wait(job["id"], on_progress=lambda j: print(j["progress"]))
        client.download_result(job["id"], "out.mp4")
        print(client.verify("out.mp4")["message"])

Every non-2xx answer raises :class:`ApiError` with the API's ``code`` and ``message`` (error envelope
``{"error": {"code", "message", "details"}}``); a gateway that cannot be reached raises it with
``status=0`` and code ``unreachable``. Uploads and downloads stream in chunks: no file is held whole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from shared.platform.errors import PlatformError

DEFAULT_API_URL = "http://127.0.0.1:8080"
API_URL_ENV = "GOHA_API_URL"
API_KEY_ENV = "GOHA_API_KEY"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
UNREACHABLE = "unreachable"
TIMED_OUT = "wait_timed_out"
CHECKSUM_MISMATCH = "checksum_mismatch"
AMBIGUOUS_JOB_ID = "ambiguous_job_id"
JOB_ID_TOO_SHORT = "job_id_too_short"
MIN_JOB_ID_PREFIX = 8
FULL_JOB_ID_LENGTH = 36  # a UUID
PREFIX_SCAN_JOBS = 1000  # a gateway without GET /v1/jobs?id_prefix=: how many latest jobs are searched
CHUNK_BYTES = 1 << 20

# The media type is decided by the gateway from the bytes; this only names the part sensibly.
_MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
}


class ApiError(PlatformError):
    """An error answer of the API (or no answer at all: ``status == 0``)."""

    def __init__(
        self, status: int, code: str, message: str, *, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(code, message, status=status, details=dict(details or {}))

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read the error envelope; a body without one (a proxy's page) still gives a usable error."""
        with contextlib.suppress(httpx.ResponseNotRead):
            response.read()
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return cls(
                response.status_code,
                error["code"],
                str(error.get("message", "")),
                details=error.get("details") if isinstance(error.get("details"), dict) else None,
            )
        text = response.text.strip().replace("\n", " ")[:300] or response.reason_phrase
        return cls(response.status_code, f"http_{response.status_code}", text)


@dataclass(frozen=True)
class Consent:
    """The consent attestation every job needs (who consented, how, when; docs/api.md)."""

    subject: str
    method: str  # written_release | electronic_signature | recorded_verbal | self
    # Default: when this attestation was created. Fixed once, so resubmitting the same Consent with
    # the same Idempotency-Key sends the same body (a per-call "now" changed it across a second
    # boundary and the gateway refused the retry as a different request).
    obtained_at: dt.datetime | str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).replace(microsecond=0)
    )
    reference: str | None = None
    attested_by: str | None = None

    def to_form(self) -> dict[str, str]:
        obtained = self.obtained_at
        if isinstance(obtained, dt.datetime):
            if obtained.tzinfo is None:
                raise ValueError("consent obtained_at needs a timezone")
            obtained = obtained.isoformat()
        form = {
            "consent_subject": self.subject,
            "consent_method": self.method,
            "consent_obtained_at": obtained,
        }
        if self.reference:
            form["consent_reference"] = self.reference
        if self.attested_by:
            form["consent_attested_by"] = self.attested_by
        return form


@dataclass(frozen=True)
class Download:
    path: Path
    size_bytes: int
    sha256: str


ProgressCallback = Callable[[dict[str, Any]], None]


class GohaClient:
    """Synchronous client of one gateway. ``http`` lets a caller supply its own ``httpx.Client`` (for
    example FastAPI's ``TestClient``, which is one); otherwise the client owns a connection pool."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.timeout = timeout
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    # -- plumbing ------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> GohaClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "goha-client/1"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = self._headers(kwargs.pop("headers", None))
        try:
            response = self._http.request(method, self._url(path), headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(0, UNREACHABLE, f"{method} {self._url(path)} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise ApiError(0, UNREACHABLE, f"cannot reach the API at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    @contextlib.contextmanager
    def _stream(self, method: str, url: str, headers: Mapping[str, str]) -> Iterator[httpx.Response]:
        try:
            # Never follow redirects here: a presigned URL must be fetched without the API key.
            with self._http.stream(method, url, headers=dict(headers), follow_redirects=False) as response:
                if response.status_code >= 400:
                    raise ApiError.from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise ApiError(0, UNREACHABLE, f"cannot reach {url}: {exc}") from exc

    # -- health --------------------------------------------------------------------------------------------
    def ready(self) -> dict[str, Any]:
        """``GET /readyz``; raises ``ApiError`` (503 ``http_503``) while a dependency is down."""
        return dict(self._request("GET", "/readyz").json())

    # -- jobs ----------------------------------------------------------------------------------------------
    def submit(
        self,
        portrait_path: str | os.PathLike[str],
        driving_path: str | os.PathLike[str] | None = None,
        *,
        job_type: str = "reenact",
        options: Mapping[str, Any] | None = None,
        consent: Consent | Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/jobs``: upload the portrait (and driving clip) and queue a job; returns the job.
        ``callback_url``: where the platform POSTs (signed) once the job has finished (docs/api.md).

        ``consent`` is required by the API; without it the gateway answers ``consent_required``.
        ``options``: motion_mode, expression_scale, smoothing, output_size, output_fps, frame_limit,
        label_corner, paste_back (None values are left out; booleans are sent as "true"/"false").
        """
        form: dict[str, str] = {"job_type": job_type}
        for name, value in (options or {}).items():
            if value is not None:
                form[name] = str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(consent, Consent):
            form.update(consent.to_form())
        elif consent is not None:
            form.update(
                {k if k.startswith("consent_") else f"consent_{k}": str(v) for k, v in consent.items()}
            )
        if callback_url is not None:
            form["callback_url"] = callback_url
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        with contextlib.ExitStack() as stack:
            files = {"portrait": _file_part(stack, portrait_path)}
            if driving_path is not None:
                files["driving_video"] = _file_part(stack, driving_path)
            return dict(self._request("POST", "/v1/jobs", files=files, data=form, headers=headers).json())

    def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}").json())

    def list_jobs(
        self,
        *,
        state: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        id_prefix: str | None = None,
    ) -> dict[str, Any]:
        """One page, newest first: ``{"items": [...], "next_cursor": str | None}``. ``id_prefix``: only
        the job whose id starts with it (the gateway answers 409 ``ambiguous_job_id`` when several do)."""
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if cursor:
            params["cursor"] = cursor
        if id_prefix:
            params["id_prefix"] = id_prefix
        return dict(self._request("GET", "/v1/jobs", params=params).json())

    def resolve_job_id(self, job_id: str) -> str:
        """A full job id for ``job_id``, which may be a unique prefix of at least 8 characters (as the CLI
        prints ``6f0c1a2b``). The gateway looks the prefix up among all of the tenant's jobs
        (``GET /v1/jobs?id_prefix=``): ``not_found`` when none matches, ``ambiguous_job_id`` (with the
        candidates) when several do, ``job_id_too_short`` under 8 characters. A full-length id is
        returned as it is. A gateway too old to filter (it answers other ids) is searched the old way,
        among the latest ``PREFIX_SCAN_JOBS`` jobs."""
        job_id = job_id.strip().lower()
        if len(job_id) >= FULL_JOB_ID_LENGTH:
            return job_id
        if len(job_id) < MIN_JOB_ID_PREFIX:
            raise ApiError(
                0,
                JOB_ID_TOO_SHORT,
                f"give at least {MIN_JOB_ID_PREFIX} characters of the job id, not {job_id!r}",
            )
        items = self.list_jobs(id_prefix=job_id, limit=10).get("items", [])
        ids = [str(item["id"]) for item in items]
        if any(not found.startswith(job_id) for found in ids):
            matches, scope = self._scan_for_prefix(job_id), f" among your latest {PREFIX_SCAN_JOBS} jobs"
        else:
            matches, scope = ids, ""
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ApiError(404, "not_found", f"no job id starts with {job_id!r}{scope}")
        raise ApiError(
            409,
            AMBIGUOUS_JOB_ID,
            f"{job_id!r} starts several job ids ({', '.join(matches[:5])}); give more characters",
            details={"job_ids": matches},
        )

    def _scan_for_prefix(self, job_id: str) -> list[str]:
        """The ids starting with ``job_id`` among the latest ``PREFIX_SCAN_JOBS`` jobs (old gateways)."""
        matches: list[str] = []
        cursor: str | None = None
        seen = 0
        while seen < PREFIX_SCAN_JOBS:
            page = self.list_jobs(limit=100, cursor=cursor)
            items = page.get("items", [])
            seen += len(items)
            matches += [item["id"] for item in items if str(item["id"]).startswith(job_id)]
            cursor = page.get("next_cursor")
            if not cursor or len(matches) > 1:
                break
        return matches

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def delete_data(self, job_id: str) -> dict[str, Any]:
        """Erase a finished job's result and inputs (``DELETE /v1/jobs/{id}``); the record stays."""
        return dict(self._request("DELETE", f"/v1/jobs/{job_id}").json())

    def wait(
        self,
        job_id: str,
        on_progress: ProgressCallback | None = None,
        *,
        poll_interval_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled and return it (a failed job is returned,
        not raised: its ``error`` holds the code). ``on_progress`` sees every polled state.

        The default interval stays well inside the default per-key rate limit; a ``rate_limited``
        answer is waited out (``Retry-After``) instead of failing the wait.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                job = self.get_job(job_id)
            except ApiError as exc:
                if exc.code != "rate_limited":
                    raise
                time.sleep(max(0.1, float(exc.details.get("retry_after_s", 1.0))))
                continue
            if on_progress is not None:
                on_progress(job)
            if job.get("state") in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise ApiError(
                    0,
                    TIMED_OUT,
                    f"job {job_id} still {job.get('state')} after {timeout_s:.0f} s",
                    details=job,
                )
            time.sleep(poll_interval_s)

    def download_result(self, job_id: str, path: str | os.PathLike[str]) -> Download:
        """Save the result MP4 to ``path`` (written to a temporary name, then renamed).

        Embedded mode streams the file from the gateway; with S3 storage the gateway answers a redirect
        to a presigned URL, which is fetched *without* the API key (it must never leave for another
        host). The SHA-256 is checked when the gateway announces it.
        """
        url = self._url(f"/v1/jobs/{job_id}/result")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        expected: str | None = None
        try:
            with self._stream("GET", url, self._headers({"Accept": "*/*"})) as response:
                if response.is_redirect:
                    location = response.headers["location"]
                    redirect_to = str(response.url.join(location))
                else:
                    redirect_to = None
                    expected = response.headers.get("x-content-sha256")
                    digest, size = _save(response, partial)
            if redirect_to is not None:
                with self._stream("GET", redirect_to, {"Accept": "*/*"}) as response:
                    digest, size = _save(response, partial)
            if expected and expected != digest:
                raise ApiError(
                    0,
                    CHECKSUM_MISMATCH,
                    f"downloaded {size} bytes with SHA-256 {digest}, expected {expected}",
                )
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return Download(path=target, size_bytes=size, sha256=digest)

    def provenance(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}/provenance").json())

    # -- verify --------------------------------------------------------------------------------------------
    def verify(self, video_path: str | os.PathLike[str]) -> dict[str, Any]:
        """``POST /v1/verify``: watermark, C2PA manifest and provenance checks of any video."""
        with contextlib.ExitStack() as stack:
            files = {"video": _file_part(stack, video_path)}
            return dict(self._request("POST", "/v1/verify", files=files).json())


def _file_part(stack: contextlib.ExitStack, path: str | os.PathLike[str]) -> tuple[str, BinaryIO, str]:
    """A multipart part read from an open file (httpx streams it in chunks)."""
    source = Path(path)
    if not source.is_file():
        raise ApiError(0, "file_not_found", f"{source} is not a readable file")
    handle = stack.enter_context(source.open("rb"))
    return source.name, handle, _MEDIA_TYPES.get(source.suffix.lower(), "application/octet-stream")


def _save(response: httpx.Response, path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as handle:
        for chunk in response.iter_bytes(CHUNK_BYTES):
            handle.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
