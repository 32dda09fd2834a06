"""The embedded stack: the whole platform on one machine, with nothing to install beyond ``make install``.

    with EmbeddedStack(var_dir="var") as stack:           # or: goha up
        client = stack.client()                            # GohaClient with the session's API key
        ...

Starts, all on 127.0.0.1:

- Triton (the ``tritonserver`` bundled with nvidia-pytriton, via ``services.inference.server.launch_server``)
  serving the checkpoint (default ``models/goha-<profile>.pt``);
- the gateway (``python -m services.gateway``, uvicorn) on ``port`` (default: a free one);
- one Celery worker (``celery -A services.worker.tasks worker``) on Celery's filesystem broker;

with SQLite, the broker folder, local object storage, the provenance key and the C2PA dev chain all
under ``var_dir``. Migrations run first; a tenant (``demo``) gets one stable API key, kept in
``<var_dir>/api.key`` (mode 0600) and reused by every later start while it is still valid (not revoked,
its tenant enabled), so a page or script that saved it keeps working across restarts; a revoked or
missing key is replaced by a fresh one. One stack per ``var_dir`` (a lock file says so). Jobs a previous
session left ``running`` (stopped mid-job: the filesystem broker cannot redeliver an unacknowledged
message) are handed back to ``queued`` and published again, and ``serve_forever`` runs the reconciler. Every child runs in its own session (process group) and gets
SIGTERM when this process dies; ``stop`` sends SIGTERM to the worker and the gateway together, then
to Triton, all within one grace period (``stop_grace_s``, 15 s): what is left at its end is SIGKILLed.
Logs: ``<var_dir>/logs/{triton,gateway,worker}.log``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import httpx

from goha.client import GohaClient
from shared.platform.errors import PlatformError
from shared.platform.processes import stop_process_group
from shared.platform.settings import Settings

LOGGER = logging.getLogger("goha.embedded")
ROOT = Path(__file__).resolve().parents[2]

EMBEDDED_STACK_FAILED = "embedded_stack_failed"
CHECKPOINT_MISSING = "checkpoint_missing"
PORT_IN_USE = "port_in_use"
STACK_ALREADY_RUNNING = "stack_already_running"
SESSION_KEY_LABEL = "embedded-session"
KEY_FILE_NAME = "api.key"  # the stack's stable API key, 0600, under var_dir
TRITON_STOP_SHARE_S = 5.0  # of the stop grace, kept for Triton after the worker and the gateway
STOP_MARGIN_S = 2.0  # of the stop grace, for SIGKILL, reaping, cleanup and the process's own exit
TRITON_KILL_GRACE_S = 0.1  # launch_server's own grace at exit: stop() has given Triton its share already

# GOHA_* variables the stack decides itself; a user's values for these would point the children at
# other servers, so they are replaced (every other GOHA_* knob passes through to the children).
_OWNED_SETTINGS = (
    "embedded",
    "var_dir",
    "database_url",
    "broker_url",
    "result_backend",
    "broker_folder",
    "storage_backend",
    "local_storage_dir",
    "provenance_key_path",
    "inference_backend",
    "triton_url",
    "triton_access_token",
    "checkpoint_path",
    "model_profile",
    "public_base_url",
)


class EmbeddedStackError(PlatformError):
    def __init__(self, message: str, *, code: str = EMBEDDED_STACK_FAILED) -> None:
        super().__init__(code, message, status=500)


def _die_with_parent() -> None:
    """preexec hook: the child gets SIGTERM if the launching process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class EmbeddedStack:
    """Context manager running Triton + gateway + one worker on embedded defaults (see module doc)."""

    def __init__(
        self,
        var_dir: str | os.PathLike[str] = "var",
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        profile: str = "tiny",
        host: str = "127.0.0.1",
        port: int | None = None,
        tenant: str = "demo",
        worker_concurrency: int = 1,
        triton_threads: int | None = None,
        startup_timeout_s: float = 300.0,
        stop_grace_s: float = 15.0,
        env: Mapping[str, str] | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.var_dir = Path(var_dir).resolve()
        self.profile = profile
        self.checkpoint = Path(checkpoint).resolve() if checkpoint else ROOT / "models" / f"goha-{profile}.pt"
        self.host = host
        self.port = port
        self.tenant = tenant
        self.worker_concurrency = worker_concurrency
        self.triton_threads = triton_threads
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.extra_env = dict(env or {})
        self.announce = announce or (lambda message: LOGGER.info("%s", message))
        self.log_dir = self.var_dir / "logs"
        self.api_key: str | None = None
        self.api_key_prefix: str | None = None
        self.triton: Any = None  # services.inference.server.ServerHandle once started
        self.timings: dict[str, float] = {}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._exit_stack = contextlib.ExitStack()
        self._settings: Settings | None = None
        self._lock_handle: TextIO | None = None
        self._started = False

    # -- public surface ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedStackError("the stack is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def env_file(self) -> Path:
        """``source`` it in another shell to point the CLI at this stack (exists while it runs)."""
        return self.var_dir / "embedded.env"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def client(self, *, timeout: float = 120.0) -> GohaClient:
        return GohaClient(self.url, self.api_key, timeout=timeout)

    def pids(self) -> dict[str, int]:
        """Process-group leaders of the running children (each group holds that part's processes)."""
        found = {name: process.pid for name, process in self._processes.items()}
        if self.triton is not None:
            found["triton"] = int(self.triton.pid)
        return found

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._started:
            raise EmbeddedStackError("the stack is already started")
        if not self.checkpoint.is_file():
            raise EmbeddedStackError(
                f"checkpoint {self.checkpoint} does not exist; pass --checkpoint PATH "
                f"(train one with `python -m shared.training`)",
                code=CHECKPOINT_MISSING,
            )
        if self.port is not None and not _port_free(self.host, self.port):
            raise EmbeddedStackError(
                f"port {self.port} on {self.host} is in use; pick another with --port", code=PORT_IN_USE
            )
        began = time.perf_counter()
        self._lock_var_dir()  # before anything touches var_dir: it may belong to a running stack
        self._started = True
        try:
            self._prepare_state()
            self._start_triton()
            self._start_services()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["startup_s"] = round(time.perf_counter() - began, 2)
        self._write_env_file()

    def check_alive(self) -> None:
        """Raise ``EmbeddedStackError`` (with the log's tail) if any part of the stack has exited."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise EmbeddedStackError(
                    f"the {name} exited with code {process.returncode}; {self.log_path(name)}:\n"
                    f"{log_tail(self.log_path(name))}"
                )
        if self.triton is not None and not _alive(int(self.triton.pid)):
            raise EmbeddedStackError(
                f"Triton exited; {self.log_path('triton')}:\n{log_tail(self.log_path('triton'))}"
            )

    def serve_forever(self, poll_s: float = 1.0) -> None:
        """Block until a part of the stack dies (raises) or the caller is interrupted (Ctrl-C); meanwhile
        the reconciler re-publishes jobs stuck in ``queued`` every ``reconcile_interval_s`` and a thread
        delivers job-finished webhooks (``shared.platform.webhooks.Dispatcher``)."""
        from shared.platform import webhooks
        from shared.platform.db import Database

        assert self._settings is not None
        next_reconcile = time.monotonic() + self._settings.reconcile_interval_s
        database = Database(self._settings.database_url)
        # Job-finished webhooks are delivered here, never by the worker's task.
        dispatcher = webhooks.Dispatcher(database.sessionmaker, self._settings).start()
        try:
            while True:
                self.check_alive()
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + self._settings.reconcile_interval_s
                    try:
                        recover_jobs(self._settings, hand_back_running=False)
                    except Exception as exc:  # the database being busy must not stop the stack
                        LOGGER.warning("reconciler pass failed: %s", exc)
                time.sleep(poll_s)
        finally:
            # Idle, it stops at once; a delivery in flight keeps its claim and is retried after it lapses
            # (the thread is a daemon): stopping must fit the stop grace.
            dispatcher.stop(timeout_s=1.0)
            database.dispose()

    def stop(self, *, requested_at: float | None = None) -> None:
        """Stop worker, gateway and Triton within ``stop_grace_s`` in all, counted from ``requested_at``
        (``time.monotonic()`` of the Ctrl-C; default now); idempotent.

        SIGTERM goes to the worker and the gateway together (the worker does not need the gateway), then,
        once the worker is gone, to Triton (a running step must not lose its model server). One deadline
        covers all three: Triton keeps at least ``TRITON_STOP_SHARE_S`` of it, and whatever still runs
        at its end is SIGKILLed with its process group. Timings: ``stop_s`` and ``stop_<part>_s``.
        """
        if not self._started:
            return
        began = time.perf_counter()
        start = time.monotonic() if requested_at is None else min(requested_at, time.monotonic())
        deadline = start + max(self.stop_grace_s - STOP_MARGIN_S, 0.0)
        triton_share = min(TRITON_STOP_SHARE_S, self.stop_grace_s / 3)
        parts = {name: self._processes.pop(name) for name in ("worker", "gateway") if name in self._processes}
        for name, process in parts.items():
            if process.poll() is None:
                if name == "worker":
                    # The Celery main process only: it shuts its pool down in order (a SIGTERM straight to
                    # a prefork child is a lost worker, and Celery waits for it). The group is killed below.
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                else:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGTERM)
        for name, process in parts.items():
            _wait_until(process, deadline - triton_share)
            stop_process_group(process, 0.0, name=name)  # SIGKILL whatever is left of its group; reap
            self.timings[f"stop_{name}_s"] = round(time.perf_counter() - began, 2)
        self.env_file.unlink(missing_ok=True)
        try:
            if self.triton is not None:
                pid = int(self.triton.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # PyTriton's leader stops tritonserver and its proxies
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            # launch_server's exit: SIGKILL of Triton's session after its (short) grace, workspace cleanup.
            self._exit_stack.close()
            self.timings["stop_triton_s"] = round(time.perf_counter() - began, 2)
        finally:
            self.triton = None
            shutil.rmtree(self.var_dir / "run", ignore_errors=True)
            self._unlock_var_dir()
            self._started = False
            self.timings["stop_s"] = round(time.perf_counter() - began, 2)

    # -- steps ---------------------------------------------------------------------------------------------
    def _owned_values(self) -> dict[str, Any]:
        var = self.var_dir
        return {
            "embedded": True,
            "var_dir": var,
            "database_url": f"sqlite:///{var / 'goha.sqlite3'}",
            "broker_url": "filesystem://",
            "result_backend": f"db+sqlite:///{var / 'celery-results.sqlite3'}",
            "broker_folder": var / "broker",
            "storage_backend": "local",
            "local_storage_dir": var / "storage",
            "provenance_key_path": var / "provenance.key",
            "checkpoint_path": self.checkpoint,
            "model_profile": self.profile,
            "public_base_url": "",
        }

    def _lock_var_dir(self) -> None:
        """Two stacks on one var dir would share the SQLite file and the broker folder: refuse."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.var_dir / "stack.lock", "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise EmbeddedStackError(
                f"another embedded stack is running on {self.var_dir}; stop it or pass another --var-dir",
                code=STACK_ALREADY_RUNNING,
            ) from None
        self._lock_handle = handle

    def _unlock_var_dir(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing releases the flock
            self._lock_handle = None

    def _prepare_state(self) -> None:
        from shared.platform import admin
        from shared.platform.db import Database
        from shared.platform.migrate import upgrade
        from shared.platform.provenance import load_signing_key

        self.log_dir.mkdir(parents=True, exist_ok=True)
        run_dir = self.var_dir / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "prometheus").mkdir(parents=True)
        settings = Settings(**self._owned_values())
        self._settings = settings
        upgrade(settings.database_url)
        # Made here once, so the gateway and the worker never race to create the signing key.
        load_signing_key(settings)
        database = Database(settings.database_url)
        try:
            try:
                admin.create_tenant(database, self.tenant)
            except PlatformError as exc:
                if exc.code != "tenant_exists":
                    raise
            self.api_key, self.api_key_prefix = self._stable_key(database)
        finally:
            database.dispose()
        # Published before the worker starts: it finds the messages in the broker folder.
        recovered = recover_jobs(settings, hand_back_running=True)
        if recovered:
            self.announce(f"re-queued {len(recovered)} job(s) left unfinished by an earlier session")

    @property
    def key_file(self) -> Path:
        """The stack's API key (mode 0600): reused across restarts while the database accepts it."""
        return self.var_dir / KEY_FILE_NAME

    def _stable_key(self, database: Any) -> tuple[str, str]:
        """The key saved in ``key_file`` if it still authenticates as this stack's tenant, else a new one
        (saved there). Returns (key, prefix)."""
        from shared.platform import admin, repository

        saved = _read_key_file(self.key_file)
        if saved:
            with database.session() as session:
                row = repository.authenticate(session, saved)
                tenant = repository.find_tenant(session, self.tenant) if row is not None else None
                if row is not None and tenant is not None and row.tenant_id == tenant.id:
                    os.chmod(self.key_file, 0o600)  # a copy restored with wider permissions is tightened
                    return saved, row.prefix
            LOGGER.info("the saved API key in %s is no longer valid; making a new one", self.key_file)
        row, key = admin.create_key(database, self.tenant, label=SESSION_KEY_LABEL)
        _write_private(self.key_file, key + "\n")
        return key, row.prefix

    def _start_triton(self) -> None:
        from services.inference.server import launch_server

        began = time.perf_counter()
        self.announce(f"starting Triton with {self.checkpoint.name} (profile {self.profile})")
        self.triton = self._exit_stack.enter_context(
            launch_server(
                self.checkpoint,
                profile=self.profile,
                threads=self.triton_threads,
                startup_timeout_s=self.startup_timeout_s,
                # stop() has already given Triton its share of the grace: launch_server only SIGKILLs.
                stop_grace_s=TRITON_KILL_GRACE_S,
                log_path=self.log_path("triton"),
            )
        )
        self.timings["triton_start_s"] = round(time.perf_counter() - began, 2)

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOHA_") or not _owned(k)}
        for name, value in self._owned_values().items():
            env[f"GOHA_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        env.update(
            {
                "GOHA_INFERENCE_BACKEND": "triton",
                "GOHA_TRITON_URL": self.triton.grpc_url,
                "GOHA_TRITON_ACCESS_TOKEN": self.triton.access_token,
                "PROMETHEUS_MULTIPROC_DIR": str(self.var_dir / "run" / "prometheus"),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        with open(self.log_path(name), "ab") as log:
            self._processes[name] = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C in the terminal reaches only us
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def _start_services(self) -> None:
        if self.port is None:
            from services.inference.server import free_port

            self.port = free_port(self.host)
        env = self._child_env()
        self._worker_log_offset = (
            self.log_path("worker").stat().st_size if self.log_path("worker").exists() else 0
        )
        self.announce(f"starting the gateway on {self.url} and one worker")
        self._spawn(
            "gateway",
            [sys.executable, "-m", "services.gateway", "--host", self.host, "--port", str(self.port)],
            env,
        )
        assert self._settings is not None
        self._spawn(
            "worker",
            [
                sys.executable, "-m", "celery", "-A", "services.worker.tasks", "worker",
                "--pool", "prefork", "--concurrency", str(self.worker_concurrency),
                "-Q", self._settings.queue_name, "-n", f"goha-embedded-{os.getpid()}@%h",
                "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            env,
        )  # fmt: skip

    def _worker_ready(self) -> bool:
        try:
            with self.log_path("worker").open("rb") as log:
                log.seek(self._worker_log_offset)
                return b" ready." in log.read()
        except OSError:
            return False

    def _gateway_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_ready(self) -> None:
        began = time.perf_counter()
        deadline = time.monotonic() + self.startup_timeout_s
        pending = {"gateway": self._gateway_ready, "worker": self._worker_ready}
        while pending:
            self.check_alive()
            for name, probe in list(pending.items()):
                if probe():
                    self.timings[f"{name}_ready_s"] = round(time.perf_counter() - began, 2)
                    del pending[name]
            if pending and time.monotonic() > deadline:
                names = ", ".join(pending)
                raise EmbeddedStackError(
                    f"{names} not ready after {self.startup_timeout_s:.0f} s; logs in {self.log_dir}"
                )
            if pending:
                time.sleep(0.2)

    def _write_env_file(self) -> None:
        _write_private(self.env_file, f"export GOHA_API_URL={self.url}\nexport GOHA_API_KEY={self.api_key}\n")


def recover_jobs(settings: Settings, *, hand_back_running: bool) -> list[str]:
    """Re-publish what an earlier session left behind; returns the job ids published.

    With ``hand_back_running`` (only safe while no worker runs on this var dir, i.e. at start under the
    lock), jobs still ``running`` go back to ``queued``. Then the reconciler publishes every queued job
    whose publish failed, was handed back, or is older than ``reconcile_stale_after_s``.
    """
    from sqlalchemy import select

    from services.reconciler.reconcile import reconcile_once
    from shared.platform import webhooks
    from shared.platform.db import Database
    from shared.platform.jobs import JobState, transition
    from shared.platform.models import Job
    from shared.platform.queue import enqueue_job, make_celery

    database = Database(settings.database_url)
    try:
        if hand_back_running:
            with database.session() as session:
                for job in session.scalars(select(Job).where(Job.state == JobState.RUNNING.value)):
                    transition(
                        session,
                        job,
                        JobState.QUEUED,
                        reason="embedded stack restarted: the previous session stopped mid-job",
                    )
        app = make_celery(settings)
        try:
            report = reconcile_once(
                database,
                lambda job_id: enqueue_job(job_id, app),
                stale_after_s=settings.reconcile_stale_after_s,
                max_enqueues=settings.reconcile_max_enqueues,
            )
        finally:
            app.close()
        webhooks.deliver_pending(database.sessionmaker, settings)  # retries of job-finished webhooks
        return report.requeued
    finally:
        database.dispose()


def _wait_until(process: subprocess.Popen[bytes], deadline: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=max(deadline - time.monotonic(), 0.0))


def _read_key_file(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text or None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (0600), atomically (temp file + rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)  # whatever the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _owned(env_name: str) -> bool:
    return env_name.removeprefix("GOHA_").lower() in _OWNED_SETTINGS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True
