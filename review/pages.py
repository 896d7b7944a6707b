"""The dashboard's HTML, rendered on the server (the script in web/app.js only updates it and
sends actions). Every value is escaped here; ``data-*`` attributes are the hooks the script and
the tests use."""

from __future__ import annotations

import html
from urllib.parse import urlencode

import orjson

from statesvc.entry import STATUSES

from .flags import FLAG_LABELS, Flag
from .query import MISMATCH, SORTS, Query

KEYS = [("j / →", "next entry"), ("k / ←", "previous entry"), ("space", "play / pause"),
        ("a", "approve the take"), ("x", "reject the take (with the note, if any)"), ("g", "regenerate"),
        ("n", "write a note"), ("e", "edit the text (ctrl+enter saves it)"), ("s", "playback speed"), ("p", "autoplay the next take"),
        ("u", "back to the table"), ("?", "this help")]
TABLE_KEYS = [("j / k", "move down / up"), ("enter", "open the entry"), ("x", "select the row"),
              ("/", "search"), ("?", "this help")]


def esc(v: object) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _layout(title: str, page: str, csrf: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="csrf" content="{esc(csrf)}"><title>{esc(title)}</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/style.css"><script type="module" src="/static/app.js"></script></head>
<body data-page="{page}">
<nav><a href="/">Overview</a> <a href="/health">Dataset health</a>
<span class="daemon">daemon: <b data-daemon>…</b></span> <button data-action="help" title="keys (?)">?</button></nav>
<div data-message role="status" aria-live="polite"></div>
{body}
</body></html>"""


def _help(keys: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><td><kbd>{esc(k)}</kbd></td><td>{esc(v)}</td></tr>" for k, v in keys)
    return f'<div class="overlay" data-help hidden><div><h2>Keys</h2><table>{rows}</table>' \
           f'<p>Press <kbd>?</kbd> or <kbd>Esc</kbd> to close.</p></div></div>'


def _flags(flags: list[str]) -> str:
    return "".join(f'<span class="badge flag" data-flag="{esc(f)}">{esc(FLAG_LABELS[Flag(f)])}</span>'
                   for f in flags)


def _review(r: dict | None) -> str:
    if not r:
        return ""
    return f'<span class="badge {esc(r["verdict"])}" data-review="{esc(r["verdict"])}" ' \
           f'title="{esc(r.get("note") or "")}">{esc(r["verdict"])}</span>'


def _check_badge(stage: str) -> str:
    """The judge's word on the current take, when it found it saying something else."""
    if stage != "flagged":
        return ""
    return '<span class="badge flag mismatch" data-flag="mismatch">says something else</span>'


def _cer(check: dict | None) -> str:
    if not check:
        return ""
    return "error" if check.get("cer") is None else f"{check['cer']:.2f}"


def _diff(diff: dict) -> str:
    """The transcript word by word against the text: missing words struck, extra words marked."""
    tags = {"same": "span", "missing": "del", "extra": "ins"}
    words = " ".join(f'<{tags[k]} data-word="{k}">{esc(w)}</{tags[k]}>' for k, w in diff["words"])
    cut = f' <span class="muted" data-cut>… {diff["cut"]} more words heard</span>' if diff["cut"] else ""
    return words + cut


def _heard(e: dict) -> str:
    """Under the text: what the recognizer heard, word by word against it."""
    if e.get("check") is None:
        return ""
    return (f'<p class="transcript" data-transcript><span class="muted">heard:</span> {_diff(e["diff"])}</p>'
            '<p class="legend muted"><del>struck</del>: in the text, not heard · <ins>marked</ins>: heard, '
            'not in the text</p>')


def _check_facts(e: dict) -> str:
    c = e.get("check")
    if c is None:
        waiting = {"waiting": "waiting for a checker", "leased": "a checker is at it"}.get(e.get("stage", ""), "—")
        return f'<dt>check</dt><dd data-field="check">{esc(waiting)}</dd>'
    cer = "—" if c["cer"] is None else f'{c["cer"]:.3f}'
    wer = "—" if c["wer"] is None else f'{c["wer"]:.3f}'
    threshold = "" if c.get("threshold") is None else f' (threshold {c["threshold"]:.2f})'
    verdict = (f'wrong: {esc(c.get("reason") or c.get("error") or "judged wrong")}' if c.get("wrong")
               else "says its text")
    return (f'<dt>CER / WER</dt><dd data-field="cer">{cer} / {wer}{esc(threshold)}</dd>'
            f'<dt>judged</dt><dd data-field="judged">{verdict}</dd>'
            f'<dt>recognizer</dt><dd data-field="model">{esc(c["model"])}'
            f'{" · error: " + esc(c["error"]) if c.get("error") else ""}</dd>')


def _secs(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f} s"


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def view_of(q: Query) -> str:
    """The query string of a view of the table (its filters and sort), without paging."""
    return _view(q, offset=None)


def _view(q: Query, **change: object) -> str:
    params = {"status": q.status, "flag": q.flag, "review": q.review, "q": q.q or None,
              "sort": None if q.sort == "id" else q.sort, "offset": q.offset or None}
    params.update(change)
    return urlencode({k: v for k, v in params.items() if v not in (None, "", 0)})


def _options(values: list[tuple[str, str]], chosen: str | None) -> str:
    return "".join(f'<option value="{esc(v)}"{" selected" if v == (chosen or "") else ""}>{esc(label)}</option>'
                   for v, label in values)


def row(r: dict, view: str) -> str:
    dur = "" if r["duration_seconds"] is None else f"{r['duration_seconds']:.2f}"
    href = f"/entries/{esc(r['filename'])}" + (f"?{esc(view)}" if view else "")
    return (f'<tr data-filename="{esc(r["filename"])}" data-status="{esc(r["status"])}">'
            f'<td><input type="checkbox" data-select aria-label="select {esc(r["filename"])}"></td>'
            f'<td class="num">{r["id"]}</td><td><a href="{href}">{esc(r["filename"])}</a></td>'
            f'<td class="text">{esc(r["text"])}</td><td><span class="status {esc(r["status"])}">'
            f'{esc(r["status"])}</span></td><td class="num">{dur}</td>'
            f'<td class="num">{"" if r["cps"] is None else r["cps"]}</td>'
            f'<td class="num" data-cer>{_cer(r["check"])}</td>'
            f'<td>{_flags(r["flags"])}{_check_badge(r["stage"])}{_review(r["review"])}</td></tr>')


def overview(ov: dict, rows: list[dict], total: int, q: Query, csrf: str) -> str:
    counts = "".join(f'<div class="count {s}"><span data-count="{s}">{ov.get(s, 0)}</span><label>{s}</label></div>'
                     for s in STATUSES)
    view = _view(q)
    statuses = [("", "any status"), *((s, s) for s in STATUSES)]
    flags = [("", "any flags"), ("any", "flagged"), ("none", "not flagged"), (MISMATCH, "says something else"),
             *((f.value, FLAG_LABELS[f]) for f in Flag)]
    reviews = [("", "any review"), ("unreviewed", "unreviewed"), ("approved", "approved"), ("rejected", "rejected")]
    sorts = [(s, {"id": "id ↑", "-id": "id ↓", "duration": "duration ↑", "-duration": "duration ↓",
                  "cps": "chars/s ↑", "-cps": "chars/s ↓", "updated": "updated ↑", "-updated": "updated ↓",
                  "cer": "CER ↑", "-cer": "CER ↓"}[s])
             for s in SORTS]
    prev = _view(q, offset=max(0, q.offset - q.limit)) if q.offset else None
    nxt = _view(q, offset=q.offset + q.limit) if q.offset + q.limit < total else None
    body = f"""
<main>
<section class="overview" data-overview>
 <div class="counts">{counts}<div class="count"><span data-stat="total">{ov.get("total", 0)}</span><label>total</label></div></div>
 <progress data-progress max="{max(1, ov.get("total", 0))}" value="{ov.get("completed", 0)}"></progress>
 <p class="paused" data-paused{"" if ov.get("paused") else " hidden"}>{esc(ov.get("paused") or "")}</p>
 <p class="stats">rate <b data-stat="rate">{ov.get("rate", 0)}</b>/s · ETA <b data-stat="eta">{_hms(ov.get("eta_seconds"))}</b>
 · audio <b data-stat="audio">{_hms(ov.get("audio_seconds"))}</b> · approved <b data-stat="approved">{ov.get("approved", 0)}</b>
 · rejected <b data-stat="rejected">{ov.get("rejected", 0)}</b> · flagged <b data-stat="flagged">{ov.get("flagged", 0)}</b></p>
 <p class="stats">checks: waiting <b data-stat="check_waiting">{ov.get("check_waiting", 0)}</b>
 · checking <b data-stat="checking">{ov.get("checking", 0)}</b> · rate <b data-stat="check_rate">{ov.get("check_rate", 0)}</b>/min
 · checked <b data-stat="checked">{ov.get("checked", 0)}</b> · says something else <b data-stat="mismatched">{ov.get("mismatched", 0)}</b></p>
 <div class="cols"><div><h3>Generators at work</h3><ul data-generators></ul></div>
 <div><h3>Recent failures</h3><ul data-failures></ul></div></div>
 <script type="application/json" data-initial>{_json(ov)}</script>
</section>
<section class="actions">
 <button data-action="regenerate" title="regenerate the selected rows">Regenerate selected</button>
 <button data-action="regenerate-failed">Regenerate all failed</button>
 <button data-action="regenerate-flagged">Regenerate all flagged</button>
 <button data-action="sync">Sync with files…</button>
</section>
<dialog data-sync><h2>Sync with files</h2><p data-sync-summary></p><table data-sync-changes></table>
 <form method="dialog"><button data-action="sync-apply">Apply</button> <button value="cancel">Cancel</button></form></dialog>
<form class="filters" data-filters method="get" action="/">
 <select name="status" aria-label="status">{_options(statuses, q.status)}</select>
 <select name="flag" aria-label="flag">{_options(flags, q.flag)}</select>
 <select name="review" aria-label="review">{_options(reviews, q.review)}</select>
 <input type="search" name="q" value="{esc(q.q)}" placeholder="search text or filename (/)" data-search>
 <select name="sort" aria-label="sort">{_options(sorts, q.sort)}</select>
 <button>Show</button>
</form>
<p class="pager"><span data-total>{total}</span> entries · {q.offset + 1 if total else 0}–{min(total, q.offset + q.limit)}
 {f'<a data-page-link="prev" href="/?{esc(prev)}">← previous</a>' if prev is not None else ""}
 {f'<a data-page-link="next" href="/?{esc(nxt)}">next →</a>' if nxt is not None else ""}</p>
<table class="entries" data-entries data-view="{esc(view)}"><thead><tr><th></th><th>id</th><th>file</th><th>text</th>
<th>status</th><th>s</th><th>chars/s</th><th>CER</th><th>flags</th></tr></thead>
<tbody>{"".join(row(r, view) for r in rows)}</tbody></table>
</main>{_help(TABLE_KEYS)}"""
    return _layout("statesvc dashboard", "overview", csrf, body)


# What JSON embedded in HTML must not hold raw: "<" and ">" could open or close an element or a
# comment ("</script>", "<!--<script" both end a <script> element early), "&" starts an entity in
# an attribute, and U+2028/U+2029 end a line in a JavaScript string before ES2019. JSON's "\\uXXXX"
# says the same text, so JSON.parse gives back exactly what was embedded.
_JSON_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})


