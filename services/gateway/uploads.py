"""Multipart uploads read as a stream, after authentication and rate limiting.

The upload routes declare no ``File``/``Form`` parameters, so FastAPI never parses (or spools) the body
before the route's dependencies have authenticated the key and charged its rate limit. The route then
takes an upload slot (``UploadSlots``: a cap on bodies being read at once, per key and per process) and
``receive_multipart`` reads the body chunk by chunk:

- each file part goes straight to its one file in the request's workspace, hashed while written: no
  temporary copy elsewhere, no second copy afterwards;
- a part's limit is enforced while reading: 413 ``payload_too_large`` (with the field) the moment a file
  passes ``limit_bytes`` or a text field passes ``max_field_bytes``; the rest of the body is never read;
- an unexpected file field, too many parts or a malformed body is a 400 ``invalid_request``;
- a client that sends nothing for ``idle_timeout_s`` gets a 408 ``upload_timeout``.
The workspace (and so every byte received) is deleted when the request ends, however it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from shared.platform.errors import INVALID_REQUEST, MISSING_INPUT, PAYLOAD_TOO_LARGE, PlatformError
from shared.platform.settings import Settings

TOO_MANY_UPLOADS = "too_many_uploads"
UPLOAD_TIMEOUT = "upload_timeout"


@dataclass(frozen=True)
class ReceivedFile:
    """One file part, already on disk in the request's workspace."""

    field: str
    path: Path
    size_bytes: int
    sha256: str
    filename: str


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, ReceivedFile] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        return self.fields.get(name)


