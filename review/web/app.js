// The dashboard's one script: live updates (Server-Sent Events), actions sent to the server
// (each shown done only once the server says the daemon acknowledged it), waveforms drawn from
// the server's peaks, and keyboard-first review. No build step, nothing from a CDN.

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const csrf = $('meta[name="csrf"]').content;
const page = document.body.dataset.page;

function say(text, kind = "info") {
  const box = $("[data-message]");
  box.textContent = text;
  box.className = kind;
  box.dataset.kind = kind;
}

async function post(url, body) {
  const resp = await fetch(url, {
    method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify(body), credentials: "same-origin",
  });
  let data = {};
  try { data = await resp.json(); } catch { data = {error: `HTTP ${resp.status}`}; }
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

async function act(label, url, body) {
  say(`${label}…`, "busy");
  try {
    const data = await post(url, body);
    say(`${label}: done`, "done");
    return data;
  } catch (err) {
    say(`${label}: not done: ${err.message}`, "error");
    return null;
  }
}

// ---- drawing ----------------------------------------------------------------------------------
function drawPeaks(canvas, played = 0) {
  const peaks = JSON.parse(canvas.dataset.peaks || "[]");
  const ctx = canvas.getContext("2d");
  const {width: w, height: h} = canvas;
  ctx.clearRect(0, 0, w, h);
  if (!peaks.length) return;
  const bar = w / peaks.length;
  peaks.forEach((p, i) => {
    ctx.fillStyle = i / peaks.length < played ? "#2b6cb0" : "#90a4b8";
    const y = Math.max(1, p * (h - 2));
    ctx.fillRect(i * bar, (h - y) / 2, Math.max(1, bar - 0.5), y);
  });
}

function drawHist(canvas) {
  const {edges, counts} = JSON.parse(canvas.dataset.values);
  const ctx = canvas.getContext("2d");
  const {width: w, height: h} = canvas;
  if (!counts.length) { ctx.fillText(canvas.dataset.hist === "cer" ? "no checked takes yet" : "no completed takes yet", 10, 20); return; }
  const top = Math.max(...counts);
  const bw = w / counts.length;
  ctx.fillStyle = "#2b6cb0";
  counts.forEach((c, i) => { const y = (c / top) * (h - 20); ctx.fillRect(i * bw, h - 14 - y, bw - 1, y); });
  ctx.fillStyle = "#333";
  ctx.fillText(String(edges[0]), 0, h - 2);
  const last = String(edges[edges.length - 1]);
  ctx.fillText(last, w - ctx.measureText(last).width, h - 2);
}

// ---- live updates -----------------------------------------------------------------------------
function hms(s) {
  if (s === null || s === undefined) return "—";
  s = Math.floor(s);
  return `${Math.floor(s / 3600)}:${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function showOverview(ov) {
  const d = $("[data-daemon]");
  if (d) d.textContent = ov.load_error ? "state unreadable" : ov.daemon;
  if (ov.loading) return;
  for (const el of $$("[data-count]")) el.textContent = ov[el.dataset.count] ?? 0;
  const stats = {total: ov.total, rate: ov.rate, eta: hms(ov.eta_seconds), audio: hms(ov.audio_seconds),
                 approved: ov.approved, rejected: ov.rejected, flagged: ov.flagged,
                 check_waiting: ov.check_waiting, checking: ov.checking, check_rate: ov.check_rate,
                 checked: ov.checked, mismatched: ov.mismatched};
  for (const el of $$("[data-stat]")) el.textContent = stats[el.dataset.stat];
  const bar = $("[data-progress]");
  if (bar) { bar.max = Math.max(1, ov.total); bar.value = ov.completed; }
  const paused = $("[data-paused]");  // the generators wait for disk space
  if (paused) { paused.textContent = ov.paused || ""; paused.hidden = !ov.paused; }
  const gens = $("[data-generators]");
  if (gens) {
    gens.replaceChildren(...(ov.generators || []).map(g => {
      const li = document.createElement("li");
      li.dataset.owner = g.owner;
      li.textContent = `${g.owner}: ${g.holding} (${g.entries.join(", ")}${g.holding > g.entries.length ? ", …" : ""})`;
      return li;
    }));
    if (!gens.children.length) gens.innerHTML = "<li class=none>none</li>";
  }
  const fails = $("[data-failures]");
  if (fails) {
    fails.replaceChildren(...(ov.failures || []).map(f => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = `/entries/${encodeURIComponent(f.filename)}`;
      a.textContent = f.filename;
      li.append(a, `: ${f.error || "failed"}`);
      return li;
    }));
    if (!fails.children.length) fails.innerHTML = "<li class=none>none</li>";
  }
}

// A background refresh whose server went away (the run ended, a restart) is no error of the page:
// null, and the next event or the reconnecting event stream brings the page up to date.
async function quietFetch(url) {
  try {
    return await fetch(url, {credentials: "same-origin"});
  } catch (err) {
    return null;
  }
}

async function refreshTable() {
  const table = $("[data-entries]");
  if (!table) return;
  const resp = await quietFetch(`/?${location.search.slice(1)}`);
  if (!resp?.ok) return;
  const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
  const checked = new Set($$("[data-select]:checked").map(c => c.closest("tr").dataset.filename));
  const cursor = $("tr.cursor")?.dataset.filename;
  $("tbody", table).replaceWith($("[data-entries] tbody", doc));
  $(".pager").replaceWith($(".pager", doc));
  const fresh = $("[data-initial]", doc);  // the counters as of the same moment as the rows
  if (fresh) showOverview(JSON.parse(fresh.textContent));
  for (const tr of $$("tbody tr", table)) {
    if (checked.has(tr.dataset.filename)) $("[data-select]", tr).checked = true;
    if (tr.dataset.filename === cursor) tr.classList.add("cursor");
  }
}

let tableTimer = null;
function onEntries(rows) {
  if (page === "overview") {
    const shown = new Set($$("[data-entries] tbody tr").map(tr => tr.dataset.filename));
    if (rows.some(r => shown.has(r.filename)) || $("[data-entries]").dataset.view) {
      clearTimeout(tableTimer);
      tableTimer = setTimeout(refreshTable, 200);
    }
  } else if (page === "entry") {
    const mine = rows.find(r => r.filename === entryName(entryUrl));  // the entry shown, or being opened
    if (mine) refreshEntry(mine);
  }
}

// Show the entry anew when it changed (a take, a status, a verdict, a text), never under the
// curator's fingers: not while they type in one of its fields.
async function refreshEntry(known = null) {
  const main = $("[data-entry]");
  if (entryUrl !== shownUrl) {  // another entry is being opened: ask for it again, it changed
    loadEntry(entryUrl, false, false);
    return;
  }
  let e = known;
  if (!e) {
    const resp = await quietFetch(`/api/entries/${encodeURIComponent(main.dataset.filename)}`);
    if (!resp?.ok) return;
    e = await resp.json();
  }
  // the verdict as embedded (its JSON escaped for the page) against the verdict now: as values
  const review = JSON.stringify(JSON.parse(main.dataset.reviewJson));
  const changed = e.status !== main.dataset.status || (e.take || "") !== main.dataset.take ||
    (e.stage || "") !== main.dataset.stage ||
    JSON.stringify(e.review) !== review || e.text !== $("[data-text]").textContent;
  const typing = document.activeElement && main.contains(document.activeElement) &&
    document.activeElement.matches("input, textarea");
  if (changed && !typing) loadEntry(entryUrl, false, false);
}

function listen() {
  const es = new EventSource("/api/events");
  es.addEventListener("overview", ev => showOverview(JSON.parse(ev.data)));
  es.addEventListener("entries", ev => onEntries(JSON.parse(ev.data)));
  es.addEventListener("snapshot", async () => {
    const resp = await quietFetch("/api/status");
    if (resp?.ok) showOverview(await resp.json());
    if (page === "overview") refreshTable();
    if (page === "entry") refreshEntry();
  });
}

// ---- the overview's actions and keys --------------------------------------------------------
function selected() { return $$("[data-select]:checked").map(c => c.closest("tr").dataset.filename); }

async function sync() {
  const dlg = $("[data-sync]");
  const data = await act("Sync dry run", "/api/reconcile", {dry_run: true});
  if (!data) return;
  const rows = data.changes.map(c => `<tr data-change="${c.filename}"><td>${c.filename}</td><td>${c.from} → ${c.to}</td>` +
                                     `<td>${c.reason}</td></tr>`);
  $("[data-sync-changes]").innerHTML = rows.join("");
  $("[data-sync-summary]").textContent = data.changes.length ?
    `${data.changes.length} entries would change:` : "The state agrees with the files: nothing to change.";
  $("[data-action=sync-apply]").disabled = !data.changes.length;
  dlg.showModal();
}

function overviewPage() {
  const init = $("[data-initial]");
  if (init) showOverview(JSON.parse(init.textContent));
  document.addEventListener("click", async ev => {
    const btn = ev.target.closest("[data-action]");
    if (!btn) return;
    const a = btn.dataset.action;
    if (a === "regenerate") {
      const names = selected();
      if (!names.length) { say("Select rows first (x, or the checkboxes).", "error"); return; }
      await act(`Regenerate ${names.length}`, "/api/requeue", {filenames: names});
    } else if (a === "regenerate-failed") {
      await act("Regenerate all failed", "/api/requeue", {failed: true});
    } else if (a === "regenerate-flagged") {
      await act("Regenerate all flagged", "/api/requeue", {flagged: true});
    } else if (a === "sync") {
      await sync();
    } else if (a === "sync-apply") {
      ev.preventDefault();
      $("[data-sync]").close();
      const data = await act("Sync with files", "/api/reconcile", {dry_run: false});
      if (data) say(`Sync with files: done, ${data.changes.length} entries changed`, "done");
    }
    refreshTable();
  });
  for (const sel of $$("[data-filters] select")) sel.addEventListener("change", () => sel.form.submit());
}

function tableKeys(ev) {
  const rows = $$("[data-entries] tbody tr");
  let i = rows.findIndex(r => r.classList.contains("cursor"));
  const move = d => {
    rows[i]?.classList.remove("cursor");
    i = Math.max(0, Math.min(rows.length - 1, i + d));
    rows[i]?.classList.add("cursor");
    rows[i]?.scrollIntoView({block: "nearest"});
  };
  if (ev.key === "j" || ev.key === "ArrowDown") move(1);
  else if (ev.key === "k" || ev.key === "ArrowUp") move(-1);
  else if (ev.key === "Enter" && rows[i]) location.href = $("a", rows[i]).href;
  else if (ev.key === "x" && rows[i]) { const c = $("[data-select]", rows[i]); c.checked = !c.checked; }
  else if (ev.key === "/") { ev.preventDefault(); $("[data-search]").focus(); }
  else return false;
  return true;
}

// ---- the entry page ---------------------------------------------------------------------------
const SPEEDS = ["0.75", "1", "1.25", "1.5"];

function setupEntry(autoplay) {
  const main = $("[data-entry]");
  for (const c of $$("canvas[data-peaks]")) drawPeaks(c);
  const player = $("[data-player]");
  const speed = localStorage.getItem("speed") || "1";
  $("[data-speed]").value = speed;
  $("[data-autoplay]").checked = localStorage.getItem("autoplay") === "1";
  if (player) {
    player.playbackRate = Number(speed);
    const wave = $("[data-waveform]");
    player.addEventListener("timeupdate", () => drawPeaks(wave, player.currentTime / (player.duration || 1)));
    wave.addEventListener("click", ev => {
      if (player.duration) player.currentTime = player.duration * ev.offsetX / wave.width * (wave.width / wave.clientWidth);
    });
    if (autoplay && $("[data-autoplay]").checked) player.play().catch(() => {});
  }
  $("[data-speed]").addEventListener("change", ev => {
    localStorage.setItem("speed", ev.target.value);
    for (const a of $$("audio")) a.playbackRate = Number(ev.target.value);
  });
  $("[data-autoplay]").addEventListener("change", ev => localStorage.setItem("autoplay", ev.target.checked ? "1" : "0"));
}

// Loads overlap (a live refresh while the curator presses j): the newest one wins, and an older
// answer that arrives late is dropped, so the page never goes back to a state it already left or
// to the entry the curator just moved away from. Live refreshes follow the entry being opened
// (entryUrl), and keep what its opening asked for: a history step, autoplay. A load that fails
// leaves the page on the entry it shows (shownUrl).
let entryLoads = 0;
let shownUrl = location.pathname + location.search;
let entryUrl = shownUrl;
let pushPending = false;
let autoplayPending = false;

function entryName(url) {
  return decodeURIComponent(new URL(url, location.origin).pathname.split("/").pop());
}

async function loadEntry(url, push = true, autoplay = true) {
  const mine = ++entryLoads;
  if (url === entryUrl) {  // the same entry asked again (a refresh): keep what its opening asked for
    pushPending ||= push;
    autoplayPending ||= autoplay;
  } else {  // another one (j, k, back): what it asks for alone
    pushPending = push;
    autoplayPending = autoplay;
  }
  entryUrl = url;
  let html = null, why = "the server does not answer";
  try {
    const resp = await fetch(url, {credentials: "same-origin"});
    if (resp.ok) html = await resp.text();
    else why = `HTTP ${resp.status}`;
  } catch { /* why says it */ }
  if (mine !== entryLoads) return;
  if (html === null) {
    say(`cannot open ${url}: ${why}`, "error");
    entryUrl = shownUrl;
    pushPending = autoplayPending = false;
    // the back button moved the address already: it names the entry shown again
    if (location.pathname + location.search !== shownUrl) history.pushState(null, "", shownUrl);
    // changes to the entry shown were not followed while another one was opening
    if (url !== shownUrl) refreshEntry();
    return;
  }
  const doc = new DOMParser().parseFromString(html, "text/html");
  $("main").replaceWith($("main", doc));
  document.title = doc.title;
  shownUrl = url;
  if (pushPending && url !== location.pathname + location.search) history.pushState(null, "", url);
  const play = autoplayPending;
  pushPending = autoplayPending = false;
  setupEntry(play);
}

async function entryAction(a) {
  const main = $("[data-entry]");
  const filename = main.dataset.filename;
  const note = $("[data-note]").value.trim() || null;
  let ok = null;
  if (a === "approve" || a === "reject") {
    const verdict = a === "approve" ? "approved" : "rejected";
    ok = await act(`${verdict[0].toUpperCase()}${verdict.slice(1)} ${filename}`, "/api/review",
                   {filename, review: verdict, note, take: main.dataset.take});
    if (!ok) return;  // a take replaced since the page showed it: refused (409), said in the status line
    await loadEntry(entryUrl, false, false);  // (a live refresh of this entry may show it instead)
    // on to the next only from the entry judged: not if the curator moved on meanwhile
    if (entryName(entryUrl) === filename && $("[data-entry]").dataset.filename === filename) return advance();
    return;
  } else if (a === "regenerate") {
    ok = await act(`Regenerate ${filename}`, "/api/requeue", {filenames: [filename]});
  } else if (a === "edit") {
    ok = await act(`Edit ${filename}`, "/api/edit", {filename, text: $("[data-edit-text]").value});
  }
  if (ok) await loadEntry(entryUrl, false, false);
}

function advance() {
  const next = $("a[data-nav=next]");
  if (next) return loadEntry(next.getAttribute("href"));
  say("That was the last entry of this view.", "done");
}

function entryKeys(ev) {
  const player = $("[data-player]");
  const go = which => { const a = $(`a[data-nav=${which}]`); if (a) loadEntry(a.getAttribute("href")); };
  switch (ev.key) {
    case "j": case "ArrowRight": go("next"); break;
    case "k": case "ArrowLeft": go("prev"); break;
    case " ": ev.preventDefault(); if (player) (player.paused ? player.play() : player.pause()); break;
    case "a": entryAction("approve"); break;
    case "x": entryAction("reject"); break;
    case "g": entryAction("regenerate"); break;
    case "n": ev.preventDefault(); $("[data-note]").focus(); break;
    case "e": ev.preventDefault(); $("[data-edit]").open = true; $("[data-edit-text]").focus(); break;
    case "s": {
      const sel = $("[data-speed]");
      sel.value = SPEEDS[(SPEEDS.indexOf(sel.value) + 1) % SPEEDS.length];
      sel.dispatchEvent(new Event("change"));
      say(`speed ${sel.value}×`);
      break;
    }
    case "p": { const c = $("[data-autoplay]"); c.checked = !c.checked; c.dispatchEvent(new Event("change"));
                say(`autoplay ${c.checked ? "on" : "off"}`); break; }
    case "u": location.href = $("a[data-nav=table]").getAttribute("href"); break;
    default: return false;
  }
  return true;
}

function entryPage() {
  setupEntry(true);
  document.addEventListener("click", ev => {
    const btn = ev.target.closest("[data-action]");
    if (btn && ["approve", "reject", "regenerate", "edit"].includes(btn.dataset.action)) entryAction(btn.dataset.action);
    const nav = ev.target.closest("a[data-nav=prev], a[data-nav=next]");
    if (nav) { ev.preventDefault(); loadEntry(nav.getAttribute("href")); }
  });
  window.addEventListener("popstate", () => loadEntry(location.pathname + location.search, false, false));
}

// ---- keys common to every page ------------------------------------------------------------------
function toggleHelp(show) {
  const help = $("[data-help]");
  if (help) help.hidden = show === undefined ? !help.hidden : !show;
}

document.addEventListener("keydown", ev => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && ev.target.matches("[data-edit-text]")) {
    ev.preventDefault();  // ctrl+enter in the text: save it and regenerate
    entryAction("edit");
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const typing = ev.target.closest("input, textarea, select");
  if (ev.key === "Escape") { toggleHelp(false); if (typing) ev.target.blur(); return; }
  if (typing) {
    if (ev.key === "Enter" && ev.target.matches("[data-note]")) { ev.preventDefault(); ev.target.blur(); }
    return;
  }
  if (ev.key === "?") { toggleHelp(); return; }
  if (page === "overview" && tableKeys(ev)) ev.preventDefault();
  else if (page === "entry" && entryKeys(ev)) ev.preventDefault();
});
document.addEventListener("click", ev => { if (ev.target.closest("[data-action=help]")) toggleHelp(); });

if (page === "overview") overviewPage();
if (page === "entry") entryPage();
if (page === "health") for (const c of $$("canvas[data-hist]")) drawHist(c);
listen();
document.body.dataset.ready = "1";  // keys work from now on (what a script driving the page waits for)
