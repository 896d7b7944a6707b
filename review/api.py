"""The page's JSON API: the table's queries, an entry, the health figures, the event stream, the actions.

Every action is a request to the daemon, answered once the daemon acknowledged it (durable).
"""

from __future__ import annotations

import asyncio
import secrets

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from statesvc.layout import SET_ASIDE
from statesvc.texts import check_text

from .errors import ActionError
from .files import takes_of
from .hub import Hub
from .mirror import Mirror
from .parse import body_of, filename_of, names_of, query_of
from .sync import reconcile
from .words import word_diff

router = APIRouter()


def hub_of(request: Request) -> Hub:
    return request.app.state.hub


def loaded(hub: Hub) -> Mirror:
    """The copy of the state, or a 503 that says why there is none (loading, or the files' error)."""
    if hub.mirror is None:
        raise ActionError(503, hub.load_error or "the state is still loading; try again in a moment")
    return hub.mirror


async def entry_view(hub: Hub, filename: str) -> dict:
    """An entry as its page shows it: its row, its check and word diff, its takes read and drawn."""
    name = filename_of(filename)
    data = loaded(hub).entry(name)  # not held while the files are read: a reload may drop the copy meanwhile
    if data is None:
        raise ActionError(404, f"no entry {name!r}")
    takes = await hub.files.run(takes_of, hub.dataset, hub.earlier, name, data["status"] == "completed")
    checks = data.pop("earlier_checks")
    for t in takes:  # an earlier take a check set aside carries that check (its CER)
        t["check"] = None if t["current"] else checks.get(f"{SET_ASIDE}/{t['name']}")
    if data["check"] is not None:
        data["diff"] = word_diff(data["text"], data["check"]["transcript"]).to_dict()
    return {**data, "takes": takes}


# ---- queries ----
@router.get("/api/status")
async def api_status(request: Request) -> dict:
    return hub_of(request).overview()


@router.get("/api/entries")
async def api_entries(request: Request) -> dict:
    total, rows = await asyncio.to_thread(loaded(hub_of(request)).select, query_of(request))
    return {"total": total, "entries": rows}


@router.get("/api/entries/{filename}")
async def api_entry(request: Request, filename: str) -> dict:
    return await entry_view(hub_of(request), filename)


@router.get("/api/neighbours/{filename}")
async def api_neighbours(request: Request, filename: str) -> dict:
    prev, nxt = await asyncio.to_thread(loaded(hub_of(request)).neighbours, filename, query_of(request))
    return {"prev": prev, "next": nxt}


@router.get("/api/health")
async def api_health(request: Request) -> dict:
    m = loaded(hub_of(request))
    return {"histograms": m.histograms(), "coverage": await asyncio.to_thread(m.coverage)}


@router.get("/api/events")
async def api_events(request: Request) -> EventSourceResponse:
    hub = hub_of(request)
    return EventSourceResponse(hub.pushes.stream(hub.overview), ping=10)


# ---- actions ----
@router.post("/api/requeue")
async def api_requeue(request: Request) -> dict:
    hub = hub_of(request)
    body = await body_of(request)
    if body.get("failed") is True:
        reply = await hub.follower.ask("requeue", keys=[], failed=True)
    else:
        names = names_of(body, loaded(hub))
        if not names:
            raise ActionError(400, "nothing to regenerate: give filenames, or failed or flagged: true")
        reply = await hub.follower.ask("requeue", keys=names, failed=False)
    return {"requeued": len(reply["requeued"]), "moved": reply.get("moved", [])}


@router.post("/api/edit")
async def api_edit(request: Request) -> dict:
    body = await body_of(request)
    name, text = filename_of(body.get("filename")), body.get("text")
    if check_text(text):
        raise ActionError(400, str(check_text(text)))
    reply = await hub_of(request).follower.ask("edit", key=name, text=text, req=secrets.token_hex(8))
    return {"edited": name, "rev": reply["rev"]}


@router.post("/api/review")
async def api_review(request: Request) -> dict:
    body = await body_of(request)
    verdict = body.get("review")
    if verdict not in ("approved", "rejected", None):
        raise ActionError(400, "review must be approved, rejected or null")
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise ActionError(400, "note must be a string")
    take = body.get("take")
    if not isinstance(take, str) or not take:  # the page always sends the take it shows: fenced by it
        raise ActionError(400, "take must be the token of the take heard (the entry's take)")
    fields: dict = {"key": filename_of(body.get("filename")), "review": verdict, "note": note or None,
                    "take": take}
    reply = await hub_of(request).follower.ask("review", **fields)
    return {"filename": fields["key"], "review": reply["review"]}


@router.post("/api/reconcile")
async def api_reconcile(request: Request) -> dict:
    body = await body_of(request)
    dry = body.get("dry_run", True)
    if not isinstance(dry, bool):
        raise ActionError(400, "dry_run must be true or false")
    return {"dry_run": dry, "changes": await asyncio.to_thread(reconcile, hub_of(request).dataset, dry)}
