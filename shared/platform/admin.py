"""Admin CLI: tenants and API keys (every action is written to the audit log).

    python -m shared.platform.admin create-tenant NAME
    python -m shared.platform.admin create-key TENANT [--label L] [--rate-limit N]   # prints the key once
    python -m shared.platform.admin revoke-key PREFIX
    python -m shared.platform.admin list-tenants
    python -m shared.platform.admin purge [--older-than-days N] [--dry-run]   # the retention pass

TENANT is a tenant's name or id. The database comes from GOHA_DATABASE_URL (or --database-url);
``purge`` also reaches object storage (GOHA_STORAGE_BACKEND, ...) and defaults to
GOHA_RETENTION_DAYS (see shared.platform.erasure: media go, records and provenance stay).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence

from sqlalchemy import select

from shared.platform import erasure, repository
from shared.platform.admin_arguments import add_commands
from shared.platform.db import Database
from shared.platform.errors import CONFIGURATION_ERROR, PlatformError
from shared.platform.models import ApiKey, Tenant
from shared.platform.settings import Settings

ACTOR = "admin-cli"


def create_tenant(db: Database, name: str) -> Tenant:
    with db.session() as session:
        tenant = repository.create_tenant(session, name)
        repository.audit(
            session,
            actor=ACTOR,
            action="tenant.create",
            tenant_id=tenant.id,
            target_type="tenant",
            target_id=tenant.id,
            details={"name": name},
        )
        return tenant


def create_key(
    db: Database, tenant_ref: str, *, label: str = "", rate_limit_per_minute: int | None = None
) -> tuple[ApiKey, str]:
    with db.session() as session:
        tenant = repository.find_tenant(session, tenant_ref)
        row, key = repository.create_api_key(
            session, tenant, label=label, rate_limit_per_minute=rate_limit_per_minute
        )
        repository.audit(
            session,
            actor=ACTOR,
            action="api_key.create",
            tenant_id=tenant.id,
            api_key_id=row.id,
            target_type="api_key",
            target_id=row.prefix,
            details={"label": label, "rate_limit_per_minute": rate_limit_per_minute},
        )
        return row, key


def revoke_key(db: Database, prefix: str) -> ApiKey:
    with db.session() as session:
        row = repository.revoke_api_key(session, prefix)
        repository.audit(
            session,
            actor=ACTOR,
            action="api_key.revoke",
            tenant_id=row.tenant_id,
            api_key_id=row.id,
            target_type="api_key",
            target_id=prefix,
        )
        return row


def list_tenants(db: Database) -> list[dict[str, object]]:
    with db.session() as session:
        return [
            {"id": t.id, "name": t.name, "created_at": t.created_at.isoformat(), "disabled": t.disabled}
            for t in session.scalars(select(Tenant).order_by(Tenant.created_at))
        ]


def purge(
    db: Database, settings: Settings, *, older_than_days: float | None = None, dry_run: bool = False
) -> erasure.Purge:
    days = older_than_days if older_than_days is not None else settings.retention_days
    if days is None:
        raise PlatformError(
            CONFIGURATION_ERROR, "no retention period: pass --older-than-days or set GOHA_RETENTION_DAYS"
        )
    if days <= 0:
        raise PlatformError(CONFIGURATION_ERROR, f"the retention period must be positive, got {days} days")
    from shared.platform.storage import make_storage

    return erasure.purge_expired(
        db, make_storage(settings), older_than=dt.timedelta(days=days), dry_run=dry_run
    )


def run_command(args: argparse.Namespace, db: Database, settings: Settings | None = None) -> int:
    if args.command == "purge":
        report = purge(db, settings or Settings(), older_than_days=args.older_than_days, dry_run=args.dry_run)
        print(json.dumps(report.to_dict()))
        return 1 if report.failures else 0
    if args.command == "create-tenant":
        tenant = create_tenant(db, args.name)
        print(json.dumps({"id": tenant.id, "name": tenant.name}))
    elif args.command == "create-key":
        row, key = create_key(db, args.tenant, label=args.label, rate_limit_per_minute=args.rate_limit)
        print(
            f"# API key for tenant {args.tenant} (prefix {row.prefix}); it is shown only this once",
            file=sys.stderr,
        )
        print(key)
    elif args.command == "revoke-key":
        row = revoke_key(db, args.prefix)
        print(
            json.dumps(
                {"prefix": row.prefix, "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}
            )
        )
    elif args.command == "list-tenants":
        print(json.dumps(list_tenants(db), indent=2))
    else:
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.platform.admin", description="tenants, API keys and data retention"
    )
    parser.add_argument("--database-url", default=None, help="default: GOHA_DATABASE_URL / embedded SQLite")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    settings = Settings()
    db = Database(args.database_url or settings.database_url)
    try:
        return run_command(args, db, settings)
    except PlatformError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
