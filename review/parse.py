"""Requests decoded at the edge: a JSON body, an entry's filename, a list of names, a table's query.

Each refuses what it cannot use with an ``ActionError`` (or ``QueryError``) that says why: the
app answers it as JSON with its status, and no route sees a shape it did not expect.
"""

from __future__ import annotations

import orjson
from fastapi import Request

from statesvc import protocol
from statesvc.texts import check_filename

from .errors import ActionError
from .mirror import Mirror
from .query import Query, QueryError

MAX_BODY = 1 << 20


async def body_of(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ActionError(413, f"request body over {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise ActionError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise ActionError(400, "the body must be a JSON object")
    return body


def filename_of(v: object) -> str:
    if not isinstance(v, str) or check_filename(v):
        raise ActionError(400, f"{str(v)[:60]!r} is not an entry's filename")
    return v


def names_of(body: dict, m: Mirror) -> list[str]:
    """The entries an action names: every flagged one (``flagged: true``) or ``filenames``, each known."""
    if body.get("flagged") is True:
        idx = m.matching(Query(status="completed", flag="any"))
        return [m.entries[int(i)].filename for i in idx][:protocol.MAX_BATCH]
    names = body.get("filenames")
    if not isinstance(names, list) or len(names) > protocol.MAX_BATCH:
        raise ActionError(400, f"filenames must be a list of at most {protocol.MAX_BATCH} names")
    out = [filename_of(n) for n in names]
    unknown = [n for n in out if n not in m.by_name]
    if unknown:
        raise ActionError(404, f"no entry {unknown[0]!r}")
    return out


def query_of(request: Request) -> Query:
    """The table's view in a request's query string: filters, search, sort and page."""
    p = request.query_params

    def num(key: str, default: int) -> int:
        v = p.get(key)
        if v is None or v == "":
            return default
        if not v.isdigit() or len(v) > 10:
            raise QueryError(f"{key} must be a whole number")
        return int(v)

    return Query(status=p.get("status") or None, flag=p.get("flag") or None, review=p.get("review") or None,
                 q=p.get("q", ""), sort=p.get("sort") or "id", offset=num("offset", 0),
                 limit=num("limit", 50)).check()
