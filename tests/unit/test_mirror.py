"""The dashboard's copy of the state: its queries (filters, search, sorts, pages, neighbours) and
how change events update it. On real files, loaded by the loader every reader uses."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

import review.mirror as mirror_module
from review.mirror import Mirror
from review.query import Query, QueryError
from review.search import Haystack
from review.view import ViewEntry
from statesvc.entry import Entry, Review, Status, Verdict
from statesvc.loader import read
from statesvc.state import State
from statesvc.store import create

_encode = msgspec.json.Encoder().encode


def _mirror(tmp_path: Path, n: int = 40) -> Mirror:
    entries = []
    for i in range(1, n + 1):
        e = Entry.make(i, f"utt_{i:04d}", f"texto número {i} " + "a" * (i % 7) + (" montaña" if i % 10 == 0 else ""))
        if i % 4 != 0:  # three in four completed, with a duration that grows with the id (none for 5)
            e.status, e.duration_seconds, e.take = Status.COMPLETED, None if i == 5 else 1.0 + i / 10, f"tk{i}"
        entries.append(e)
    entries[8].status, entries[8].error, entries[8].duration_seconds = Status.FAILED, "model raised", None
    entries[1].review = Review(Verdict.APPROVED, "tk2", "2026-01-01T00:00:00.000Z")
    (tmp_path / "wavs").mkdir(parents=True, exist_ok=True)
    create(tmp_path, State(entries))
    return Mirror(read(tmp_path))


def _names(rows: list[dict]) -> list[str]:
    return [r["filename"] for r in rows]


def test_filters_search_sorts_and_pages(tmp_path: Path) -> None:
    m = _mirror(tmp_path)
    total, rows = m.select(Query(status="completed", limit=5))
    assert total == 29 and _names(rows) == ["utt_0001", "utt_0002", "utt_0003", "utt_0005", "utt_0006"]
    total, rows = m.select(Query(q="MONTAÑA"))  # case-insensitive, in the text
    assert total == 4 and _names(rows) == ["utt_0010", "utt_0020", "utt_0030", "utt_0040"]
    assert m.select(Query(q="utt_0033"))[0] == 1  # and in the filename
    assert _names(m.select(Query(review="approved"))[1]) == ["utt_0002"]
    assert m.select(Query(status="failed"))[1][0]["error"] == "model raised"
    # sorts: unknown durations last in both directions; ties by id
    by_dur = _names(m.select(Query(status="completed", sort="duration", limit=100))[1])
    assert by_dur[0] == "utt_0001" and by_dur[-1] == "utt_0005"
    desc = _names(m.select(Query(status="completed", sort="-duration", limit=100))[1])
    assert desc[0] == "utt_0039" and desc[-1] == "utt_0005"
    # a page deep in a sort (a full sort) equals the same slice of the first-pages path (a partial sort)
    assert _names(m.select(Query(sort="-duration", offset=10, limit=5))[1]) == \
        _names(m.select(Query(sort="-duration", limit=15))[1])[10:]
    assert _names(m.select(Query(sort="-id", limit=2))[1]) == ["utt_0040", "utt_0039"]


def test_rows_show_what_the_file_holds(tmp_path: Path) -> None:
    full = _mirror(tmp_path)
    on_disk = {e.filename: e for e in read(tmp_path).state.entries}
    view = Mirror(read(tmp_path, view=ViewEntry))  # as the dashboard loads it: fewer fields decoded
    assert isinstance(view.entries[0], ViewEntry)
    for m in (full, view):
        rows = m.select(Query(limit=40))[1]
        for r in rows:
            e = on_disk[r["filename"]]
            assert (r["updated_at"], r["duration_seconds"], r["text"], r["take"], r["status"]) == \
                (e.updated_at, e.duration_seconds, e.text, e.take, e.status)
        assert rows == full.select(Query(limit=40))[1]
        assert m.pos[40] == 39 and 41 not in m.pos and m.pos.get(0) is None


def test_texts_are_shown_as_written_and_searched_without_case(tmp_path: Path) -> None:
    texts = ["Una frase normal.", "¿Cuántos kilómetros hay hasta Sevilla?", "la ONU y la OTAN", "minúsculas",
             "¡Qué sorpresa!", "«Cita» entre comillas", "12 de octubre", "x" * 300]
    entries = [Entry.make(i, f"Utt_{i}", t) for i, t in enumerate(texts, 1)]
    create(tmp_path, State(entries))
    m = Mirror(read(tmp_path))
    assert [r["text"] for r in m.select(Query(limit=20))[1]] == texts
    assert m.select(Query(q="SEVILLA"))[0] == 1 and m.select(Query(q="utt_3"))[0] == 1  # filenames, any case
    e = m.entries[m.by_name["Utt_1"]]
    m.apply(_encode(msgspec.structs.replace(e, text="Otra frase, en Madrid.")))
    assert m.row(0)["text"] == "Otra frase, en Madrid." and m.select(Query(q="madrid"))[0] == 1
    assert m.select(Query(q="frase normal"))[0] == 0 and m.coverage()["watched"]["¿"] == 1


def test_neighbours_follow_the_views_order(tmp_path: Path) -> None:
    m = _mirror(tmp_path)
    q = Query(status="completed", sort="-duration")
    assert m.neighbours("utt_0038", q) == ("utt_0039", "utt_0037")
    assert m.neighbours("utt_0039", q) == (None, "utt_0038")
    # an entry no longer in the view (requeued since) still leads on in id order
    assert m.neighbours("utt_0004", Query(status="completed")) == ("utt_0003", "utt_0005")


def test_change_events_update_counts_columns_and_new_entries(tmp_path: Path) -> None:
    m = _mirror(tmp_path)
    before = m.counters()
    e = m.entries[m.by_name["utt_0004"]]
    done = msgspec.structs.replace(e, status=Status.COMPLETED, duration_seconds=9.5, take="new")
    m.apply(_encode(done))
    after = m.counters()
    assert after["completed"] == before["completed"] + 1 and after["pending"] == before["pending"] - 1
    assert _names(m.select(Query(sort="-duration", limit=1))[1]) == ["utt_0004"]
    added = [Entry.make(100 + i, f"new_{i}", f"nueva {i}") for i in range(50)]  # grows every column
    for a in added:
        m.apply(_encode(a))
    assert m.counters()["total"] == 90 and m.select(Query(q="nueva 49"))[0] == 1
    edited = msgspec.structs.replace(m.entries[m.by_name["new_0"]], text="otra cosa")
    m.apply(_encode(edited))
    assert m.select(Query(q="otra cosa"))[0] == 1 and m.select(Query(q="nueva 0"))[0] == 0


@pytest.mark.parametrize(("block", "n"), [(1 << 22, 3000), (300, 3000), (16, 300)])
def test_the_haystack_finds_what_a_substring_test_finds(block: int, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte scan against Python's own `in`, on rows of Spanish with multi-byte characters,
    needles cut anywhere in them (a lone accented letter, a word across a row's end), and rows
    set aside by edits and additions; in one block, in many, and in blocks smaller than a row."""
    monkeypatch.setattr(Haystack, "BLOCK", block)
    rnd = random.Random(7)
    alphabet = "aeiou nrstldcmñáéíóúü¿¡?,.xyz\t\0€😀İß"
    rows = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(n)]
    hay = Haystack(iter(rows))
    needles = ["ñ", "á", "😀", "€a", "a e", "¿", "zz", "q", "\t", "\0", " ", "a\0", "aeiou" * 9]
    needles += [r[a:a + rnd.randint(1, 6)] for r in rnd.sample(rows, 60) if r for a in [rnd.randrange(len(r))]]
    needles += [rows[i][-2:] + rows[i + 1][:2] for i in range(0, 200, 20)]  # across two rows: never a hit

    def check() -> None:
        for needle in needles:
            if not needle:
                continue
            want = [i for i, r in enumerate(rows) if needle in r]
            got = list(map(int, hay.find(needle, len(rows)).nonzero()[0]))
            assert got == want, needle
    check()
    for i in rnd.sample(range(n), n // 10):
        rows[i] = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
        hay.set(i, rows[i])
    for _ in range(50):
        rows.append("nueva ñandú " + str(len(rows)))
        hay.set(len(rows) - 1, rows[-1])
    check()


def test_a_search_stays_right_through_many_edits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Haystack, "REBUILD_AT", 5)  # rebuilt several times in this test
    m = _mirror(tmp_path)
    assert m.select(Query(q="montaña"))[0] == 4
    for k in range(1, 41):
        e = m.entries[m.by_name[f"utt_{k:04d}"]]
        m.apply(_encode(msgspec.structs.replace(e, text=f"montaña {k}" if k % 3 == 0 else f"río {k}")))
        assert m.select(Query(q="montaña"))[0] == k // 3 + sum(1 for j in range(k + 1, 41) if j % 10 == 0)
    assert m.select(Query(q="río 4"))[0] == 2  # río 4 and río 40


