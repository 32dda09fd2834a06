"""``python -m services.reconciler [--once]``: run the reconciler (``services/reconciler/reconcile.py``)."""

from __future__ import annotations

from services.reconciler.reconcile import main

if __name__ == "__main__":
    raise SystemExit(main())
