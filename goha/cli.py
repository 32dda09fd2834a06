"""The ``goha`` command (docs/cli.md).

Admin (talk to the database named by GOHA_DATABASE_URL / the embedded SQLite file):

    goha migrate [--revision head]            run the Alembic migrations
    goha tenants create NAME | list           tenants
    goha keys create TENANT [--label L]       create an API key (printed once)
    goha keys revoke PREFIX

API client (``--api-url``/``--api-key`` or GOHA_API_URL / GOHA_API_KEY; ``goha.client``):

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
The client commands load only ``goha`` (and the platform's settings and error types): never the
server's ORM. The admin commands import the server modules they run when they run, and ``up`` and
``demo`` dispatch to the embedded stack's modules (``services/embedded/``).
Errors print ``error: [code] message`` (the API's error envelope) and exit 1.
Each COMMANDS entry is (name, help, add_arguments, handler).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goha.display import JobProgressBar, job_summary, progress_text, verify_recognised, verify_summary
from shared.platform.admin_arguments import add_purge_arguments
from shared.platform.errors import PlatformError
from shared.platform.settings import Settings

if TYPE_CHECKING:
    from goha.client import GohaClient
    from shared.platform.db import Database

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
    from shared.platform import admin

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
    from shared.platform import admin

    command = {"create": "create-key", "revoke": "revoke-key"}[args.action]
    return _with_db(
        settings, lambda db: admin.run_command(argparse.Namespace(**{**vars(args), "command": command}), db)
    )


def _purge_args(parser: argparse.ArgumentParser) -> None:
    add_purge_arguments(parser)


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    from shared.platform import admin

    return _with_db(
        settings,
        lambda db: admin.run_command(argparse.Namespace(**{**vars(args), "command": "purge"}), db, settings),
    )


def _with_db(settings: Settings, action: Callable[[Database], int]) -> int:
    from shared.platform.db import Database

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
    from goha.client import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL

    group = parser.add_argument_group("API")
    group.add_argument("--api-url", default=None, help=f"default: ${API_URL_ENV} or {DEFAULT_API_URL}")
    group.add_argument("--api-key", default=None, help=f"default: ${API_KEY_ENV}")
    group.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    group.add_argument("--json", action="store_true", help="print the API's JSON instead of a summary")


def _client(args: argparse.Namespace) -> GohaClient:
    from goha.client import GohaClient

    return GohaClient(args.api_url, args.api_key, timeout=args.timeout)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


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
        print(job_summary(job) if not args.json else json.dumps(job, default=str))
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
        print(job_summary(job))
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
                print(job_summary(job))
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
            f"{job['id']:36}  {job['state']:9}  {job.get('job_type', ''):7}  {progress_text(job):16}  "
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
            print(job_summary(job))
        return 0

    return run


def _verify_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path)
    _api_args(parser)


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


# -- local stack: the embedded stack's own modules --------------------------------------------------------
def _up_args(parser: argparse.ArgumentParser) -> None:
    from services.embedded import up

    up.add_arguments(parser)


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from services.embedded import up

    return up.run(args, settings)


def _demo_args(parser: argparse.ArgumentParser) -> None:
    from services.embedded import demo

    demo.add_arguments(parser)


def _demo(args: argparse.Namespace, _settings: Settings) -> int:
    from services.embedded import demo

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