def test_texts_changed_while_an_index_is_built_or_scanned_are_never_lost(tmp_path: Path, monkeypatch) -> None:
    """Searches and the character count run in worker threads while the event loop's thread applies
    changes: an edit landing in the middle of a build or a scan is what these hooks make happen."""
    m = _mirror(tmp_path)
    pending: list[tuple[str, str]] = []

    def edit_meanwhile() -> None:
        if pending:
            name, text = pending.pop()
            m.apply(_encode(msgspec.structs.replace(m.entries[m.by_name[name]], text=text)))

    def hooked(real, after: bool = False):
        def call(*args):
            if not after:
                edit_meanwhile()
            result = real(*args)
            if after:
                edit_meanwhile()
            return result
        return call
    # while the search's index is built from a snapshot of the entries
    pending.append(("utt_0003", "kiwi"))
    with monkeypatch.context() as mp:
        mp.setattr(mirror_module, "searchable", hooked(mirror_module.searchable))
        assert m.select(Query(q="kiwi"))[0] == 1
    # while a scan runs: its answer may predate the edit, but is not kept for the next ask
    pending.append(("utt_0004", "mango"))
    with monkeypatch.context() as mp:
        mp.setattr(Haystack, "find", hooked(Haystack.find, after=True))
        m.select(Query(q="mango"))
        assert m.select(Query(q="mango"))[0] == 1
    # while the characters are counted
    pending.append(("utt_0005", "þ"))
    with monkeypatch.context() as mp:
        mp.setattr(mirror_module, "char_counts", hooked(mirror_module.char_counts))
        assert m.coverage()["characters"].get("þ") == 1
    assert not pending
    # a build that fails leaves no record of changes behind to pile up
    m = _mirror(tmp_path / "again")

    def failing(texts):
        raise MemoryError
    with monkeypatch.context() as mp:
        mp.setattr(mirror_module, "char_counts", failing)
        with pytest.raises(MemoryError):
            m.coverage()
    pending.append(("utt_0006", "otra"))
    edit_meanwhile()
    assert m._since is None and m.coverage()["characters"].get("þ") is None


