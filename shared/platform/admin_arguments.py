"""The admin command line's arguments, argparse only: ``python -m shared.platform.admin`` (``admin.py``)
registers them all, and the ``goha`` command (``goha/cli.py``) reuses the purge flags without loading
the database layer that ``admin.py`` imports.
"""

from __future__ import annotations

import argparse


def add_purge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than-days", type=float, default=None, help="default: GOHA_RETENTION_DAYS")
    parser.add_argument("--dry-run", action="store_true", help="list what would be erased, erase nothing")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the admin commands on a subparser set (``python -m shared.platform.admin``)."""
    p = sub.add_parser("create-tenant", help="create a tenant")
    p.add_argument("name")
    p = sub.add_parser("create-key", help="create an API key for a tenant; the key is printed once")
    p.add_argument("tenant", help="tenant name or id")
    p.add_argument("--label", default="")
    p.add_argument("--rate-limit", type=int, default=None, help="requests per minute for this key")
    p = sub.add_parser("revoke-key", help="revoke an API key by its prefix")
    p.add_argument("prefix")
    sub.add_parser("list-tenants", help="list tenants as JSON")
    add_purge_arguments(
        sub.add_parser(
            "purge",
            help="erase the media of jobs finished, and inputs uploaded, longer ago than the retention period",
        )
    )
