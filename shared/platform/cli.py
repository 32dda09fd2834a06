"""The ``goha`` command (docs/cli.md).

Admin (talk to the database named by GOHA_DATABASE_URL / the embedded SQLite file):

    goha migrate [--revision head]            run the Alembic migrations
    goha tenants create NAME | list           tenants
    goha keys create TENANT [--label L]       create an API key (printed once)
    goha keys revoke PREFIX

API client (``--api-url``/``--api-key`` or GOHA_API_URL / GOHA_API_KEY; ``shared.platform.client``):

    goha submit PORTRAIT [DRIVING] --consent-subject S --consent-method M [--wait] [-o out.mp4]
    goha status [JOB]                         one job, or your latest jobs (--cursor: the next page)
    goha wait JOB [-o out.mp4]                follow a job to its end (progress bar), then download
    goha download JOB [-o out.mp4]            default: ./<job id>.mp4
    goha cancel JOB
    goha verify VIDEO                         watermark / C2PA / provenance check

Local:

    goha up                                   the embedded stack in the foreground until Ctrl-C
    goha demo                                 the demo job (same as ``make demo``)

A JOB may be a unique prefix of its id (at least 8 characters; ``resolve_job_id``).
Errors print ``error: [code] message`` (the API's error envelope) and exit 1.
Each COMMANDS entry is (name, help, add_arguments, handler).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.platform import admin
from shared.platform.db import Database
from shared.platform.errors import PlatformError
from shared.platform.settings import Settings

if TYPE_CHECKING:
    from shared.platform.client import GohaClient

Handler = Callable[[argparse.Namespace, Settings], int]


def _migrate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", default="head")
    parser.add_argument("--database-url", default=None)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.platform.migrate import current_revision, upgrade

    url = args.database_url or settings.database_url
    upgrade(url, args.revision)
    print(json.dumps({"database": url.split("@")[-1], "revision": current_revision(url)}))
    return 0


def _tenants_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("create").add_argument("name")
    sub.add_parser("list")


def _tenants(args: argparse.Namespace, settings: Settings) -> int:
    command = {"create": "create-tenant", "list": "list-tenants"}[args.action]
    return _with_db(
        settings, lambda db: admin.run_command(argparse.Namespace(**{**vars(args), "command": command}), db)
    )


def _keys_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create an API key; printed once")
    create.add_argument("tenant")
    create.add_argument("--label", default="")
    create.add_argument("--rate-limit", type=int, default=None)
    sub.add_parser("revoke").add_argument("prefix")


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    command = {"create": "create-key", "revoke": "revoke-key"}[args.action]
    return _with_db(
        settings, lambda db: admin.run_command(argparse.Namespace(**{**vars(args), "command": command}), db)
    )


def _purge_args(parser: argparse.ArgumentParser) -> None:
    admin.add_purge_arguments(parser)


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    return _with_db(
        settings,
        lambda db: admin.run_command(argparse.Namespace(**{**vars(args), "command": "purge"}), db, settings),
    )


def _with_db(settings: Settings, action: Callable[[Database], int]) -> int:
    db = Database(settings.database_url)
    try:
        return action(db)
    finally:
        db.dispose()


# -- API client commands -------------------------------------------------------------------------------
VERIFY_RECOGNISED, VERIFY_NOT_RECOGNISED, VERIFY_NOT_AVAILABLE = 0, 3, 4
LABEL_CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
CONSENT_METHODS = ("written_release", "electronic_signature", "recorded_verbal", "self")
OPTION_FLAGS: tuple[tuple[str, str, type, tuple[str, ...] | None, str], ...] = (
    # (flag, dest, type, choices, help); argparse lists the choices in --help
    (
        "--motion-mode",
        "motion_mode",
        str,
        ("relative", "absolute"),
        "relative (default): the driver's motion from its first frame, applied to the portrait's pose; "
        "absolute: the driver's pose as it is",
    ),
    (
        "--expression-scale",
        "expression_scale",
        float,
        None,
        "0..3, default 1: how strongly expressions transfer",
    ),
    (
        "--smoothing",
        "smoothing",
        float,
        None,
        "0..1, default 0.5: temporal smoothing of the motion, 0 = none",
    ),
    (
        "--output-size",
        "output_size",
        int,
        None,
        "square output side in pixels with --paste-back false (default: the API's, 512)",
    ),
    ("--output-fps", "output_fps", float, None, "default: the driving clip's rate"),
    ("--frame-limit", "frame_limit", int, None, "render at most this many frames"),
    (
        "--label-corner",
        "label_corner",
        str,
        LABEL_CORNERS,
        "where the visible AI label goes (default bottom-right)",
    ),
    (
        "--paste-back",
        "paste_back",
        str,
        ("true", "false"),
        "true (default): the head pasted back into the portrait's framing; false: the square face crop",
    ),
)


def _api_args(parser: argparse.ArgumentParser) -> None:
    from shared.platform.client import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL

    group = parser.add_argument_group("API")
    group.add_argument("--api-url", default=None, help=f"default: ${API_URL_ENV} or {DEFAULT_API_URL}")
    group.add_argument("--api-key", default=None, help=f"default: ${API_KEY_ENV}")
    group.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    group.add_argument("--json", action="store_true", help="print the API's JSON instead of a summary")


def _client(args: argparse.Namespace) -> GohaClient:
    from shared.platform.client import GohaClient

    return GohaClient(args.api_url, args.api_key, timeout=args.timeout)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _progress_text(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    done, total = progress.get("frames_done") or 0, progress.get("frames_total")
    return f"{done}/{total} frames" if total else "-"


def _stage_text(job: dict[str, Any]) -> str:
    """What the job is doing (the API's ``progress.stage_text``, e.g. "animating 40/75"), and the
    worker's estimate of the time left when it has one (measured stage rates; never a guess)."""
    progress = job.get("progress") or {}
    text = str(progress.get("stage_text") or progress.get("stage") or job.get("state") or "")
    eta = progress.get("eta_s")
    if isinstance(eta, int | float) and job.get("state") == "running":
        text += f", about {_duration(eta)} left"
    return text


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _job_summary(job: dict[str, Any]) -> str:
    lines = [
        f"job       {job['id']}",
        f"state     {job['state']}  ({job.get('job_type', 'reenact')}, attempt {job.get('attempts', 0)})",
        f"progress  {_progress_text(job)}",
        f"created   {job.get('created_at', '-')}",
    ]
    if job.get("state") in ("queued", "running"):
        lines.insert(3, f"stage     {_stage_text(job)}")
    if job.get("finished_at"):
        lines.append(f"finished  {job['finished_at']}")
    timings = job.get("timings") or {}
    if timings:
        shown = ", ".join(f"{name.removesuffix('_s')} {value:.1f}s" for name, value in timings.items())
        lines.append(f"timings   {shown}")
    if job.get("error"):
        lines.append(f"error     [{job['error'].get('code')}] {job['error'].get('message')}")
    if job.get("media_deleted_at"):
        lines.append(f"deleted   {job['media_deleted_at']} (result and inputs erased; provenance kept)")
    return "\n".join(lines)


class JobProgressBar:
    """Progress of a job on stderr: a tqdm bar over its frames with the worker's stage and its estimate of
    the time left as postfix on a terminal (tqdm's own rate and ETA are left out: frames only move while
    animating, so a rate over the whole job would be wrong); one line per change of state, stage or frame
    count otherwise, so logs stay readable."""

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} frames, {postfix}"

    def __init__(self, enabled: bool, *, interactive: bool | None = None) -> None:
        self.enabled = enabled
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar: Any = None
        self._last: tuple[str, str, int, int | None] | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        if not self.enabled:
            return
        progress = job.get("progress") or {}
        total = progress.get("frames_total")
        done = int(progress.get("frames_done") or 0)
        state = str(job.get("state"))
        stage = _stage_text(job)
        if not self.interactive:
            key = (state, str(progress.get("stage_text") or progress.get("stage") or ""), done, total)
            if key != self._last:
                self._last = key
                print(
                    f"{job['id'][:8]} {state} {done}/{total if total else '?'} frames ({stage})",
                    file=sys.stderr,
                )
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=total,
                unit="frame",
                desc=job["id"][:8],
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format=self.BAR_FORMAT,
            )
        if total and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(stage, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("portrait", type=Path, help="JPEG, PNG or WebP portrait with one face")
    parser.add_argument("driving", type=Path, nargs="?", default=None, help="driving video (not for orbit)")
    parser.add_argument("--job-type", default="reenact", choices=["reenact", "orbit"])
    for flag, dest, kind, choices, help_text in OPTION_FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, choices=choices, default=None, help=help_text)
    consent = parser.add_argument_group("consent attestation (required by the API)")
    consent.add_argument("--consent-subject", default=None, help="who consented: the person shown")
    consent.add_argument(
        "--consent-method", default=None, choices=CONSENT_METHODS, help="how the consent was given"
    )
    consent.add_argument("--consent-obtained-at", default=None, help="ISO 8601 with timezone (default: now)")
    consent.add_argument("--consent-reference", default=None, help="e.g. the release document's id")
    consent.add_argument("--consent-attested-by", default=None, help="who at your organisation attests this")
    parser.add_argument("--idempotency-key", default=None, help="repeat-safe submission key")
    parser.add_argument(
        "--callback-url", default=None, help="https URL to POST (signed) when the job has finished"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the job (progress bar on stderr)")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="download the MP4 here (implies --wait)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    _api_args(parser)


def _submit(args: argparse.Namespace, _settings: Settings) -> int:
    consent = {
        "consent_subject": args.consent_subject,
        "consent_method": args.consent_method,
        "consent_obtained_at": args.consent_obtained_at,
        "consent_reference": args.consent_reference,
        "consent_attested_by": args.consent_attested_by,
    }
    if args.consent_subject or args.consent_method:
        if not args.consent_obtained_at:
            consent["consent_obtained_at"] = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    options = {dest: getattr(args, dest) for _, dest, _, _, _ in OPTION_FLAGS}
    with _client(args) as client:
        job = client.submit(
            args.portrait,
            args.driving,
            job_type=args.job_type,
            options=options,
            consent={k: v for k, v in consent.items() if v is not None},
            idempotency_key=args.idempotency_key,
            callback_url=args.callback_url,
        )
        if not (args.wait or args.output):
            if args.json:
                _print_json(job)
            else:
                print(job["id"])
                print(f"# {job['state']}; follow it with: goha status {job['id']}", file=sys.stderr)
            return 0
        print(f"# submitted job {job['id']}", file=sys.stderr)
        return _follow(client, job["id"], args)


def _follow(client: GohaClient, job_id: str, args: argparse.Namespace) -> int:
    """Wait for the job with a progress bar, then print it (and download it with ``-o``). Ctrl-C stops
    only the waiting: the job goes on in the stack, and the message says how to follow or cancel it."""
    bar = JobProgressBar(enabled=not args.no_progress)
    try:
        job = client.wait(job_id, on_progress=bar, poll_interval_s=args.poll_interval)
    except KeyboardInterrupt:
        bar.close()  # the bar's line first, then the message
        follow = f"goha wait {job_id}" + (f" -o {args.output}" if args.output else "")
        print(
            f"\n# stopped waiting; job {job_id} goes on.\n"
            f"#   follow it:  {follow}\n"
            f"#   cancel it:  goha cancel {job_id}",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
    if job["state"] != "succeeded":
        print(_job_summary(job) if not args.json else json.dumps(job, default=str))
        error = job.get("error") or {"code": job["state"], "message": f"the job ended {job['state']}"}
        print(f"error: [{error.get('code')}] {error.get('message')}", file=sys.stderr)
        return 1
    download = client.download_result(job["id"], args.output) if args.output else None
    if args.json:
        _print_json(
            {
                **job,
                **({"download": {"path": str(download.path), "sha256": download.sha256}} if download else {}),
            }
        )
    else:
        print(_job_summary(job))
        if download is not None:
            print(f"saved     {download.path} ({download.size_bytes} bytes, sha256 {download.sha256[:16]}…)")
    return 0


def _wait_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job id, or a unique prefix of at least 8 characters")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="download the MP4 here once it succeeded"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    _api_args(parser)


def _wait(args: argparse.Namespace, _settings: Settings) -> int:
    with _client(args) as client:
        return _follow(client, client.resolve_job_id(args.job), args)


def _status_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "job",
        nargs="?",
        default=None,
        help="a job id (or unique prefix, >= 8 characters); without it, your latest jobs",
    )
    parser.add_argument(
        "--state",
        default=None,
        choices=("queued", "running", "succeeded", "failed", "cancelled"),
        help="list only jobs in this state",
    )
    parser.add_argument("--limit", type=int, default=20, help="jobs per page (1..100)")
    parser.add_argument("--cursor", default=None, help="the next page: the cursor the previous page printed")
    _api_args(parser)


def _status(args: argparse.Namespace, _settings: Settings) -> int:
    with _client(args) as client:
        if args.job:
            job = client.get_job(client.resolve_job_id(args.job))
            if args.json:
                _print_json(job)
            else:
                print(_job_summary(job))
            return 0
        page = client.list_jobs(state=args.state, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(page)
        return 0
    items = page.get("items", [])
    if not items:
        print("no jobs")
        return 0
    print(f"{'JOB':36}  {'STATE':9}  {'TYPE':7}  {'PROGRESS':16}  CREATED")
    for job in items:
        print(
            f"{job['id']:36}  {job['state']:9}  {job.get('job_type', ''):7}  {_progress_text(job):16}  "
            f"{job.get('created_at', '')}"
        )
    if page.get("next_cursor"):
        more = f"goha status --limit {args.limit}"
        if args.state:
            more += f" --state {args.state}"
        print(f"# more: {more} --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


def _download_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job id, or a unique prefix of at least 8 characters")
    parser.add_argument("-o", "--output", type=Path, default=None, help="default: ./<job id>.mp4")
    _api_args(parser)


def _download(args: argparse.Namespace, _settings: Settings) -> int:
    with _client(args) as client:
        job_id = client.resolve_job_id(args.job)
        download = client.download_result(job_id, args.output or Path(f"{job_id}.mp4"))
    print(f"saved {download.path} ({download.size_bytes} bytes, sha256 {download.sha256})")
    return 0


def _job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job id, or a unique prefix of at least 8 characters")
    _api_args(parser)


def _job_command(call: Callable[[GohaClient, str], dict[str, Any]]) -> Handler:
    """A command that sends one request about a job and prints the job it answers."""

    def run(args: argparse.Namespace, _settings: Settings) -> int:
        with _client(args) as client:
            job = call(client, client.resolve_job_id(args.job))
        if args.json:
            _print_json(job)
        else:
            print(_job_summary(job))
        return 0

    return run


def _verify_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path)
    _api_args(parser)


def verify_summary(report: dict[str, Any]) -> str:
    """Human lines for a /v1/verify answer (also used by the demo)."""
    watermark = report.get("watermark") or {}
    manifest = report.get("manifest") or {}
    lines = [f"verdict    {report.get('message', '')}"]
    if report.get("status") != "checked":
        return "\n".join(
            [*lines, "checked    nothing: no detector in this deployment (not a negative answer)"]
        )
    lines.append(
        f"watermark  {'found' if watermark.get('found') else 'not found'}"
        f" ({watermark.get('confident_bits', 0)}/32 confident bits)"
    )
    if manifest.get("present"):
        state = "valid" if manifest.get("valid") else "INVALID"
        trust = "trusted" if manifest.get("trusted") else "untrusted signer"
        lines.append(f"c2pa       {state}, {trust}, names job {manifest.get('job_id')}")
    else:
        lines.append("c2pa       no manifest")
    if report.get("job_id"):
        lines.append(
            f"job        {report['job_id']} ({'your tenant' if report.get('same_tenant') else 'another tenant'})"
        )
    for name, value in (report.get("checks") or {}).items():
        lines.append(f"check      {name}: {value}")
    return "\n".join(lines)


def verify_recognised(report: dict[str, Any]) -> bool:
    manifest = report.get("manifest") or {}
    return bool(
        (report.get("watermark") or {}).get("found") or (manifest.get("present") and manifest.get("valid"))
    )


def _verify(args: argparse.Namespace, _settings: Settings) -> int:
    with _client(args) as client:
        report = client.verify(args.video)
    if args.json:
        _print_json(report)
    else:
        print(verify_summary(report))
    if report.get("status") != "checked":
        return VERIFY_NOT_AVAILABLE
    return VERIFY_RECOGNISED if verify_recognised(report) else VERIFY_NOT_RECOGNISED


# -- local stack -------------------------------------------------------------------------------------------
def _stack_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--var-dir", type=Path, default=None, help="state directory (default: GOHA_VAR_DIR or ./var)"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: models/goha-<profile>.pt")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--triton-threads", type=int, default=None, help="torch threads of the model server")


def _up_args(parser: argparse.ArgumentParser) -> None:
    _stack_args(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="gateway port (0: any free port)")
    parser.add_argument("--tenant", default="demo", help="tenant that gets this session's API key")


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from shared.platform.embedded import EmbeddedStack

    def announce(message: str) -> None:
        print(f"# {message}", file=sys.stderr, flush=True)

    stack = EmbeddedStack(
        args.var_dir or settings.var_dir,
        checkpoint=args.checkpoint,
        profile=args.profile,
        host=args.host,
        port=args.port or None,
        tenant=args.tenant,
        triton_threads=args.triton_threads,
        announce=announce,
    )
    # SIGTERM (kill, systemd, a test harness) stops the stack as cleanly as Ctrl-C does. SIGINT is set
    # explicitly too: a process started in the background by a shell inherits it ignored.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        stack.start()
        print(
            f"GOHA embedded stack is up ({stack.timings['startup_s']:.0f} s). Ctrl-C stops it.\n"
            f"  web page  {stack.url}/   (paste the key below)\n"
            f"  API       {stack.url}   (reference: {stack.url}/docs)\n"
            f"  API key   {stack.api_key}   (tenant {args.tenant}; kept in {stack.key_file}, the same at every start)\n"
            f"  state     {stack.var_dir}\n"
            f"  logs      {stack.log_dir}/{{triton,gateway,worker}}.log\n"
            f"In another shell:  . {stack.env_file}   (or: export GOHA_API_URL={stack.url} GOHA_API_KEY=…)",
            flush=True,
        )
        stack.serve_forever()
    except KeyboardInterrupt:
        announce("stopping the embedded stack")
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop(requested_at=_INTERRUPTED_AT[0])  # the grace counts from the Ctrl-C
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    took = time.monotonic() - (_INTERRUPTED_AT[0] or time.monotonic())
    announce(f"stopped ({took:.1f} s after the signal)" if _INTERRUPTED_AT[0] else "stopped")
    if stack.timings.get("startup_s") is not None:
        # Every child is gone and nothing is left to save: leave now. Finalising the interpreter (torch
        # and the Triton client are loaded) took up to 2 s more, past the documented 15 s grace.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


_INTERRUPTED_AT: list[float | None] = [None]  # time.monotonic() of the first Ctrl-C / SIGTERM


def _raise_interrupt(_signum: int, _frame: object) -> None:
    if _INTERRUPTED_AT[0] is None:
        _INTERRUPTED_AT[0] = time.monotonic()
    raise KeyboardInterrupt


def _demo_args(parser: argparse.ArgumentParser) -> None:
    from shared.platform import demo

    demo.add_arguments(parser)


def _demo(args: argparse.Namespace, _settings: Settings) -> int:
    from shared.platform import demo

    return demo.run(args)


COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = [
    ("migrate", "apply database migrations", _migrate_args, _migrate),
    ("tenants", "manage tenants", _tenants_args, _tenants),
    ("keys", "manage API keys", _keys_args, _keys),
    (
        "purge",
        "retention: erase the media of jobs finished (and inputs uploaded) longer ago than N days",
        _purge_args,
        _purge,
    ),
    ("submit", "submit a job (portrait + driving video) and optionally wait for it", _submit_args, _submit),
    ("status", "show one job, or list your latest jobs", _status_args, _status),
    ("wait", "follow a job to its end with a progress bar (and download it with -o)", _wait_args, _wait),
    ("download", "download a finished job's MP4", _download_args, _download),
    ("cancel", "cancel a queued or running job", _job_args, _job_command(lambda c, job: c.cancel(job))),
    (
        "delete",
        "delete a finished job's result, inputs and cached avatar (its signed record stays)",
        _job_args,
        _job_command(lambda c, job: c.delete_data(job)),
    ),
    (
        "verify",
        "check a video for the platform's watermark, C2PA manifest and provenance",
        _verify_args,
        _verify,
    ),
    ("up", "run the embedded stack (Triton, gateway, worker) in the foreground until Ctrl-C", _up_args, _up),
    ("demo", "run the demo job on the embedded stack (make demo)", _demo_args, _demo),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goha", description="GOHA reenactment platform")
    parser.add_argument("--version", action="version", version=f"goha {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in COMMANDS:
        command_parser = sub.add_parser(name, help=help_text)
        add_arguments(command_parser)
        command_parser.set_defaults(handler=handler)
    return parser


def package_version() -> str:
    """The installed ``goha-platform`` version (pyproject.toml), or "unknown" outside an install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("goha-platform")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args, Settings()))
    except PlatformError as exc:  # the API's ApiError included: its code and message, as the API sent them
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
