"""Wait until the database schema is at the head Alembic revision (init container of the k8s pods).

    python deploy/docker/wait_for_migrations.py [--timeout 600] [--interval 3] [--database-url URL]

Exits 0 as soon as ``GOHA_DATABASE_URL`` (or ``--database-url``) is migrated to the revision this image
ships, 1 when the timeout passes first. An unreachable database counts as "not yet": in k8s the migrate
Job and the database may both still be starting. The schema is never changed here: that is the Job's
work (``goha migrate``), so several pods waiting at once never race on a migration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between checks")
    parser.add_argument("--database-url", default=None, help="default: GOHA_DATABASE_URL")
    args = parser.parse_args(argv)

    from shared.platform.migrate import current_revision, head_revision
    from shared.platform.settings import Settings

    url = args.database_url or Settings().database_url
    where = url.split("@")[-1]  # never print credentials
    head = head_revision()
    deadline = time.monotonic() + args.timeout
    last = "no check yet"
    while True:
        try:
            revision = current_revision(url)
            if revision == head:
                print(json.dumps({"database": where, "revision": revision, "ready": True}), flush=True)
                return 0
            last = f"at revision {revision!r}, want {head!r}"
        except Exception as exc:  # the database may not accept connections yet
            last = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if time.monotonic() >= deadline:
            print(
                json.dumps({"database": where, "ready": False, "error": f"timed out: {last}"}),
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(f"waiting for migrations on {where}: {last}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
