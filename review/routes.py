"""The page's HTML (the overview and its table, an entry, the dataset's health), static files and audio."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import pages
from .api import entry_view, hub_of, loaded
from .files import audio_path
from .parse import query_of

STATIC = Path(__file__).with_name("web")

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    hub = hub_of(request)
    query = query_of(request)
    m = hub.mirror
    total, rows = await asyncio.to_thread(m.select, query) if m is not None else (0, [])
    return HTMLResponse(pages.overview(hub.overview(), rows, total, query, request.app.state.csrf))


@router.get("/entries/{filename}", response_class=HTMLResponse)
async def entry_page(request: Request, filename: str) -> HTMLResponse:
    hub = hub_of(request)
    data = await entry_view(hub, filename)
    query = query_of(request)
    prev, nxt = await asyncio.to_thread(loaded(hub).neighbours, data["filename"], query)
    return HTMLResponse(pages.entry(data, request.app.state.csrf, pages.view_of(query), prev, nxt))


@router.get("/health", response_class=HTMLResponse)
async def health_page(request: Request) -> HTMLResponse:
    m = loaded(hub_of(request))
    coverage = await asyncio.to_thread(m.coverage)  # seconds at a million, the first time
    return HTMLResponse(pages.health(m.histograms(), coverage, m.counters(), request.app.state.csrf))


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    path = STATIC / name
    if name not in ("app.js", "style.css") or not path.is_file():
        raise StarletteHTTPException(404, f"no static file {name!r}")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


@router.get("/audio/{folder}/{name}")
async def audio(request: Request, folder: str, name: str) -> FileResponse:
    hub = hub_of(request)
    path = await hub.files.run(audio_path, hub.dataset, folder, name)
    return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-cache"})
