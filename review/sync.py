"""The page's "Sync with files": a reconcile pass as the reconciler makes one, or what it would change."""

from __future__ import annotations

from pathlib import Path

from pipeline.reconciler import Reconciler  # the sync: the same pass as the reconciler's, a layer below
from statesvc.client import Client, ServiceError, Unavailable
from statesvc.endpoints import running

from .errors import ActionError
from .follow import REQUEST_TIMEOUT


def reconcile(dataset: Path, dry_run: bool) -> list[dict]:
    """A reconcile pass, as the reconciler process makes one; with dry_run, what it would change
    (blocking: run it in a thread)."""
    rec = running(dataset)
    if rec is None or not rec.get("endpoint"):
        raise ActionError(503, "the daemon is not running: start it (statesvc serve) and try again")
    with Client(rec["endpoint"], timeout=REQUEST_TIMEOUT, retries=2) as client:
        try:
            result = Reconciler(client, dataset, dry_run=dry_run).run_pass()
        except Unavailable:
            raise ActionError(504, "the daemon did not answer; nothing is known to be done") from None
        except ServiceError as exc:
            raise ActionError(409, f"the daemon refused: {exc}") from None
    return [{"filename": f["filename"], "from": f.get("from"), "to": f.get("to"), "reason": f["fix"]}
            for f in result.fixes]