@pytest.mark.parametrize("bad", [dict(status="nope"), dict(sort="evil"), dict(limit=0), dict(limit=501),
                                 dict(offset=-1), dict(flag="x"), dict(review="maybe"), dict(q="x" * 201)])
def test_bad_queries_are_refused_with_a_reason(bad: dict) -> None:
    with pytest.raises(QueryError):
        Query(**bad).check()


@pytest.mark.parametrize("block", [2, 256])
def test_checks_are_shown_as_the_daemon_holds_them(tmp_path: Path, monkeypatch, block: int) -> None:
    """The page keeps checks in columns, not per entry: every field of a check (figures exactly as
    written, a transcript in any script, the error, the reason, the threshold, the model) reads back
    as the state holds it, after a load as the dashboard does it (a ViewEntry) and after changes."""
    from review.view import Checks, check_dict
    from statesvc.entry import Check, Stage

    monkeypatch.setattr(Checks, "BLOCK_ROWS", block)  # compressed blocks, and the rows after them
    entries = []
    for i in range(1, 9):
        e = Entry.make(i, f"utt_{i}", f"texto número {i}")
        e.status, e.duration_seconds, e.take, e.stage = Status.COMPLETED, 1.0 + i / 10, f"tk{i}", Stage.WAITING
        entries.append(e)
    heard = ["texto número uno", "¿qué? «otra» frase — ñandú 日本語", "", "a " * 400]
    for i, t in enumerate(heard):
        wrong = i % 2 == 1
        entries[i].check = Check(f"tk{i + 1}", 0.1 + i / 3, 0.123456789 * i, t, ["base", "tiny.en"][i % 2], None,
                                 wrong, "says something else" if wrong else None, 0.3 + i / 7, 1.5, 20)
        entries[i].stage = Stage.FLAGGED if wrong else Stage.CHECKED
    entries[4].check = Check("tk5", None, None, "", "base", "the recognizer failed: boom", True, "no transcript")
    entries[4].stage = Stage.FLAGGED
    create(tmp_path, State(entries))
    want = {e.filename: (check_dict(e.check, e.take), e.stage) for e in read(tmp_path).state.entries}
    for m in (Mirror(read(tmp_path)), Mirror(read(tmp_path, view=ViewEntry)), Mirror.load(tmp_path)):
        for name, (check, stage) in want.items():
            row = m.entry(name)
            assert (row["check"], row["stage"]) == (check, stage), name
        assert all(e.check is None for e in m.entries)  # held once, in the columns
        assert (m.counters()["checked"], m.counters()["mismatched"]) == (5, 3)
        # a change: a new check of entry 6, entry 1 retaken (no check), a new entry with a check
        six = msgspec.structs.replace(entries[5], check=Check("tk6", 0.5, 0.6, "seis", "large", None, True, "r", 0.2),
                                      stage=Stage.FLAGGED)
        one = msgspec.structs.replace(entries[0], take="tk1b", check=None, stage=Stage.WAITING)
        new = Entry.make(9, "utt_9", "nueve")
        new.status, new.take, new.stage = Status.COMPLETED, "tk9", Stage.CHECKED
        new.check = Check("tk9", 0.0, 0.0, "nueve", "base", None)
        for e in (six, one, new):
            m.apply(_encode(e))
            row = m.entry(e.filename)
            assert (row["check"], row["stage"]) == (check_dict(e.check, e.take), e.stage)
        assert m.entry("utt_2")["check"] == want["utt_2"][0]  # the others as they were
        assert m.select(Query(sort="-cer", limit=1))[1][0]["filename"] == "utt_4"


