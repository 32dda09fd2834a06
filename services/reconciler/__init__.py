"""The reconciler: a long-running process beside the gateway and the workers that re-publishes jobs whose
queue message was lost, hands back running jobs whose worker lease expired, and delivers job-finished
webhooks (``reconcile.py``; run it with ``python -m services.reconciler``)."""