def _json(obj: object) -> str:
    """``obj`` as JSON safe to embed anywhere in a page: in a <script> element or an attribute.
    Every embedding goes through here."""
    return orjson.dumps(obj).decode().translate(_JSON_ESCAPES)


def entry(e: dict, csrf: str, view: str, prev: str | None, nxt: str | None) -> str:
    suffix = f"?{esc(view)}" if view else ""
    nav = (f'<a data-nav="prev" href="/entries/{esc(prev)}{suffix}">← {esc(prev)}</a>' if prev else
           '<span data-nav="prev"></span>')
    nav += f' <a href="/?{esc(view)}" data-nav="table">table</a> '
    nav += (f'<a data-nav="next" href="/entries/{esc(nxt)}{suffix}">{esc(nxt)} →</a>' if nxt else
            '<span data-nav="next"></span>')
    takes = e["takes"]
    current = next((t for t in takes if t["current"]), None)
    earlier = [t for t in takes if not t["current"]]
    player = (f'<audio data-player controls preload="auto" src="{esc(current["url"])}"></audio>'
              f'<canvas data-waveform width="800" height="80" data-peaks="{esc(_json(current["peaks"]))}"></canvas>'
              if current else '<p class="none">No take yet.</p>')
    olds = "".join(f'<li data-take-name="{esc(t["name"])}"><span>{esc(t["name"])}</span>'
                   f'<span class="num">{_secs(t["duration"])}</span>'
                   f'<span class="num" data-take-cer title="{esc((t.get("check") or {}).get("transcript") or "")}">'
                   f'{"CER " + _cer(t.get("check")) if t.get("check") else "not checked"}</span> {_flags(t["flags"])}'
                   f'<audio controls preload="none" src="{esc(t["url"])}"></audio>'
                   f'<canvas width="400" height="40" data-peaks="{esc(_json(t["peaks"]))}"></canvas></li>'
                   for t in earlier) or "<li class=none>none</li>"
    dur = e["duration_seconds"]
    review = e.get("review") or {}
    body = f"""
<main data-entry data-filename="{esc(e["filename"])}" data-status="{esc(e["status"])}" data-take="{esc(e.get("take"))}"
 data-stage="{esc(e.get("stage"))}"
 data-view="{esc(view)}" data-review-json="{esc(_json(e.get("review")))}">
<p class="entrynav">{nav}</p>
<h1>{esc(e["filename"])} <span class="status {esc(e["status"])}" data-field="status">{esc(e["status"])}</span>
 {_flags(e["flags"])} {_check_badge(e.get("stage", ""))} {_review(e.get("review"))}</h1>
<p class="text" data-text>{esc(e["text"])}</p>
{_heard(e)}
<div class="player">{player}
 <label>speed <select data-speed>{_options([(v, v + "×") for v in ("0.75", "1", "1.25", "1.5")], "1")}</select></label>
 <label><input type="checkbox" data-autoplay> autoplay the next take</label></div>
<dl class="facts">
 {_check_facts(e)}
 <dt>takes</dt><dd data-field="take_count">{e.get("take_count", 0)}</dd>
 <dt>duration</dt><dd data-field="duration">{"—" if dur is None else f"{dur:.3f} s"}</dd>
 <dt>expected</dt><dd data-field="expected" title="what the text's length predicts for this voice">{
  f'{e["expected_seconds"]:.2f} s' if e.get("expected_seconds") is not None else "— (too few takes yet)"}</dd>
 <dt>chars/s</dt><dd data-field="cps">{esc(e["cps"] if e["cps"] is not None else "—")}</dd>
 <dt>attempts</dt><dd data-field="attempts">{e["attempts"]}</dd>
 <dt>error</dt><dd data-field="error">{esc(e["error"] or "—")}</dd>
 <dt>updated</dt><dd data-field="updated">{esc(e["updated_at"])}</dd>
 <dt>review</dt><dd data-field="review">{esc(review.get("verdict", "—"))} {esc(review.get("note") or "")}</dd>
</dl>
<section class="actions">
 <input data-note placeholder="note (n)" value="{esc(review.get("note") or "")}" maxlength="2000">
 <button data-action="approve">Approve (a)</button> <button data-action="reject">Reject (x)</button>
 <button data-action="regenerate">Regenerate (g)</button>
</section>
<details data-edit><summary>Edit the text and regenerate (e)</summary>
 <textarea data-edit-text rows="3">{esc(e["text"])}</textarea><button data-action="edit">Save and regenerate (ctrl+enter)</button></details>
<h2>Earlier takes</h2><ul class="takes" data-takes>{olds}</ul>
</main>{_help(KEYS)}"""
    return _layout(f"{e['filename']} · statesvc dashboard", "entry", csrf, body)


