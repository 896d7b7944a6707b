"""The byte-flip sweep: one damaged byte anywhere in the journal (header, each kind of record, the
torn tail) or in the checkpoint (its head, checksum, separators and entries) is either harmless or
refused; nothing acknowledged is ever read as "not there", and only the last record is ever torn."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest

from statesvc import journal, loader, store
from statesvc.codec import DamagedState
from statesvc.entry import Entry
from statesvc.journal import parse
from statesvc.layout import STATE_FILE, journal_path
from statesvc.state import State
from tests.support.books import read_state, take
from tests.support.processes import cli

NEWLINE = 0x0A


def _acknowledged(ds: Path) -> tuple[dict, int]:
    """A checkpoint, then a journal holding each kind of record, then the torn half of one more
    record (a crash mid-append: never acknowledged). Returns the acknowledged state and where the
    torn tail starts."""
    (ds / "wavs").mkdir(parents=True)
    store.create(ds, State([Entry.make(i, f"u_{i:03d}", f"frase {i}") for i in range(1, 7)]))
    s, st = store.load_for_writing(ds)
    items = s.claim("g", 2, None, 100.0)["entries"]  # claims rows
    st.commit(s)
    items += s.claim("g", 1, None, 100.0)["entries"]
    st.commit(s)
    st.checkpoint(s)  # the file's seq is 2: the journal's records (3, 4, 5) come after it
    s.result(take(items[0], 1.5, 16000), 101.0)  # a whole entry, and the dataset's sample rate
    st.commit(s)
    s.working("g", [items[1]["token"]], 102.0)  # lease rows
    s.heartbeat("g", [items[2]["token"]], 102.5)
    s.claim("h", 1, None, 102.5)
    st.commit(s)
    body = s.add([(None, "una frase nueva")], "u", 103.0)  # answers to a request, for its resends
    s.remember("add", "r" * 32, body)
    s.edit(6, "frase seis, corregida", 103.0)
    st.commit(s)
    st.close()
    acked = read_state(ds)
    s.edit(5, "never acknowledged", 104.0)  # the torn record: half of it reached the disk
    line = journal.encode(journal.Record(6, [s.by_id[5]]))
    raw = journal_path(ds).read_bytes()
    journal_path(ds).write_bytes(raw + line[:len(line) // 2])
    assert read_state(ds) == acked
    return acked, len(raw)


def _flips(b: int) -> tuple[int, int]:
    """Two other values for a byte: one bit flipped, and a newline (or a zero for a newline)."""
    return b ^ 0x01, NEWLINE if b != NEWLINE else 0x00


def _judge(ds: Path, acked: dict, torn_at: int) -> str:
    """What every reader gets after a flip: the acknowledged state, or a refusal."""
    try:
        loaded = loader.read(ds)
    except DamagedState:
        return "refused"
    got = read_state(ds)
    assert got == acked, "a flip changed what loads without a refusal"
    # only the last (never acknowledged) record may be called torn: what is cut starts where it did
    assert not loaded.journal.torn or loaded.journal.good_length == torn_at, "an earlier record was called torn"
    return "same"


def _sweep(ds: Path, path: Path, offsets: list[int], acked: dict, torn_at: int) -> dict:
    raw = path.read_bytes()
    seen = {"refused": 0, "same": 0}
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in offsets:
            for v in _flips(raw[i]):
                os.pwrite(fd, bytes([v]), i)  # in place: the readers open the file afresh each time
                try:
                    seen[_judge(ds, acked, torn_at)] += 1
                except AssertionError as exc:
                    raise AssertionError(f"{path.name} byte {i} {raw[i]:#04x} -> {v:#04x}: {exc}") from None
            os.pwrite(fd, raw[i:i + 1], i)
    finally:
        os.close(fd)
    assert path.read_bytes() == raw
    return seen


def test_every_flip_of_every_byte_is_harmless_or_refused(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    acked, torn_at = _acknowledged(ds)
    jraw = journal_path(ds).read_bytes()
    ends = parse(jraw).ends
    assert len(ends) == 3 and torn_at == ends[-1] < len(jraw)
    seen = _sweep(ds, journal_path(ds), list(range(len(jraw))), acked, torn_at)
    # a flip in the torn tail is harmless (still a torn last record); every other flip is refused
    tail = len(jraw) - torn_at
    assert seen["refused"] >= 2 * torn_at and 0 < seen["same"] <= 2 * tail, seen
    # the checkpoint: every byte, its framing (head, checksum, separators, close) and its entries;
    # the journal holds records after it, so even a flip that leaves valid JSON is refused
    raw = (ds / STATE_FILE).read_bytes()
    seen = _sweep(ds, ds / STATE_FILE, list(range(len(raw))), acked, torn_at)
    assert seen == {"refused": 2 * len(raw), "same": 0}, seen


@pytest.mark.parametrize("where", ["header", "record", "newline", "tail", "checkpoint seq"])
def test_a_flip_through_real_processes(tmp_path: Path, start_daemon, where: str) -> None:
    ds = tmp_path / "ds"
    acked, torn_at = _acknowledged(ds)
    jraw = journal_path(ds).read_bytes()
    ends = parse(jraw).ends
    path, at = journal_path(ds), {"header": 0, "record": ends[1] + 20, "newline": ends[-1] - 1,
                                  "tail": len(jraw) - 3}.get(where)
    if at is None:  # the digit of the file's seq: a load that trusted it would skip journal records
        path = ds / STATE_FILE
        at = path.read_bytes().index(b'"seq":2') + 6  # 2 -> 3: record 3 would be skipped
    raw = path.read_bytes()
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:])
    r = cli("status", "--dataset", str(ds), "--json")
    if where != "tail":
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and "nothing was touched" in err[0], r.stderr
        r = cli("serve", "--dataset", str(ds), timeout=30)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        return
    assert r.returncode == 0 and orjson.loads(r.stdout)["total"] == acked["total"]
    d = start_daemon(ds)  # the torn record is cut, kept aside, and the log calls only it torn
    assert read_state(ds) == acked
    kept = [p for p in ds.iterdir() if p.name.startswith("generation_state.journal.torn-")]
    assert len(kept) == 1 and len(kept[0].read_bytes()) == len(raw) - torn_at
    assert f"cut its torn last record, {len(raw) - torn_at} bytes" in d.output()
    d.kill(signal.SIGTERM)
