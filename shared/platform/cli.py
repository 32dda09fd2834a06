"""The ``goha`` command. Subcommands so far:

    goha migrate [--revision head]            run the Alembic migrations on GOHA_DATABASE_URL
    goha tenants create NAME                  create a tenant
    goha keys create TENANT [--label L]       create an API key (printed once)
    goha keys revoke PREFIX

Other packages add their own subcommands (submit/status/verify/up) by extending ``build_parser``'s
``COMMANDS`` table: each entry is (name, help, add_arguments, handler).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from shared.platform import admin
from shared.platform.db import Database
from shared.platform.errors import PlatformError
from shared.platform.settings import Settings

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


def _with_db(settings: Settings, action: Callable[[Database], int]) -> int:
    db = Database(settings.database_url)
    try:
        return action(db)
    finally:
        db.dispose()


COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = [
    ("migrate", "apply database migrations", _migrate_args, _migrate),
    ("tenants", "manage tenants", _tenants_args, _tenants),
    ("keys", "manage API keys", _keys_args, _keys),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goha", description="GOHA reenactment platform")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in COMMANDS:
        command_parser = sub.add_parser(name, help=help_text)
        add_arguments(command_parser)
        command_parser.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args, Settings()))
    except PlatformError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