def health(hists: dict, coverage: dict, counts: dict, csrf: str) -> str:
    watched = "".join(f'<tr data-char="{esc(c)}"><td>{esc(c)}</td><td class="num">{n}</td></tr>'
                      for c, n in coverage["watched"].items())
    chars = " ".join(f'<span title="{n} texts">{esc(c)}</span>' for c, n in coverage["characters"].items()
                     if not c.isspace())
    body = f"""
<main>
<h1>Dataset health</h1><p>{counts["completed"]} completed takes of {counts["total"]} texts.</p>
<div class="cols"><div><h2>Duration (s)</h2><canvas data-hist width="480" height="160"
 data-values="{esc(_json(hists["duration"]))}"></canvas></div>
<div><h2>Characters per second</h2><canvas data-hist width="480" height="160"
 data-values="{esc(_json(hists["cps"]))}"></canvas></div></div>
<div class="cols"><div><h2>CER of the checked takes</h2><canvas data-hist="cer" width="480" height="160"
 data-values="{esc(_json(hists["cer"]))}"></canvas></div><div></div></div>
<h2>Character coverage</h2><p>Texts holding each character to watch:</p>
<table class="coverage" data-coverage>{watched}</table><p class="chars">{chars}</p>
</main>"""
    return _layout("dataset health · statesvc dashboard", "health", csrf, body)