def test_a_check_the_journal_replaced_is_not_shown(tmp_path: Path) -> None:
    """The load takes the checks out of the file's entries as it decodes them; an entry the journal
    replaced after the checkpoint (retaken: no check yet; or checked again) shows its journal check."""
    from statesvc import journal
    from statesvc.entry import Check, Stage

    entries = []
    for i in range(1, 4):
        e = Entry.make(i, f"utt_{i}", f"texto {i}")
        e.status, e.take, e.stage = Status.COMPLETED, f"tk{i}", Stage.CHECKED
        e.check = Check(f"tk{i}", 0.1 * i, 0.1 * i, f"oído {i}", "base", None)
        entries.append(e)
    create(tmp_path, State(entries))
    retaken = msgspec.structs.replace(entries[0], take="tk1b", check=None, stage=Stage.WAITING)
    again = msgspec.structs.replace(entries[1], check=Check("tk2", 0.9, 0.8, "otra cosa", "tiny", None, True, "r"),
                                    stage=Stage.FLAGGED)
    loaded = read(tmp_path)
    w = journal.Writer(tmp_path, journal.start(tmp_path, loaded.head.checkpoint))
    w.append(journal.encode(journal.Record(seq=loaded.head.seq + 1, entries=[retaken, again])))
    w.close()
    m = Mirror.load(tmp_path)
    assert (m.entry("utt_1")["check"], m.entry("utt_1")["stage"]) == (None, Stage.WAITING)
    assert m.entry("utt_2")["check"]["transcript"] == "otra cosa" and m.entry("utt_2")["stage"] == Stage.FLAGGED
    assert m.entry("utt_3")["check"]["transcript"] == "oído 3"
    assert (m.counters()["checked"], m.counters()["mismatched"], m.counters()["check_waiting"]) == (2, 1, 1)


def test_update_times_read_back_as_written_to_the_millisecond() -> None:
    """The copy keeps an update time as seconds (a float) and shows it in the state's own format
    (statesvc's ``iso``, which cuts to the millisecond): every millisecond reads back as written."""
    from review.stamps import iso_of, stamp, stamps
    written = [f"{day}T{hms}.{ms:03d}Z" for day in ("1999-12-31", "2026-12-03", "2099-07-15")
               for hms in ("00:00:00", "09:41:07", "23:59:59") for ms in range(1000)]
    assert [iso_of(t) for t in stamps(written)] == written
    assert [iso_of(stamp(s)) for s in written[::37]] == written[::37]  # one by one, as a change event is
    assert iso_of(stamps([None])[0]) is None