class UploadSlots:
    """Bodies being read at once: at most ``total`` in this process and ``per_key`` per API key.

    A request over either cap waits up to ``wait_s`` for a slot (its body unread), then is a 429
    ``too_many_uploads``: a client parking slow uploads cannot fill the gateway's disk or starve others,
    and a burst from one key is served in turn instead of refused.
    """

    POLL_S = 0.02

    def __init__(self, total: int, per_key: int, wait_s: float = 0.0) -> None:
        self.total = total
        self.per_key = per_key
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    @property
    def in_use(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def _try_take(self, key_id: str) -> str | None:
        """Take a slot; returns None, or the scope ("key" / "gateway") that is full."""
        with self._lock:
            if self._held[key_id] >= self.per_key:
                return "key"
            if sum(self._held.values()) >= self.total:
                return "gateway"
            self._held[key_id] += 1
            return None

    def _release(self, key_id: str) -> None:
        with self._lock:
            self._held[key_id] -= 1
            if self._held[key_id] <= 0:
                del self._held[key_id]

    @asynccontextmanager
    async def hold(self, key_id: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while (full := self._try_take(key_id)) is not None:
            if loop.time() >= deadline:
                limit = self.per_key if full == "key" else self.total
                who = "this API key" if full == "key" else "the gateway"
                raise PlatformError(
                    TOO_MANY_UPLOADS,
                    f"{who} already has {limit} uploads in progress; retry when one has finished",
                    status=429,
                    details={"limit": limit, "scope": full, "retry_after_s": 1.0},
                )
            await asyncio.sleep(self.POLL_S)
        try:
            yield
        finally:
            self._release(key_id)


def _too_large(name: str, limit: int, what: str) -> PlatformError:
    return PlatformError(
        PAYLOAD_TOO_LARGE,
        f"{name} is larger than the limit of {limit} bytes{what}",
        status=413,
        details={"field": name, "limit_bytes": limit},
    )


def _bad(message: str, **details: Any) -> PlatformError:
    return PlatformError(INVALID_REQUEST, message, status=400, details=details or None)


class _Receiver:
    """Callbacks of python-multipart's parser collect events; ``flush`` acts on them."""

    def __init__(
        self,
        directory: Path,
        file_limits: dict[str, int],
        max_fields: int,
        max_field_bytes: int,
    ) -> None:
        self.directory = directory
        self.file_limits = file_limits
        self.max_fields = max_fields
        self.max_field_bytes = max_field_bytes
        self.form = ReceivedForm()
        self.events: list[tuple[str, bytes]] = []
        self.parts = 0
        # the part being read
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._filename: str | None = None
        self._is_file = False
        self._handle: IO[bytes] | None = None
        self._digest: Any = None
        self._size = 0
        self._text = bytearray()

    # -- parser callbacks (synchronous, inside parser.write) -----------------------------------------
    def callbacks(self) -> dict[str, Any]:
        def on_part_begin() -> None:
            self.events.append(("begin", b""))

        def on_part_data(data: bytes, start: int, end: int) -> None:
            self.events.append(("data", bytes(data[start:end])))

        def on_part_end() -> None:
            self.events.append(("end", b""))

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self.events.append(("hfield", bytes(data[start:end])))

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self.events.append(("hvalue", bytes(data[start:end])))

        def on_header_end() -> None:
            self.events.append(("hend", b""))

        def on_headers_finished() -> None:
            self.events.append(("headers", b""))

        return {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        }

    # -- acting on the events ------------------------------------------------------------------------
    def flush(self) -> None:
        events, self.events = self.events, []
        for kind, data in events:
            if kind == "begin":
                self._begin()
            elif kind == "hfield":
                self._header_field += data
            elif kind == "hvalue":
                self._header_value += data
            elif kind == "hend":
                self._headers[self._header_field.lower()] = self._header_value
                self._header_field = self._header_value = b""
            elif kind == "headers":
                self._open_part()
            elif kind == "data":
                self._data(data)
            elif kind == "end":
                self._end()

    def _begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_fields:
            raise _bad(f"too many form parts (the limit is {self.max_fields})", limit=self.max_fields)
        self._headers = {}
        self._header_field = self._header_value = b""

    def _open_part(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise _bad("every multipart part needs Content-Disposition: form-data; name=...")
        self._name = options[b"name"].decode("utf-8", "replace")[:200]
        raw_filename = options.get(b"filename")
        self._filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        self._is_file = self._name in self.file_limits
        if not self._is_file and self._filename:
            raise _bad(f"unexpected file field {self._name!r}", field=self._name)
        if self._name in self.form.files or self._name in self.form.fields:
            raise _bad(f"the field {self._name!r} is given twice", field=self._name)
        self._size = 0
        self._text = bytearray()
        if self._is_file:
            path = self.directory / self._name
            self._handle = open(path, "wb")  # noqa: SIM115 - closed in _end or close()
            self._digest = hashlib.sha256()

    def _data(self, data: bytes) -> None:
        self._size += len(data)
        if self._is_file:
            limit = self.file_limits[self._name]
            if self._size > limit:
                raise _too_large(self._name, limit, "")
            assert self._handle is not None
            self._digest.update(data)
            self._handle.write(data)
        else:
            if self._size > self.max_field_bytes:
                raise _too_large(self._name, self.max_field_bytes, " (form fields)")
            self._text += data

    def _end(self) -> None:
        if self._is_file:
            assert self._handle is not None
            self._handle.close()
            self._handle = None
            path = self.directory / self._name
            if self._size == 0 and not self._filename:  # an empty file input: as if not sent
                path.unlink(missing_ok=True)
                return
            self.form.files[self._name] = ReceivedFile(
                field=self._name,
                path=path,
                size_bytes=self._size,
                sha256=self._digest.hexdigest(),
                filename=(self._filename or "")[:255],
            )
        else:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _bad(f"the field {self._name!r} is not UTF-8", field=self._name) from exc

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def _chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; 408 ``upload_timeout`` when the client sends nothing for ``idle_timeout_s``."""
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout=idle_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise PlatformError(
                UPLOAD_TIMEOUT,
                f"no data received for {idle_timeout_s:g} s; the upload was abandoned",
                status=408,
            ) from exc
        if chunk:
            yield chunk


async def _receive_urlencoded(
    request: Request, max_fields: int, max_field_bytes: int, idle_timeout_s: float
) -> ReceivedForm:
    limit = max_fields * (max_field_bytes + 256)
    body = bytearray()
    async for chunk in _chunks(request, idle_timeout_s):
        body += chunk
        if len(body) > limit:
            raise _too_large("form", limit, " (a form of text fields)")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"malformed form body: {exc}") from exc
    form = ReceivedForm()
    for name, value in pairs:
        if len(value.encode()) > max_field_bytes:
            raise _too_large(name, max_field_bytes, " (form fields)")
        if name in form.fields:
            raise _bad(f"the field {name!r} is given twice", field=name)
        form.fields[name] = value
    return form


async def receive_multipart(
    request: Request,
    directory: Path,
    *,
    file_limits: dict[str, int],
    max_fields: int,
    max_field_bytes: int,
    idle_timeout_s: float,
) -> ReceivedForm:
    """Read a ``multipart/form-data`` body into ``directory`` (see the module docstring)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type == b"application/x-www-form-urlencoded":  # text fields only (e.g. asset ids)
        return await _receive_urlencoded(request, max_fields, max_field_bytes, idle_timeout_s)
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise _bad("the request must be multipart/form-data (or a form of text fields)")
    receiver = _Receiver(directory, file_limits, max_fields, max_field_bytes)
    parser = MultipartParser(options[b"boundary"], receiver.callbacks())
    try:
        async for chunk in _chunks(request, idle_timeout_s):
            try:
                parser.write(chunk)
            except PlatformError:
                raise
            except Exception as exc:  # python-multipart's parse errors
                raise _bad(f"malformed multipart body: {exc}") from exc
            receiver.flush()
        try:
            parser.finalize()
        except Exception as exc:
            raise _bad(f"malformed multipart body: {exc}") from exc
        receiver.flush()
    finally:
        receiver.close()
    return receiver.form


def multipart_openapi(
    files: dict[str, str], fields: dict[str, str], *, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``openapi_extra`` documenting a route's multipart body (the route reads it itself)."""
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": description}
        for name, description in files.items()
    }
    properties.update({name: {"type": "string", "description": desc} for name, desc in fields.items()})
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


@contextmanager
def workspace(root: Path | None = None) -> Iterator[Path]:
    """A private directory for one request's uploads, deleted with everything in it at the end."""
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="goha-upload-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def streamed_form(
    request: Request,
    settings: Settings,
    slots: UploadSlots,
    key_id: str,
    file_fields: tuple[str, ...],
    *,
    required_file: str | None = None,
) -> AsyncIterator[ReceivedForm]:
    """Take an upload slot, stream the body into a fresh workspace; both are released on exit."""
    async with slots.hold(key_id):
        with workspace(settings.upload_dir) as tmp:
            form = await receive_multipart(
                request,
                tmp,
                file_limits=dict.fromkeys(file_fields, settings.max_upload_bytes),
                max_fields=settings.max_form_fields,
                max_field_bytes=settings.max_form_field_bytes,
                idle_timeout_s=settings.upload_idle_timeout_s,
            )
            if required_file is not None and required_file not in form.files:
                raise PlatformError(
                    MISSING_INPUT,
                    f"the file is required: upload it as the multipart field {required_file!r}",
                    status=422,
                    details={"field": required_file},
                )
            yield form
